"""Engine builders: onnxruntime optimised models, OpenVINO IR, TensorRT plans, each with a manifest."""
