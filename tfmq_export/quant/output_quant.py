"""Rounding a layer's output at the range calibration recorded for it (``output_absmax``).

Two deployments add such a rounding after a quantized layer, and their simulations add the same:
``--target onnxruntime`` on Conv outputs (so Conv fuses to QLinearConv, ``quant.state``) and int8
attention on the ``to_q`` / ``to_k`` outputs (``quant.attention``). One scale rule (min-max:
``output_absmax / 127``) and one forward hook serve both.
"""

from __future__ import annotations

import torch
from torch import nn

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.quant import grids

__all__ = ["output_quantize_hook", "output_scale"]


def output_scale(artifact: CalibrationArtifact, layer: str) -> float | None:
    """int8 scale of ``layer``'s output from its calibrated range, or None when it was never observed."""
    absmax = float(artifact.layer_tensor(layer, "output_absmax"))
    return absmax / grids.symmetric_qmax(grids.act_range(8)) if absmax > 0 else None


def output_quantize_hook(scale: float):
    """A forward hook that fake-quantizes the module's output on the int8 grid at ``scale``."""
    qmin, qmax = grids.act_range(8)
    scale_t = torch.tensor(scale, dtype=torch.float32)

    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        return grids.fake_quantize(output, scale_t.to(output.device, output.dtype), qmin, qmax)

    return hook
