"""Integer grids that TensorRT, OpenVINO and onnxruntime all accept: symmetric, zero point 0.

Notation: s = scale, q = integer, x^ = s * q.
- weights: per output channel; 8 bit -> q in [-127, 127] (narrow range, as TensorRT expects
  for weights), 4 bit -> q in [-8, 7] (TensorRT INT4).
- activations: per tensor; 8 bit -> q in [-128, 127], exactly what ONNX QuantizeLinear with an
  int8 zero point of 0 saturates to, so the simulation and the graph round and clamp alike. The
  ``uint8-127`` grid (``config.ACT_GRIDS``, Linear inputs only when chosen) is q in [-127, 128]:
  uint8 with zero point 127 saturates to exactly that. Either way the scale maps |x| <= absmax
  onto the symmetric part [-127, 127] (``symmetric_qmax``); the shifted grid only adds +128.
"""

from __future__ import annotations

import torch

from tfmq_export.config import ACT_GRIDS, SUPPORTED_ACT_BITS, SUPPORTED_WEIGHT_BITS
from tfmq_export.errors import TfmqError

__all__ = [
    "ACT_GRIDS",
    "SUPPORTED_ACT_BITS",
    "SUPPORTED_WEIGHT_BITS",
    "QuantizerError",
    "absmax_scale",
    "act_range",
    "channel_view",
    "fake_quantize",
    "mse_weight_scale",
    "quantize",
    "round_ste",
    "symmetric_qmax",
    "weight_range",
]


class QuantizerError(TfmqError, ValueError):
    """An impossible quantizer value (scale, integers, bits, split point): one line for the user,
    and a ``ValueError`` for library callers."""


def weight_range(bits: int) -> tuple[int, int]:
    """(qmin, qmax) of the weight grid."""
    if bits == 8:
        return -127, 127
    if bits == 4:
        return -8, 7
    raise QuantizerError(f"weight bits {bits} have no integer grid (supported: 4, 8; 16 means float)")


def act_range(bits: int, grid: str = "int8") -> tuple[int, int]:
    """(qmin, qmax) of the activation grid ``grid`` (``ACT_GRIDS``)."""
    if grid not in ACT_GRIDS:
        raise QuantizerError(f"activation grid {grid!r} is not supported (choose from {', '.join(ACT_GRIDS)})")
    if bits == 8:
        return (-128, 127) if grid == "int8" else (-127, 128)
    raise QuantizerError(f"activation bits {bits} have no integer grid (supported: 8; 16 means float)")


def symmetric_qmax(qrange: tuple[int, int]) -> int:
    """The largest |q| on both sides of a grid (127 for both 8-bit activation grids): a scale
    absmax / this maps the symmetric range [-absmax, absmax] without clipping either side."""
    qmin, qmax = qrange
    return min(-qmin, qmax)


def quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """round(x / s) clamped to the grid, as ONNX QuantizeLinear does (round half to even)."""
    return torch.clamp(torch.round(x / scale), qmin, qmax)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through). Exact: x + (round(x) - x) == round(x)
    in floating point, because round(x) is within a factor of two of x (Sterbenz) or x rounds to 0."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """x^ = s * clamp(round(x / s)), with straight-through gradients to x and s (LSQ-style)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or scale.requires_grad):
        return quantize(x, scale, qmin, qmax) * scale
    return torch.clamp(round_ste(x / scale), qmin, qmax) * scale


def channel_view(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-output-channel scale [O] to broadcast against a weight [O, ...]."""
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


def absmax_scale(absmax: torch.Tensor, qmax: int) -> torch.Tensor:
    """Scale that maps |x| <= absmax onto the grid; never zero (a dead channel gets a tiny scale)."""
    return torch.clamp(absmax, min=1e-8) / qmax


def mse_weight_scale(
    weight: torch.Tensor, bits: int, num_candidates: int = 80, p: float = 2.4
) -> torch.Tensor:
    """Per-channel scale by search over shrinking ranges (1% steps), minimising |w - w^|^p.

    The paper's settings: 80 candidates, error exponent 2.4. Candidates are evaluated in chunks
    (bounded memory) as one tensor op each.
    """
    qmin, qmax = weight_range(bits)
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    absmax = flat.abs().amax(dim=1)
    shrink = 1.0 - 0.01 * torch.arange(num_candidates, dtype=torch.float32, device=flat.device)
    chunk = max(1, (1 << 24) // max(1, flat.numel()))
    errors = []
    for start in range(0, num_candidates, chunk):
        scales = absmax_scale(absmax[None, :] * shrink[start : start + chunk, None], qmax)  # [c, O]
        s = scales[:, :, None]
        err = (flat[None] - quantize(flat[None], s, qmin, qmax) * s).abs().pow(p).sum(dim=2)  # [c, O]
        errors.append(err)
    best = torch.cat(errors).argmin(dim=0)  # first minimum = the widest range among ties
    return absmax_scale(absmax * shrink[best], qmax)
