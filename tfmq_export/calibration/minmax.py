"""The ``minmax`` baseline: per-channel weight ranges and activation ranges over all steps.

Weights: per output channel, either the plain max (``weight_init="max"``) or the MSE-searched
range (80 shrinking candidates, |w - w^|^2.4, as the paper initialises). Activations: the input
range of every quantized layer over the calibration data of all steps, recorded per step
(``step_min`` / ``step_max``) and turned into one static scale by ``static_scale``.
It is the baseline every other method is measured against.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from tfmq_export.calibration.data import CalibrationData
from tfmq_export.quant import grids
from tfmq_export.quant.modules import ActMode, ActQuantizer, QuantLayer
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.quant.steps import observing_steps
from tfmq_export.temporal import TemporalTableUNet

STATIC_SCALE_RULES = ("max",)


def init_weight_scales(layers: dict[str, QuantLayer], weight_init: str = "mse") -> None:
    """Set every enabled weight quantizer's per-channel scale."""
    for layer in layers.values():
        wq = layer.weight_quantizer
        if not wq.enabled:
            continue
        if weight_init == "mse":
            scale = grids.mse_weight_scale(layer.weight, wq.bits)
        elif weight_init == "max":
            absmax = layer.weight.detach().reshape(layer.weight.shape[0], -1).abs().amax(dim=1)
            scale = grids.absmax_scale(absmax, wq.qrange[1])
        else:
            raise ValueError(f"unknown weight_init {weight_init!r}")
        wq.set_scale(scale)


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
    for x, step, cond in tqdm(list(data.batches(batch_size)), desc="activation ranges", disable=not progress,
                              leave=False):
        with observing_steps(step):
            sim(x, step, cond)


def static_scale(quantizer: ActQuantizer, rule: str = "max") -> torch.Tensor:
    """One engine scale from the per-step ranges. ``max``: the largest |x| over all steps, so no
    step clips (the finite set of steps makes this exact over the calibration data)."""
    if rule != "max":
        raise ValueError(f"unknown static scale rule {rule!r}; known: {', '.join(STATIC_SCALE_RULES)}")
    absmax = quantizer.step_absmax()
    absmax = absmax[torch.isfinite(absmax)]
    value = absmax.max() if absmax.numel() else torch.tensor(1.0)
    return grids.absmax_scale(value, quantizer.qrange[1])


def set_static_scales(layers: dict[str, QuantLayer], rule: str = "max") -> None:
    """Derive every enabled activation quantizer's static scale and switch it to quantizing."""
    for layer in layers.values():
        aq = layer.input_quantizer
        if aq.enabled:
            aq.set_scale(static_scale(aq, rule))
            aq.mode = ActMode.QUANTIZING
        else:
            aq.mode = ActMode.DISABLED


def calibrate_minmax(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    batch_size: int = 64,
    weight_init: str = "mse",
    rule: str = "max",
    progress: bool = True,
) -> None:
    """Calibrate ``sim`` in place: weights first, then activation ranges with quantized weights."""
    init_weight_scales(layers, weight_init)
    observe_activations(sim, layers, data, batch_size, progress)
    set_static_scales(layers, rule)
