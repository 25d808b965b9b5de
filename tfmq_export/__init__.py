"""tfmq-export: TFMQ-DM post-training quantization of diffusion UNets, exported as Q/DQ ONNX.

The Python API mirrors the command line (``tfmq_export.api``): ``calibrate``, ``export_onnx``,
``export_pipeline``, ``build_engine``, ``sample``, ``bench``, ``evaluate``, ``lint``, ``demo``,
``train_digits``, ``train_digits_text``; and ``EngineUNet``, an exported UNet a diffusers pipeline
takes as its ``unet``.
They load on first use, so ``import tfmq_export`` stays light (no torch, no diffusers).
"""

from __future__ import annotations

from typing import Any

from tfmq_export.errors import TfmqError

__version__ = "0.1.0"

__all__ = [
    "EngineUNet", "TfmqError", "__version__", "bench", "build_engine", "calibrate", "demo", "evaluate",
    "export_onnx", "export_pipeline", "lint", "sample", "train_digits", "train_digits_text",
]

#: public name -> the module that defines it (imported on first access)
_LAZY = {
    **{name: "tfmq_export.api" for name in ("bench", "build_engine", "calibrate", "demo", "evaluate", "export_onnx",
                                            "export_pipeline", "lint", "sample", "train_digits",
                                            "train_digits_text")},
    "EngineUNet": "tfmq_export.workflows.engine_unet",
}


def __getattr__(name: str) -> Any:
    """PEP 562: import the API's module when one of its names is first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tfmq_export' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
