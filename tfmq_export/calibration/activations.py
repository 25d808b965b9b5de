"""Activation calibration: per-step ranges, per-step histograms and the static-scale rules.

Every activation quantizer records its input range per table row (``step_min`` / ``step_max``,
FSC statistics) while the calibration data runs through the simulation; one static engine scale
then comes from those ranges by a rule (``STEP_SCALE_RULES``): ``max`` (the largest |x| over all
steps, so no step clips) or ``mse`` (the scale with the least quantization error summed over the
steps, each weighted equally as sampling runs every step once, from per-step histograms). A split
(concatenated skip) input contributes both halves.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tfmq_export.calibration import offload
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.parallel import rank_rows, reduce_histograms, reduce_ranges
from tfmq_export.config import STEP_SCALE_RULES
from tfmq_export.errors import TfmqError
from tfmq_export.quant import grids
from tfmq_export.quant.modules import ActMode, ActQuantizer, QuantLayer, SplitActQuantizer
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.quant.steps import current_steps, observing_steps
from tfmq_export.temporal import TemporalTableUNet

__all__ = [
    "HISTOGRAM_BINS",
    "SPLIT_SUFFIX",
    "STEP_SCALE_RULES",
    "act_quantizers",
    "calibrate_activations",
    "collect_step_histograms",
    "mse_static_scale",
    "observe_activations",
    "reset_act_statistics",
    "set_static_scales",
    "set_static_scales_by_rule",
    "static_scale",
]

# 1. ranges -----------------------------------------------------------------------------------------


@torch.no_grad()
def observe_activations(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    batch_size: int,
    progress: bool = True,
) -> None:
    """Run the calibration data through ``sim`` and record per-step input ranges of every layer."""
    set_act_mode(layers, ActMode.OBSERVING)
    for x, step, cond in tqdm(list(rank_rows(data).batches(batch_size)), desc="activation ranges",
                              disable=not progress, leave=False):
        with observing_steps(step):
            sim(x, step, cond)
    reduce_ranges(layers)  # several ranks: each observed its share (calibration.parallel)


def static_scale(quantizer: ActQuantizer) -> torch.Tensor:
    """The ``max`` rule's engine scale: the largest |x| over all steps, so no step clips (the
    finite set of steps makes this exact over the calibration data)."""
    absmax = quantizer.step_absmax()
    absmax = absmax[torch.isfinite(absmax)]
    value = absmax.max() if absmax.numel() else torch.tensor(1.0)
    return grids.absmax_scale(value, grids.symmetric_qmax(quantizer.qrange))


def set_static_scales(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    batch_size: int,
    rule: str = "max",
    progress: bool = True,
) -> None:
    """One static scale per activation quantizer from its per-step ranges (already observed) by
    ``rule``; ``mse`` runs the data once more for per-step histograms. Leaves quantizers quantizing."""
    quantizers = act_quantizers(layers)
    hists = collect_step_histograms(sim, quantizers, data, batch_size, progress=progress) if rule == "mse" else None
    set_static_scales_by_rule(quantizers, rule, hists)
    for layer in layers.values():
        if not layer.input_quantizer.enabled:
            layer.input_quantizer.mode = ActMode.DISABLED


# 2. static-scale rules over the finite set of steps ---------------------------------------------

#: Histogram resolution: with 4096 bins over [-absmax, absmax] a bin is at most a third of the
#: smallest candidate step (21% of the range / 127), so bin centres estimate the rounding error well.
HISTOGRAM_BINS = 4096

#: Suffix of the second-half quantizer of a split (concatenated skip) input in ``act_quantizers``.
SPLIT_SUFFIX = "#split"


def act_quantizers(layers: dict[str, QuantLayer]) -> dict[str, ActQuantizer]:
    """{key: quantizer} of every enabled activation quantizer; a split input contributes its two
    halves (``name`` and ``name#split``)."""
    out: dict[str, ActQuantizer] = {}
    for name, layer in layers.items():
        aq = layer.input_quantizer
        if not aq.enabled:
            continue
        out[name] = aq
        if isinstance(aq, SplitActQuantizer):
            out[name + SPLIT_SUFFIX] = aq.second
    return out


def _observed_absmax(aq: ActQuantizer) -> float | None:
    absmax = aq.step_absmax()
    absmax = absmax[torch.isfinite(absmax)]
    return max(float(absmax.max()), 1e-8) if absmax.numel() else None


@torch.no_grad()
def collect_step_histograms(
    sim: TemporalTableUNet,
    quantizers: dict[str, ActQuantizer],
    data: CalibrationData,
    batch_size: int,
    bins: int = HISTOGRAM_BINS,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """{key: counts [T, bins]} of every quantizer's input values, per table row.

    The range of each histogram is the quantizer's observed |x| maximum over all steps
    (``step_min`` / ``step_max`` must be recorded first, e.g. by ``observe_activations``). Values
    are counted before quantization; quantizers are switched off meanwhile and restored after.
    """
    num_steps = len(data.timesteps)
    hists: dict[str, torch.Tensor] = {}
    handles = []
    saved = {key: aq.mode for key, aq in quantizers.items()}

    def hook(key: str, limit: float, split: int | None):
        def fn(_module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            if split is not None:
                x = x[:, :split]
            rows = current_steps_or_fail(x.shape[0])
            idx = ((x.reshape(x.shape[0], -1) + limit) * (bins / (2 * limit))).long().clamp_(0, bins - 1)
            idx += (rows.to(idx.device) * bins)[:, None]
            hists[key] += torch.bincount(idx.flatten(), minlength=num_steps * bins).reshape(num_steps, bins)

        return fn

    try:
        for key, aq in quantizers.items():
            aq.mode = ActMode.DISABLED
            limit = _observed_absmax(aq)
            if limit is None:
                continue
            # where the forward computes (--offload: not where the quantizer rests)
            hists[key] = torch.zeros(num_steps, bins, dtype=torch.float64,
                                     device=offload.compute_device(aq.step_min.device))
            split = aq.split if isinstance(aq, SplitActQuantizer) else None
            # a disabled quantizer returns early, so hook the module call itself (pre-hook)
            handles.append(aq.register_forward_pre_hook(hook(key, limit, split)))
        for x, step, cond in tqdm(list(rank_rows(data).batches(batch_size)), desc="activation histograms",
                                  disable=not progress, leave=False):
            with observing_steps(step):
                sim(x, step, cond)
    finally:
        for handle in handles:
            handle.remove()
        for key, aq in quantizers.items():
            aq.mode = saved[key]
    return reduce_histograms(hists)  # several ranks: each counted its share


def current_steps_or_fail(batch: int) -> torch.Tensor:
    """The declared table rows of a batch; histograms need one row per batch element."""
    steps = current_steps()
    if steps is None or steps.numel() != batch:
        raise TfmqError("per-step histograms need observing_steps(step_index) with one row per batch element")
    return steps


def mse_static_scale(
    hist: torch.Tensor, absmax: float, qrange: tuple[int, int], num_candidates: int = 80
) -> torch.Tensor:
    """The per-tensor scale minimising sum_t E_t[(x - x^)^2] over the steps t.

    ``hist`` [T, bins] counts values on [-absmax, absmax]; each step's error is the mean over its
    own values, so every step weighs the same. Candidates shrink the max-rule range in 1% steps
    (the paper's weight search, applied to activations).
    """
    qmin, qmax = qrange
    qmax_scale = grids.symmetric_qmax(qrange)  # the max rule's divisor: 127 on both 8-bit grids
    bins = hist.shape[1]
    edges = torch.linspace(-absmax, absmax, bins + 1, dtype=torch.float64, device=hist.device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    totals = hist.sum(dim=1, keepdim=True)
    weights = (hist / totals.clamp(min=1)).sum(dim=0)
    best_err, best = float("inf"), absmax / qmax_scale
    for i in range(num_candidates):
        scale = max(absmax * (1.0 - 0.01 * i), 1e-8) / qmax_scale
        err = float((weights * (centres - torch.clamp(torch.round(centres / scale), qmin, qmax) * scale).pow(2)).sum())
        if err < best_err:
            best_err, best = err, scale
    return torch.tensor(best, dtype=torch.float32)


def set_static_scales_by_rule(
    quantizers: dict[str, ActQuantizer], rule: str, hists: dict[str, torch.Tensor] | None = None
) -> None:
    """Set every quantizer's static scale by ``rule`` (one of ``STEP_SCALE_RULES``) and switch it to
    quantizing. ``mse`` needs ``hists`` from ``collect_step_histograms``; a quantizer that saw no
    data keeps the ``max`` rule's fallback."""
    if rule not in STEP_SCALE_RULES:
        raise TfmqError(f"--static-scale-rule {rule!r}: choose {' or '.join(STEP_SCALE_RULES)}")
    if rule == "mse" and hists is None:
        raise TfmqError("the mse rule needs per-step histograms (collect_step_histograms)")
    for key, aq in quantizers.items():
        limit = _observed_absmax(aq)
        if rule == "mse" and hists is not None and key in hists and limit is not None:
            aq.set_scale(mse_static_scale(hists[key], limit, aq.qrange))
        else:
            aq.set_scale(static_scale(aq))
        aq.mode = ActMode.QUANTIZING


# 3. the whole activation stage ---------------------------------------------------------------------


def reset_act_statistics(layers: dict[str, QuantLayer]) -> None:
    """Forget observed ranges (before observing again with the final weights)."""
    for layer in layers.values():
        for aq in [layer.input_quantizer, *act_quantizers({"_": layer}).values()]:
            aq.step_min.fill_(float("inf"))
            aq.step_max.fill_(float("-inf"))
            aq.step_count.zero_()
        layer.output_absmax.zero_()


def calibrate_activations(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    batch_size: int,
    rule: str,
    samples_per_step: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Per-step ranges of every activation quantizer (FSC statistics) over ``samples_per_step``
    inputs of every step (0 = all), then one static scale each by ``rule``; leaves the quantizers
    quantizing."""
    reset_act_statistics(layers)
    if samples_per_step > 0:
        data = data.per_step_subset(samples_per_step, seed)
    observe_activations(sim, layers, data, batch_size, progress)
    set_static_scales(sim, layers, data, batch_size, rule, progress)
