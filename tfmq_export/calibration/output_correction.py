"""Per-step correction of the quantized UNet's mean output error (PTQD's bias correction, made
timestep-aware as TAC-Diffusion does), deployed as one more table gathered by the step index.

Why: the quantization error of the noise prediction is not zero-mean at a given step. On digits
(tfmq W4A8) about a quarter of its energy at the first two steps is a fixed pattern, the same for
every input of that step, and those are the steps whose error the sampler carries furthest into the
image (``calibration.step_weights``). A pattern the same for every input is known after calibration:
its mean over the calibration inputs of that step, subtracted from the output at that step.

``extra.output_correction``: ``pixel`` (one correction per step and output element, [T, C, H, W]:
the samples must keep the calibration's height and width), ``channel`` (one per step and output
channel, [T, C, 1, 1]: any resolution) or ``none``. A step's row is kept only where the estimated
mean is larger than its own sampling noise (squared norm above ``GATE`` x trace(covariance) / n): a
noisy estimate subtracted adds its noise to every output of that step; the other rows stay zero.
Measured on the calibration inputs (the FP trajectories), as many per step as
``act_samples_per_step`` says (0 = all).

``guidance_scale`` s > 1 with guided data (``extra.guided_correction``): the mean is taken of the guided
error ``(1 - s) e_u + s e_c`` of each pair of halves instead of each half's error. One correction c is
subtracted from both halves, so the guided noise moves by exactly -c: this c is the guided output's own
mean error at the calibrated scale, where the halves' mean (the plain correction) misses s times the
halves' mean difference.
"""

from __future__ import annotations

import torch

from tfmq_export.calibration.data import CalibrationData
from tfmq_export.config import OUTPUT_CORRECTIONS
from tfmq_export.errors import TfmqError
from tfmq_export.temporal import TemporalTableUNet

__all__ = ["GATE", "measure_output_correction"]

# the table goes into the artifact under artifact.OUTPUT_CORRECTION_KEY (calibration.pipeline writes it)

#: a row is kept where ||mean||^2 > GATE * trace(Cov) / n, i.e. the mean clearly above its estimation noise
GATE = 4.0


@torch.no_grad()
def measure_output_correction(sim: TemporalTableUNet, fp: TemporalTableUNet, data: CalibrationData, kind: str,
                              per_step: int = 0, seed: int = 0, batch_size: int = 64,
                              guidance_scale: float = 1.0) -> torch.Tensor:
    """Mean of sim - fp per table row over ``data`` (``per_step`` inputs of every step, 0 = all),
    per output element (``pixel``) or channel (``channel``); rows within their own noise are zero.
    ``guidance_scale`` > 1 on guided data: the mean of the guided error (module docstring)."""
    if kind not in OUTPUT_CORRECTIONS or kind == "none":
        raise TfmqError(f"output_correction {kind!r}: choose channel or pixel")
    guided = guidance_scale > 1 and data.paired
    pick = data.per_step_pairs if guided else data.per_step_subset
    subset = pick(per_step, seed) if per_step else data
    steps = len(data.timesteps)
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    counts = torch.zeros(steps, dtype=torch.float64)
    for step, error in _errors(sim, fp, subset, batch_size, guidance_scale if guided else 1.0):
        if kind == "channel":
            error = error.mean(dim=tuple(range(2, error.dim())), keepdim=True)
        rows = step.cpu()
        if total is None:
            total = torch.zeros(steps, *error.shape[1:], dtype=torch.float64)
            squares = torch.zeros_like(total)
        total.index_add_(0, rows, error)
        squares.index_add_(0, rows, error.pow(2))
        counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
    if total is None or squares is None:
        raise TfmqError("output_correction: no calibration inputs to measure it on")
    shape = (-1,) + (1,) * (total.dim() - 1)
    n = counts.clamp(min=1).view(shape)
    mean = total / n
    variance = (squares / n - mean.pow(2)).clamp(min=0)  # per element, over the step's inputs
    signal = mean.pow(2).flatten(1).sum(dim=1)
    noise = variance.flatten(1).sum(dim=1) / counts.clamp(min=1)
    keep = (signal > GATE * noise) & (counts > 1)
    return (mean * keep.view(shape)).float()


def _errors(sim: TemporalTableUNet, fp: TemporalTableUNet, data: CalibrationData, batch_size: int, scale: float):
    """(table rows, sim - fp) in batches; with ``scale`` > 1 one guided error per pair of halves."""
    if scale <= 1:
        for x, step, cond in data.batches(batch_size):
            args = (x, step) if cond is None else (x, step, cond)
            yield step, (sim(*args) - fp(*args)).double().cpu()
        return
    uncond, cond = data.pair_index()
    pairs = max(1, batch_size // 2)  # pairs per UNet call
    for start in range(0, len(uncond), pairs):
        index = torch.cat([uncond[start : start + pairs], cond[start : start + pairs]])
        part = data.select(index)
        args = (part.samples, part.step_index, part.conditions)
        e_u, e_c = (sim(*args) - fp(*args)).double().cpu().chunk(2)
        yield part.step_index[: len(e_u)], (1.0 - scale) * e_u + scale * e_c
