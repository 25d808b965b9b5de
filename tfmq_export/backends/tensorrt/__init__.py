"""TensorRT: plans built through polygraphy (build) and run with CUDA events (runner)."""
