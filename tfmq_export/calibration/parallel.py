"""Data-parallel calibration: what each rank computes and how the ranks' results are combined.

Under ``torchrun`` (``tfmq_export.distributed``) every rank holds the same calibration data and
the same simulation, and stays in lockstep with the others:

1. trajectories: the full-precision sampling batches are dealt round robin (``batch_starts``) and
   every rank receives every batch (``gather_batches``), concatenated in the one-process order;
   a batch is computed with the same composition as in one process, so the data is the same;
2. activation ranges and histograms: each rank observes its share of the inputs
   (``rank_rows``), then min / max / counts and histogram counts are reduced (``reduce_ranges``,
   ``reduce_histograms``): exact, min/max and integer sums do not depend on the order;
3. reconstruction (AdaRound/BRECQ weights, learned activation scales): every rank draws the same
   global minibatch from the same generator and computes the loss of its contiguous share of it
   (``minibatch_share``), weighted so that the mean of the ranks' gradients (``optimise``
   all-reduces them) is the gradient of the global minibatch's loss; a 2-rank run then follows
   the 1-rank run up to float reduction order;
4. TIAR: its data is the T table rows, one pass of a few Linear layers, so every rank computes the
   whole loss: splitting T rows would save microseconds and cost a collective per iteration.
   ``optimise`` still averages the (identical) gradients, which keeps the ranks bit-identical.

Block inputs and targets are captured on every rank for the whole data (one forward per input
and block, against ``iters x batch`` forward+backward passes of the Adam loop: about 1% of the
authors' recipe), so the Adam loop is what the ranks share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tfmq_export import distributed
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.quant.modules import ActQuantizer, QuantLayer, SplitActQuantizer

__all__ = ["batch_starts", "gather_batches", "minibatch_share", "rank_rows", "reduce_histograms", "reduce_ranges"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def batch_starts(starts: Sequence[int]) -> list[int]:
    """This rank's sampling batches (round robin over the one-process batches)."""
    return distributed.my_share(list(starts))


def gather_batches(pieces: dict[int, Batch]) -> list[Batch]:
    """Every rank's ``{start: (x, rows, cond)}`` batches, in the order of ``start`` (one process:
    its own)."""
    merged: dict[int, Batch] = {}
    for part in distributed.all_gather_objects(pieces):
        merged.update(part)
    return [merged[start] for start in sorted(merged)]


def rank_rows(data: CalibrationData) -> CalibrationData:
    """This rank's share of the inputs (round robin), for statistics that are reduced afterwards."""
    world = distributed.world_size()
    if world == 1:
        return data
    index = torch.arange(distributed.rank(), len(data), world, device=data.samples.device)
    cond = None if data.conditions is None else data.conditions[index]
    return CalibrationData(data.samples[index], data.step_index[index], cond, data.timesteps)


def _quantizers(layer: QuantLayer) -> list[ActQuantizer]:
    aq = layer.input_quantizer
    return [aq, aq.second] if isinstance(aq, SplitActQuantizer) else [aq]


def reduce_ranges(layers: dict[str, QuantLayer]) -> None:
    """Combine the ranks' observed statistics: per-step min / max, counts, output |max|."""
    if distributed.world_size() == 1:
        return
    for layer in layers.values():
        for aq in _quantizers(layer):
            distributed.all_reduce_(aq.step_min, "min")
            distributed.all_reduce_(aq.step_max, "max")
            distributed.all_reduce_(aq.step_count, "sum")
        distributed.all_reduce_(layer.output_absmax, "max")


def reduce_histograms(hists: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum the ranks' per-step histograms (counts), key by key in a fixed order."""
    for key in sorted(hists):
        distributed.all_reduce_(hists[key], "sum")
    return hists


def minibatch_share(index: torch.Tensor, group: int = 1) -> tuple[torch.Tensor, float]:
    """This rank's contiguous part of a global minibatch ``index`` and the weight of its loss;
    ``group`` consecutive entries stay on one rank (2: the guidance pairs of the guided loss).

    With the loss a mean over samples (``lp_loss``), rank r's loss on n_r of the n samples times
    ``world * n_r / n`` has gradients whose mean over the ranks is the full minibatch's gradient.
    A rank left without samples (minibatch smaller than the world) computes one sample at weight
    0, so its backward still runs and the all-reduce sees zeros."""
    world = distributed.world_size()
    if world == 1:
        return index, 1.0
    part = torch.tensor_split(index.reshape(-1, group), world)[distributed.rank()].flatten()
    if part.numel() == 0:
        return index[:group], 0.0
    return part, world * part.numel() / index.numel()
