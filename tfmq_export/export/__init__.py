"""ONNX export: temporal table + Gather, Q/DQ injection from an artifact, and the TensorRT lint."""
