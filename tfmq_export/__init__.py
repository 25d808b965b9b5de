"""tfmq-export: TFMQ-DM post-training quantization of diffusion UNets, exported as Q/DQ ONNX."""

__version__ = "0.1.0"

from tfmq_export.errors import TfmqError

__all__ = ["TfmqError", "__version__"]
