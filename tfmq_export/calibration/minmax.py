"""``--method minmax``: per-channel weight ranges and activation ranges over all steps, the baseline.

Weights: per output channel, either the plain max (``weight_init="max"``) or the MSE-searched
range (80 shrinking candidates, |w - w^|^2.4, as the paper initialises). Activations: the input
range of every quantized layer over the calibration data of all steps, recorded per step
(``step_min`` / ``step_max``) and turned into one static scale by a rule (``max`` or ``mse``,
``calibration.activations``). Every other method is measured against it.
"""

from __future__ import annotations

import time
from pathlib import Path

from tfmq_export.calibration.activations import observe_activations, set_static_scales
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.result import MethodResult
from tfmq_export.calibration.weights import init_weight_scales
from tfmq_export.config import CalibrationSettings
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import QuantLayer
from tfmq_export.temporal import TemporalTableUNet

__all__ = ["calibrate_minmax", "run"]


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
    set_static_scales(sim, layers, data, batch_size, rule, progress)


def run(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    settings: CalibrationSettings,
    model: LoadedModel,  # noqa: ARG001 - the methods' common signature (qdiff and tfmq read the FP UNet)
    work_dir: Path | None = None,  # noqa: ARG001 - nothing to checkpoint: one pass over the data
    progress: bool = True,
) -> MethodResult:
    """The method as ``pipeline.calibrate`` calls it."""
    started = time.perf_counter()
    calibrate_minmax(sim, layers, data, settings.batch_size, settings.weight_init, settings.static_scale_rule,
                     progress)
    return MethodResult(timings={"method_seconds": time.perf_counter() - started})
