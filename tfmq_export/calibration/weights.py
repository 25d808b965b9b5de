"""Per-output-channel weight scales before any learning: plain max or the paper's MSE search."""

from __future__ import annotations

from tfmq_export.config import WEIGHT_INITS
from tfmq_export.errors import TfmqError
from tfmq_export.quant import grids
from tfmq_export.quant.modules import QuantLayer

__all__ = ["init_weight_scales"]


def init_weight_scales(layers: dict[str, QuantLayer], weight_init: str = "mse") -> None:
    """Set every enabled weight quantizer's per-channel scale by ``weight_init`` (``WEIGHT_INITS``):
    ``max`` maps the largest |w| of a channel onto the grid, ``mse`` searches 80 shrinking ranges
    for the least |w - w^|^2.4 (the paper's initialisation)."""
    if weight_init not in WEIGHT_INITS:
        raise TfmqError(f"weight_init {weight_init!r} is not supported (choose from {', '.join(WEIGHT_INITS)})")
    for name, layer in layers.items():
        wq = layer.weight_quantizer
        if not wq.enabled:
            continue
        if weight_init == "mse":
            scale = grids.mse_weight_scale(layer.weight, wq.bits)
        else:
            absmax = layer.weight.detach().reshape(layer.weight.shape[0], -1).abs().amax(dim=1)
            scale = grids.absmax_scale(absmax, wq.qrange[1])
        wq.set_scale(scale, name)
