"""One entry point for every engine builder: ``build_engine(backend, onnx, out)``.

Each backend folder keeps its own ``build.py``; this table is the only place that knows them all,
so adding a backend is one folder plus one line here (and one in the runner registry).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError
from tfmq_export.io import check_writable

__all__ = ["ENGINE_BUILDERS", "build_engine"]

#: backend -> (module, builder function); imported lazily so optional backends stay optional
ENGINE_BUILDERS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("tfmq_export.backends.onnxruntime.build", "build_onnxruntime_engine"),
    "openvino": ("tfmq_export.backends.openvino.build", "build_openvino_engine"),
    "tensorrt": ("tfmq_export.backends.tensorrt.build", "build_tensorrt_engine"),
}


def build_engine(backend: str, onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                 **options: Any) -> dict[str, Any]:
    """Build ``out_path`` from ``onnx_path`` with ``backend``; returns the manifest written beside it.

    ``options`` go to the backend's builder (TensorRT: ``min_batch``, ``opt_batch``, ``max_batch``,
    ``timing_cache``); the CPU builders take none.
    """
    if backend not in ENGINE_BUILDERS:
        raise TfmqError(f"unknown backend {backend!r}; choose from {', '.join(ENGINE_BUILDERS)}")
    if not Path(onnx_path).is_file():
        raise TfmqError(f"{onnx_path} does not exist")
    check_writable(out_path, "--out")  # before a build that may take minutes
    module_name, function = ENGINE_BUILDERS[backend]
    builder = getattr(importlib.import_module(module_name), function)
    return builder(onnx_path, out_path, **options)
