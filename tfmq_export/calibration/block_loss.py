"""What one minibatch of a block reconstruction costs, and which inputs it holds.

The plain loss is BRECQ's (``adaround.lp_loss``: each input's block-output error on its own). With
classifier-free guidance and ``extra.guided_loss`` the minibatch holds whole guidance pairs (rows
2k / 2k + 1: the unconditional and the conditional half of one latent, ``CalibrationData.pair_id``)
and the loss also weighs the error guidance makes of the two: the halves' quantization errors are
only partly correlated, so the guided noise ``e_u + s (e_c - e_u)`` multiplies their difference by
s (``benchmarks/guided_error.py``; docs/ANALYSIS.md, "Guidance-aware reconstruction").
"""

from __future__ import annotations

import torch

from tfmq_export.calibration.adaround import lp_loss
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.parallel import minibatch_share
from tfmq_export.errors import TfmqError

__all__ = ["block_loss", "draw_minibatch", "guided_lp_loss", "pair_order"]


def guided_lp_loss(pred: torch.Tensor, target: torch.Tensor, scale: float, weight: float,
                   sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(1 - weight) * lp_loss + weight * guided`` over pairs (rows 2k / 2k + 1), guided being the squared
    error of ``(1 - s) e_u + s e_c`` over ``(1 - s)^2 + s^2``, its gain for independent errors, so that the
    rounding regulariser keeps its balance against the loss."""
    plain = lp_loss(pred, target, sample_weights)
    err = (pred - target).reshape(pred.shape[0] // 2, 2, -1)
    guided = ((1.0 - scale) * err[:, 0] + scale * err[:, 1]).pow(2).sum(dim=1) / ((1.0 - scale) ** 2 + scale**2)
    if sample_weights is not None:  # both halves share a step, hence a weight
        guided = guided * sample_weights.reshape(-1, 2)[:, 0]
    return (1.0 - weight) * plain + weight * guided.mean()


def block_loss(pred: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor | None,
               guidance_scale: float | None, guided_weight: float) -> torch.Tensor:
    """The minibatch's loss: plain, or with the guided term where ``guidance_scale`` is given."""
    if guidance_scale is None:
        return lp_loss(pred, target, sample_weights)
    return guided_lp_loss(pred, target, guidance_scale, guided_weight, sample_weights)


def pair_order(data: CalibrationData, generator: torch.Generator) -> torch.Tensor:
    """The inputs in a random order of whole guidance pairs (unconditional, conditional, ...)."""
    uncond, cond = data.pair_index()
    if len(uncond) * 2 != len(data):
        raise TfmqError("guided_loss needs every calibration input in a guidance pair (guided data, "
                        "whole pairs: recon_samples keeps them)")
    perm = torch.randperm(len(uncond), generator=generator)
    return torch.stack([uncond[perm], cond[perm]], dim=1).flatten()


def draw_minibatch(size: int, batch: int, generator: torch.Generator, paired: bool) -> tuple[torch.Tensor, float]:
    """This rank's share of a random minibatch of ``batch`` of positions 0..size-1 and its loss weight
    (``parallel.minibatch_share``); ``paired``: whole pairs, positions 2k and 2k + 1 together."""
    if not paired:
        return minibatch_share(torch.randperm(size, generator=generator)[:batch])
    pairs = torch.randperm(size // 2, generator=generator)[: batch // 2]
    return minibatch_share(torch.stack([2 * pairs, 2 * pairs + 1], dim=1).flatten(), 2)
