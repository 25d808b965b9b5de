"""Whether TensorRT can run here: the package imports and a CUDA GPU is visible.

The builder, the runner and ``bench`` ask before touching TensorRT, so a machine without it gets
one sentence saying why instead of an ImportError or a CUDA traceback. Nothing from TensorRT or
CUDA is imported at module import time.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

__all__ = ["check_tensorrt_available", "gpu_name"]


def _cuda_device_count() -> int:
    """Number of CUDA devices seen by the CUDA runtime Polygraphy loads (0 if none / no driver)."""
    from polygraphy import cuda

    try:
        handle = cuda.wrapper().handle
    except Exception:  # no libcudart anywhere: OSError, or PolygraphyException
        return 0
    count = ctypes.c_int(0)
    if handle.cudaGetDeviceCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def check_tensorrt_available() -> str | None:
    """``None`` when TensorRT and a CUDA GPU are usable, else the reason, in one sentence."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'tfmq-export[tensorrt]' on a machine with an NVIDIA GPU)"
    except Exception as exc:  # a broken install: missing libnvinfer, CUDA mismatch
        return f"TensorRT is installed but cannot be imported ({type(exc).__name__}: {exc})"
    if _cuda_device_count() < 1:
        return "no CUDA GPU is visible (TensorRT engines need an NVIDIA GPU and its driver)"
    return None


def gpu_name() -> str:
    """Name of GPU 0 as nvidia-smi reports it ("unknown" when it cannot be asked)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"
