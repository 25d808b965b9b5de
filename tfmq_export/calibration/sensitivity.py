"""Per-layer bit widths before any method runs: mixed precision by measured sensitivity, and
classes of layers kept float.

Why here, before the method: every method (minmax, qdiff, tfmq) then calibrates the same layer
list, and the artifact records each layer's bits, which the exporter and the simulation read.

- ``keep_fp`` (``extra.keep_fp``): classes of layers left float, as the TFMQ-DM authors' code does
  for the 1x1 shortcut convs and the downsample convs (``KEEP_FP_CLASSES``).
- ``w8_classes`` (``extra.w8_classes``, wbits 4 only): classes of layers that keep 8-bit weights (same
  names as ``keep_fp``): the middle road between float and 4-bit for a class 4 bits hurt as a whole.
- ``w8_layers`` (``extra.w8_layers``, wbits 4 only): the N weight layers that 4 bits hurt most keep
  8-bit weights. Sensitivity of a layer = relative L2 error of the UNet's noise prediction when that
  layer alone has 4-bit round-to-nearest weights (the run's ``weight_init`` scale) and everything
  else is float, over a few calibration inputs spread uniformly over the steps. Measured, not
  guessed from the layer's kind or size (MixDQ's point: the few layers that matter are found by
  measuring them).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

from tfmq_export.calibration.block_io import uniform_subset
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.weights import init_weight_scales
from tfmq_export.config import KEEP_FP_CLASSES, CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.metrics.error import ErrorStats
from tfmq_export.models.adapter import UNetAdapter, replace_submodule
from tfmq_export.quant.modules import make_quant_layer
from tfmq_export.temporal import TemporalTableUNet

__all__ = ["KEEP_FP_PATTERNS", "SENSITIVITY_SAMPLES", "LayerPlan", "keep_fp_layers", "layer_sensitivity",
           "plan_layers"]

#: ``extra.keep_fp`` class -> layer-name patterns (diffusers module names)
KEEP_FP_PATTERNS: dict[str, tuple[str, ...]] = {
    "shortcuts": ("*.conv_shortcut",),
    "downsamplers": ("*downsamplers.*",),
    "upsamplers": ("*upsamplers.*",),
}
assert set(KEEP_FP_PATTERNS) == set(KEEP_FP_CLASSES)
#: calibration inputs the sensitivity is measured on (the same number from every step)
SENSITIVITY_SAMPLES = 64


@dataclass
class LayerPlan:
    """Bits that differ from the run's: {layer: (wbits, abits)}, and what decided them."""

    bits: dict[str, tuple[int, int]] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)  # every candidate layer, largest first

    def record(self) -> dict[str, Any]:
        """What the artifact's settings keep ({} when every layer has the run's bits)."""
        out: dict[str, Any] = {}
        if self.sensitivity:
            out["layer_sensitivity"] = self.sensitivity
        w8 = sorted(n for n, (w, _) in self.bits.items() if w == 8)  # by sensitivity or by class
        if w8 or self.sensitivity:
            out["w8_layer_names"] = w8
        fp = sorted(n for n, (w, a) in self.bits.items() if w >= 16 and a >= 16)
        if fp:
            out["keep_fp_layer_names"] = fp
        return out


def keep_fp_layers(names: list[str], classes: tuple[str, ...]) -> list[str]:
    """The layers of ``names`` that belong to one of ``classes`` (``KEEP_FP_PATTERNS``)."""
    unknown = [c for c in classes if c not in KEEP_FP_PATTERNS]
    if unknown:
        raise TfmqError(f"keep_fp: unknown layer class {unknown[0]!r} (choose from {', '.join(KEEP_FP_CLASSES)})")
    patterns = [p for c in classes for p in KEEP_FP_PATTERNS[c]]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


@torch.no_grad()
def layer_sensitivity(fp_sim: TemporalTableUNet, names: list[str], data: CalibrationData, wbits: int = 4,
                      weight_init: str = "mse", samples: int = SENSITIVITY_SAMPLES, seed: int = 0,
                      batch_size: int = 64) -> dict[str, float]:
    """{layer: relative output error with that layer alone at ``wbits`` round-to-nearest}, largest first.

    Each layer is swapped for a weight-only quantized stand-in, measured, and put back, so
    ``fp_sim`` is unchanged afterwards."""
    probe = uniform_subset(data, samples, seed)
    batches = list(probe.batches(batch_size))
    reference = [fp_sim(x, step, cond) for x, step, cond in batches]
    out: dict[str, float] = {}
    for name in names:
        original = fp_sim.unet.get_submodule(name)
        qlayer = make_quant_layer(original, wbits, 16, fp_sim.num_steps)
        init_weight_scales({name: qlayer}, weight_init)
        replace_submodule(fp_sim.unet, name, qlayer)
        try:
            stats = ErrorStats()
            for (x, step, cond), ref in zip(batches, reference, strict=True):
                stats.add(fp_sim(x, step, cond).cpu().numpy(), ref.cpu().numpy())
            out[name] = float(stats.rel_l2)
        finally:
            replace_submodule(fp_sim.unet, name, original)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def plan_layers(fp_sim: TemporalTableUNet, data: CalibrationData | None,
                settings: CalibrationSettings) -> LayerPlan:
    """The per-layer bits ``settings.extra`` asks for (``keep_fp``, ``w8_classes``, ``w8_layers``); empty by
    default."""
    options = settings.options
    plan = LayerPlan()
    if not settings.quantized or not (options.keep_fp or options.w8_layers or options.w8_classes):
        return plan
    names = list(UNetAdapter(fp_sim.unet).quantizable_layers())
    for name in keep_fp_layers(names, options.keep_fp):
        plan.bits[name] = (16, 16)
    if settings.wbits == 4:
        for name in keep_fp_layers(names, options.w8_classes):
            plan.bits.setdefault(name, (8, settings.abits))  # a class also kept float stays float
    if options.w8_layers and settings.wbits == 4 and data is not None:
        candidates = [n for n in names if n not in plan.bits]
        if options.w8_layers > len(candidates):
            raise TfmqError(f"w8_layers {options.w8_layers}: the model has only {len(candidates)} quantized weight "
                            "layers")
        plan.sensitivity = layer_sensitivity(fp_sim, candidates, data, 4, settings.weight_init, seed=settings.seed)
        for name in list(plan.sensitivity)[: options.w8_layers]:
            plan.bits[name] = (8, settings.abits)
    return plan
