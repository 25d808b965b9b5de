"""One calibration run: data, simulation, the chosen method, the artifact.

``calibrate`` is what ``tfmq-export calibrate`` calls. Methods live in their own modules
(``minmax``, ``qdiff``, ``tfmq``), each a ``run`` function returning a ``MethodResult``; this
module only wires them to data and the artifact, and refuses non-finite values on the way
(model weights, calibration data, every artifact tensor) with one line naming the tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tfmq_export import config
from tfmq_export.artifact import OUTPUT_CORRECTION_KEY, CalibrationArtifact, save_artifact
from tfmq_export.calibration import minmax, offload, qdiff, tfmq
from tfmq_export.calibration.data import CalibrationData, collect_calibration_data, device_denoiser
from tfmq_export.calibration.disk_cache import spill_to_disk
from tfmq_export.calibration.guided_data import guided_calibration_data
from tfmq_export.calibration.memory import stage_memory
from tfmq_export.calibration.output_correction import measure_output_correction
from tfmq_export.calibration.result import MethodResult
from tfmq_export.calibration.sensitivity import plan_layers
from tfmq_export.config import CalibrationSettings
from tfmq_export.device import (
    cpu_tensors,
    device_record,
    exact_float32,
    module_device,
    resolve_device,
    shared_copy,
    synchronize,
)
from tfmq_export.distributed import check_agreement, rank, run_on_writer, world_size
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import QuantLayer
from tfmq_export.quant.simulate import quantize_model
from tfmq_export.quant.state import artifact_tensors, install_step_factors
from tfmq_export.sampling import resolve_scheduler_name, sampler_timesteps
from tfmq_export.temporal import TemporalTableUNet, build_table_unet

__all__ = ["METHODS", "CalibrationRun", "MethodFn", "calibrate", "check_offload", "run_calibration"]

#: fn(sim, layers, data, settings, model, work_dir, progress) -> MethodResult; calibrates ``sim`` in place
MethodFn = Callable[
    [TemporalTableUNet, dict[str, QuantLayer], CalibrationData, CalibrationSettings, LoadedModel, Path | None, bool],
    MethodResult,
]

#: method name -> its module's ``run``
METHODS: dict[str, MethodFn] = {"minmax": minmax.run, "qdiff": qdiff.run, "tfmq": tfmq.run}


@dataclass
class CalibrationRun:
    """A finished calibration: the artifact (as written) and the method's full result."""

    artifact: CalibrationArtifact
    result: MethodResult


def calibrate(
    model: LoadedModel,
    settings: CalibrationSettings,
    out_dir: Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> CalibrationArtifact:
    """Calibrate ``model`` and (when ``out_dir`` is given) write the artifact there."""
    return run_calibration(model, settings, out_dir, progress, device).artifact


def run_calibration(
    model: LoadedModel,
    settings: CalibrationSettings,
    out_dir: Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> CalibrationRun:
    """``calibrate``, also handing back the method's result (per-block losses, TIAR, timings).

    ``device`` (``cpu``, ``cuda``, ``cuda:N``; None = cpu): where every tensor of the run lives;
    ``model.unet`` is moved there for the run and back after it (``extra.offload``, CUDA only: the
    UNets stay in CPU memory and their blocks visit the device, ``calibration.offload``). The artifact
    is written from CPU tensors and its settings do not name the device (the timings do: ``device``,
    ``device_name``). The run's float references share ``model.unet``'s weights (never written).
    """
    settings.validate()  # before minutes of data collection (fields may have changed since construction)
    target = resolve_device(device)
    check_offload(settings, target)
    home = module_device(model.unet)
    model.unet.to("cpu" if settings.options.offload else target)  # --offload: blocks visit the device
    try:
        with exact_float32(target):
            return _run(model, settings, out_dir, progress, target)
    finally:
        model.unet.to(home)  # the caller's model stays where it was (export and sampling run on the CPU)


def check_offload(settings: CalibrationSettings, device: torch.device) -> None:
    """``--offload`` needs a GPU: it is refused with ``--device cpu``, where every tensor already is in
    CPU memory, rather than recorded in an artifact whose run moved nothing."""
    if settings.options.offload and device.type != "cuda":
        raise TfmqError(f"--offload keeps the UNets in CPU memory and moves blocks to a GPU while they run; it needs "
                        f"--device cuda (this run is on {device}, where everything already is in CPU memory)")


def _run(model: LoadedModel, settings: CalibrationSettings, out_dir: Path | None, progress: bool,
         device: torch.device) -> CalibrationRun:
    """``run_calibration`` with ``model.unet`` on ``device``."""
    method = METHODS[settings.method]
    if settings.reconstructs and settings.iters == 0:
        settings = replace(settings, iters=config.DEFAULT_ITERS)  # the artifact records the budget actually used
    # the artifact records the sampler actually used (None = the model's own, DDIM for a DDPM config)
    settings = replace(settings, scheduler=resolve_scheduler_name(settings.scheduler, model.scheduler_config))
    check_finite_weights(model.unet)
    # several ranks: the same settings and model everywhere, else one line and no work (calibration.parallel)
    if world_size() > 1:  # (hashing the weights costs seconds for an SD-class UNet: only when needed)
        check_agreement({"settings": settings.record(), "model fingerprint": model.fingerprint()})
    torch.manual_seed(settings.seed)
    started = time.perf_counter()

    # 1. the sampler's timesteps = the rows of the temporal table (one per scheduler call)
    timesteps = sampler_timesteps(model.scheduler_config, settings.steps, settings.scheduler)
    options = settings.options
    with offload.offloading(device if options.offload else None):  # --offload: calibration.offload
        fp_sim = build_table_unet(model.unet, timesteps, share_weights=True).eval()  # the caller's weights
        offload.attach(fp_sim)

        # 2. full-precision trajectories, every step kept
        memory: dict[str, float] = {}
        with stage_memory(memory, "data", device):
            data = _collect(fp_sim, model, timesteps, settings, progress, device)
        data_seconds = time.perf_counter() - started
        plan = plan_layers(fp_sim, data, settings)  # keep_fp / w8_layers: the same layer list for every method
        offload.detach(fp_sim)  # the copy below must not carry its hooks

        # 3. simulation + method
        # the method quantizes its own copy of the full-precision table UNet: its quantized layers clone
        # their weights (quantize_model), the rest shares the float weights (nothing writes them)
        sim = shared_copy(fp_sim)
        result = MethodResult()
        if settings.quantized:
            layers = quantize_model(sim, settings.wbits, settings.abits, plan.bits, options.linear_act_grid)
            offload.attach(sim)
            work_dir = None if out_dir is None else Path(out_dir) / ".work"
            spill_dir = None if work_dir is None else work_dir / f"cache-rank{rank()}"  # --cache-budget
            with spill_to_disk(spill_dir, options.cache_mb * 2**20, options.disk_cache), \
                    stage_memory(memory, "method", device):
                result = method(sim, layers, data, settings, model, work_dir, progress)
            if options.output_correction != "none":  # the quantized output's mean error per step
                correction_started = time.perf_counter()
                offload.attach(fp_sim)  # --offload: the reference's blocks visit the device again
                # measured on the grids the artifact deploys: tfmq's per-step factors (step_factors) included
                install_step_factors(sim, layers, result.tensors)
                result.tensors[OUTPUT_CORRECTION_KEY] = measure_output_correction(
                    sim, fp_sim, data, options.output_correction, options.act_samples_per_step, settings.seed,
                    settings.batch_size, (settings.guidance_scale or 1.0) if options.guided_correction else 1.0)
                offload.detach(fp_sim)
                result.timings["output_correction_seconds"] = time.perf_counter() - correction_started
    synchronize(device)
    total_seconds = time.perf_counter() - started

    tensors, records = artifact_tensors(sim)
    tensors.update(result.tensors)  # method extras: per-step temporal ranges (FSC), split scales
    tensors = cpu_tensors(tensors)  # the artifact does not depend on the device
    check_finite_tensors(tensors)
    artifact = CalibrationArtifact(
        method=settings.method if settings.quantized else "fp",
        wbits=settings.wbits,
        abits=settings.abits,
        timesteps=timesteps,
        scheduler_config=dict(model.scheduler_config),
        model_name=model.name,
        model_class=model.unet_class,
        model_fingerprint=model.fingerprint(),
        layers=records,
        tensors=tensors,
        settings={**settings.record(), "options": options.record(settings.guidance_scale), "model_source": model.source,
                  **plan.record()},
        timings={"data_seconds": data_seconds, "calib_seconds": total_seconds, **result.timings,
                 **device_record(device), "ranks": float(world_size()), **memory},
        static_scale_rule=settings.static_scale_rule,
        temporal_table=result.temporal_table or settings.temporal_table,
        linear_act_grid=options.linear_act_grid,
    )
    if out_dir is not None:  # several ranks: rank 0 writes, the others wait for it
        run_on_writer(lambda: save_artifact(artifact, Path(out_dir)))
    return CalibrationRun(artifact, result)


def _collect(fp_sim: TemporalTableUNet, model: LoadedModel, timesteps: list, settings: CalibrationSettings,
             progress: bool, device: torch.device) -> CalibrationData | None:
    """The full-precision trajectories, every step kept (None: nothing to quantize)."""
    if settings.quantized and model.guided is not None:  # calibrate --prompts: both guidance halves, one pass
        data = guided_calibration_data(fp_sim, model, timesteps, settings, progress)
        check_finite_data(data)
        return data
    if not settings.quantized:
        return None
    if model.is_conditional and model.conditions is None:
        raise TfmqError("a conditional UNet needs --conditions FILE.npy (encoder_hidden_states [N, S, D])")
    data = collect_calibration_data(
        device_denoiser(fp_sim, fp_sim),
        model.scheduler_config,
        timesteps,
        model.sample_shape,
        settings.num_samples,
        settings.seed,
        settings.batch_size,
        model.conditions,
        progress,
        scheduler=settings.scheduler,
        num_steps=settings.steps,
    )
    check_finite_data(data)
    return data.to(device)  # the methods' cached inputs live on the device


# --- non-finite values stop the run, naming the tensor ---------------------------------------------


def check_finite_weights(unet: torch.nn.Module) -> None:
    """Refuse a UNet with NaN or Inf weights (it would calibrate into noise)."""
    for name, tensor in unet.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TfmqError(f"model weight {name} holds NaN or Inf values; the model cannot be calibrated")


def check_finite_data(data: CalibrationData) -> None:
    """Refuse calibration data with NaN or Inf values, naming the first bad step."""
    for label, values in (("x_t", data.samples), ("condition", data.conditions)):
        if values is None:
            continue
        bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
        if bad.any():
            row = int(data.step_index[bad.nonzero()[0, 0]])
            raise TfmqError(f"calibration data: {label} at step {row} (timestep {data.timesteps[row]}) is not finite; "
                            "the full-precision model or the conditions produce NaN/Inf")


def check_finite_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Refuse an artifact tensor with NaN or Inf values (per-step ranges may be +-inf for a step
    that was never observed, never NaN)."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        ranges = key.endswith(("step_min", "step_max"))
        bad = torch.isnan(tensor).any() if ranges else not torch.isfinite(tensor).all()
        if bad:
            raise TfmqError(f"calibration produced non-finite values in {key}; lower the learning rates or check "
                            "the model")
