"""Runners with one interface for torch, onnxruntime, OpenVINO and TensorRT."""
