"""One calibration run: data, simulation, the chosen method, the artifact.

``calibrate`` is what ``tfmq-export calibrate`` calls. Methods live in their own modules
(``minmax``, ``qdiff``, ``tfmq``); this module only wires them to data and the artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tfmq_export.artifact import CalibrationArtifact, save_artifact
from tfmq_export.calibration.data import CalibrationData, collect_calibration_data
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import QuantLayer
from tfmq_export.quant.simulate import check_bits, quantize_model
from tfmq_export.quant.state import artifact_tensors
from tfmq_export.sampling import sampler_timesteps
from tfmq_export.temporal import TemporalTableUNet, build_table_unet


@dataclass
class CalibrationSettings:
    """Everything that decides a calibration result; written into the artifact."""

    method: str = "minmax"
    wbits: int = 8
    abits: int = 8
    steps: int = 25
    num_samples: int = 64
    iters: int = 0
    seed: int = 0
    batch_size: int = 64
    weight_init: str = "mse"
    static_scale_rule: str = "max"
    temporal_table: str = "fp"
    extra: dict[str, Any] | None = None


#: method name -> fn(sim, layers, data, settings, fp_unet, work_dir, progress) -> dict of timings/extras
MethodFn = Callable[..., dict[str, Any] | None]


def _minmax(sim, layers, data, settings, fp_model, work_dir, progress) -> None:
    from tfmq_export.calibration.minmax import calibrate_minmax

    calibrate_minmax(sim, layers, data, settings.batch_size, settings.weight_init, settings.static_scale_rule,
                     progress)


def _method(name: str) -> MethodFn:
    if name == "minmax":
        return _minmax
    if name in ("qdiff", "tfmq"):
        import importlib

        try:
            module = importlib.import_module(f"tfmq_export.calibration.{name}")
        except ModuleNotFoundError as exc:
            raise TfmqError(f"--method {name} is not available in this build") from exc
        return module.run
    raise TfmqError(f"unknown --method {name!r} (choose minmax, qdiff or tfmq)")


def calibrate(
    model: LoadedModel,
    settings: CalibrationSettings,
    out_dir: Path | None = None,
    progress: bool = True,
) -> CalibrationArtifact:
    """Calibrate ``model`` and (when ``out_dir`` is given) write the artifact there."""
    check_bits(settings.wbits, settings.abits)
    from tfmq_export.calibration.minmax import STEP_SCALE_RULES

    if settings.static_scale_rule not in STEP_SCALE_RULES:  # before minutes of data collection
        raise TfmqError(f"--static-scale-rule {settings.static_scale_rule!r}: choose {' or '.join(STEP_SCALE_RULES)}")
    method = _method(settings.method)
    if settings.method in ("qdiff", "tfmq") and settings.iters == 0:
        from tfmq_export.calibration.reconstruction import DEFAULT_ITERS

        settings = replace(settings, iters=DEFAULT_ITERS)  # the artifact records the budget actually used
    torch.manual_seed(settings.seed)
    started = time.perf_counter()

    # 1. the sampler's timesteps = the rows of the temporal table
    timesteps = sampler_timesteps(model.scheduler_config, settings.steps)
    fp_sim = build_table_unet(model.unet, timesteps).eval()

    # 2. full-precision trajectories, every step kept
    quantized = not (settings.wbits >= 16 and settings.abits >= 16)
    data: CalibrationData | None = None
    if quantized:
        if model.is_conditional and model.conditions is None:
            raise TfmqError("a conditional UNet needs --conditions FILE.npy (encoder_hidden_states [N, S, D])")
        data = collect_calibration_data(
            lambda x, s, c: fp_sim(x, s, c),
            model.scheduler_config,
            timesteps,
            model.sample_shape,
            settings.num_samples,
            settings.seed,
            settings.batch_size,
            model.conditions,
            progress,
        )
    data_seconds = time.perf_counter() - started

    # 3. simulation + method
    sim = _fresh_sim(fp_sim)
    layers: dict[str, QuantLayer] = {}
    extras: dict[str, Any] = {}
    if quantized:
        layers = quantize_model(sim, settings.wbits, settings.abits)
        work_dir = None if out_dir is None else Path(out_dir) / ".work"
        extras = method(sim, layers, data, settings, model, work_dir, progress) or {}
    total_seconds = time.perf_counter() - started

    tensors, records = artifact_tensors(sim)
    tensors.update(extras.get("tensors", {}))  # method extras: per-step temporal ranges (FSC), split scales
    artifact = CalibrationArtifact(
        method=settings.method if quantized else "fp",
        wbits=settings.wbits,
        abits=settings.abits,
        timesteps=timesteps,
        scheduler_config=dict(model.scheduler_config),
        model_name=model.name,
        model_class=model.unet_class,
        model_fingerprint=model.fingerprint(),
        layers=records,
        tensors=tensors,
        settings={**{k: v for k, v in asdict(settings).items() if v is not None}, "model_source": model.source},
        timings={"data_seconds": data_seconds, "calib_seconds": total_seconds, **extras.get("timings", {})},
        static_scale_rule=settings.static_scale_rule,
        temporal_table=extras.get("temporal_table", settings.temporal_table),
    )
    if out_dir is not None:
        save_artifact(artifact, Path(out_dir))
    return artifact


def _fresh_sim(fp_sim: TemporalTableUNet) -> TemporalTableUNet:
    """A separate copy of the full-precision table UNet for the method to quantize."""
    import copy

    return copy.deepcopy(fp_sim)
