"""onnxruntime: the optimised Q/DQ graph (build) and its session (runner)."""
