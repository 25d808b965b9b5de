"""Where torch computes: ``--device cpu|cuda|cuda:N``, checked once, and tensors moved there and back.

The device is a property of the run, not of its result: calibration's tensors (the model, the
cached block inputs and targets, AdaRound / LSQ parameters, ranges and histograms, the temporal
table computation) live on it, and the artifact is written from CPU tensors (``cpu_tensors``), so
the file does not say where it was computed. The device is recorded with the run's timings
(``device_record``), never in the settings: ``evaluate`` reuses an artifact by its settings and
``calibrate`` resumes a checkpoint by its settings' fingerprint, whichever device made them.

Random draws stay on the CPU (``torch.Generator()`` seeded per unit): the same seed gives the
same noise, minibatch order and data subsets on every device.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from tfmq_export.errors import TfmqError

__all__ = [
    "DEVICE_PATTERN",
    "check_device_syntax",
    "cpu_tensors",
    "device_record",
    "exact_float32",
    "module_device",
    "resolve_device",
    "shared_copy",
    "synchronize",
    "to_device",
]

#: what ``--device`` accepts: cpu, cuda (the current GPU) or cuda:N (GPU number N)
DEVICE_PATTERN = re.compile(r"cpu|cuda(?::(\d+))?")


def check_device_syntax(spec: str) -> str:
    """``spec`` when it is ``cpu``, ``cuda`` or ``cuda:N``; one line otherwise (no torch call)."""
    if not isinstance(spec, str) or DEVICE_PATTERN.fullmatch(spec.strip()) is None:
        raise TfmqError(f"--device {spec!r}: choose cpu, cuda or cuda:N (N the GPU's index, e.g. cuda:0)")
    return spec.strip()


def _torch_build() -> str:
    """``torch 2.5 built for CPU`` / ``torch 2.5 built for CUDA 12.1``: what the message names."""
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    cuda = getattr(torch.version, "cuda", None)
    return f"torch {major_minor} built for " + (f"CUDA {cuda}" if cuda else "CPU")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """The ``torch.device`` of ``spec`` (None = cpu), refused in one line when malformed or absent.

    ``cuda`` without an index means GPU 0 of the visible ones (``CUDA_VISIBLE_DEVICES``).
    """
    if spec is None:
        return torch.device("cpu")
    text = check_device_syntax(str(spec) if isinstance(spec, torch.device) else spec)
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        hint = "" if torch.version.cuda is None else ", but no GPU is visible"
        raise TfmqError(f"--device {text}: CUDA is not available ({_torch_build()}{hint})")
    match = DEVICE_PATTERN.fullmatch(text)
    index = int(match.group(1)) if match and match.group(1) is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise TfmqError(f"--device {text}: only {count} CUDA device(s) visible (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters share storage with the original's (buffers are copied).

    Calibration swaps modules in its copies of the UNet (temporal tables, quantized layers) but never
    writes a float weight in place, so the float reference, the simulation's unquantized layers and
    the caller's UNet can hold one set of weights (an SD-1.5 UNet is 3.4 GB in float32). Every
    parameter is a new ``nn.Parameter`` over the same tensor: ``requires_grad_`` and ``.to()`` on
    the copy (``param.data = ...``) leave the original's flags and placement alone.
    """
    memo: dict[int, Any] = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                            for p in module.parameters()}
    return copy.deepcopy(module, memo)


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor inside (dicts, lists, tuples) on ``device``; other values as they are."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what an artifact or a checkpoint writes, whatever the device."""
    return {key: tensor.detach().to("cpu").contiguous() for key, tensor in tensors.items()}


def device_record(device: torch.device) -> dict[str, str]:
    """What a run records about its device: ``{"device": "cuda:0", "device_name": "NVIDIA H200"}``."""
    if device.type == "cuda":
        return {"device": str(device), "device_name": torch.cuda.get_device_name(device)}
    return {"device": str(device)}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading after it is the work's time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """FP32 math without TF32 on a CUDA device for the block (cuDNN convolutions use TF32 by default,
    a 10-bit mantissa): calibration and the "fp32" torch rows then compute what the CPU computes, up
    to reduction order. Restores the previous switches; nothing to do on the CPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
