"""``tfmq-export sample``: sample from an exported graph or an artifact's simulation, write a grid."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner, open_runner, runner_denoiser
from tfmq_export.distributed import init_from_env, is_writer, rank_device, world_size
from tfmq_export.errors import TfmqError
from tfmq_export.images import save_grid
from tfmq_export.io import check_writable
from tfmq_export.sampling import SamplingSpec, check_schedule, generate

__all__ = ["SourceInfo", "artifact_spec", "is_digits_fingerprint", "runner_for", "sample_to_files", "sample_with"]

#: backends that run an exported .onnx file directly
_ONNX_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class SourceInfo:
    """What ``sample`` knows about its SOURCE: how to sample it and what to report."""

    spec: SamplingSpec
    precision: str
    method: str
    fingerprint: str


def is_digits_fingerprint(fingerprint: str) -> bool:
    """True when ``fingerprint`` is the bundled digits model's (so digits-FID applies)."""
    from tfmq_export.models.loading import load_model

    try:
        return fingerprint == load_model("digits").fingerprint()
    except TfmqError:  # a build without the bundled model
        return False


def _schedule(recorded_scheduler: str, recorded_steps: int, scheduler: str | None,
              steps: int | None) -> tuple[str | None, int | None]:
    """The schedule to sample: ``--scheduler``/``--steps`` when given, else the calibrated ones
    (None: the config's own scheduler, the table's length; graphs from before they were recorded)."""
    return scheduler or recorded_scheduler or None, steps or recorded_steps or None


def artifact_spec(artifact: Any, sample_shape: tuple[int, ...], conditional: bool = False, source: str = "the model",
                  scheduler: str | None = None, steps: int | None = None) -> SamplingSpec:
    """How to sample an artifact's table (or its sampler export): the calibrated scheduler and step
    count unless ``scheduler``/``steps`` say otherwise."""
    name, count = _schedule(str(artifact.settings.get("scheduler") or ""), int(artifact.settings.get("steps") or 0),
                            scheduler, steps)
    return SamplingSpec(artifact.timesteps, artifact.scheduler_config, sample_shape, conditional,
                        scheduler=name, num_steps=count, source=source)


def _artifact_runner(source: Path, backend: str, model: str | None, scheduler: str | None = None,
                     steps: int | None = None, device: str | None = None) -> tuple[Runner, SourceInfo]:
    """The torch simulation of an artifact folder, on ``device``."""
    if backend != "torch":
        raise TfmqError(f"{source} is an artifact folder: sample it with --backend torch, or export it first")
    from tfmq_export.artifact import load_artifact
    from tfmq_export.contract import precision_label
    from tfmq_export.models.loading import load_model_for_artifact
    from tfmq_export.quant.state import simulation_from_artifact

    artifact = load_artifact(source)
    loaded = load_model_for_artifact(artifact, model)
    artifact.check_model(loaded.fingerprint(), loaded.name)
    spec = artifact_spec(artifact, loaded.sample_shape, loaded.is_conditional, str(source), scheduler, steps)
    check_schedule(spec)
    sim = simulation_from_artifact(loaded.unet, artifact)
    info = SourceInfo(spec, precision_label(artifact.wbits, artifact.abits), artifact.method,
                      artifact.model_fingerprint)
    return open_runner("torch", sim, info.precision, device=device), info


def runner_for(source: Path, backend: str, model: str | None = None, scheduler: str | None = None,
               steps: int | None = None, device: str | None = None) -> tuple[Runner, SourceInfo]:
    """A runner for SOURCE (ONNX file or artifact folder) and what sampling needs to know.

    ``scheduler``/``steps`` override the calibrated schedule; the table must hold a row for every
    timestep of it (``sampling.timestep_rows``, checked before the runner loads). ``device``: where
    the torch backend computes (cpu, cuda, cuda:N); the other backends take only cpu."""
    source = Path(source)
    if backend != "torch" and device not in (None, "cpu"):
        raise TfmqError(f"--device {device} applies to --backend torch; {backend} picks its own device")
    if source.is_dir():
        return _artifact_runner(source, backend, model, scheduler, steps, device)
    from tfmq_export.export.onnx_export import describe_onnx

    described = describe_onnx(source)
    if backend not in _ONNX_BACKENDS:
        raise TfmqError(f"--backend {backend} cannot run {source}; use onnxruntime or openvino for ONNX files")
    if model is not None:  # MODEL given: the graph must have been exported from its weights
        from tfmq_export.models.loading import check_fingerprint, load_model

        check_fingerprint(described.fingerprint, load_model(model), str(source))
    name, count = _schedule(described.scheduler, described.steps, scheduler, steps)
    spec = SamplingSpec(described.timesteps, described.scheduler_config, described.sample_shape,
                        described.conditional, scheduler=name, num_steps=count, source=str(source))
    check_schedule(spec)
    info = SourceInfo(spec, described.precision, described.method, described.fingerprint)
    return open_runner(backend, source, described.precision), info


def sample_with(runner: Runner, spec: SamplingSpec, num_images: int, seed: int, batch_size: int,
                progress: bool = True) -> np.ndarray:
    """Activate ``runner`` and sample ``num_images`` through it with the shared DDIM loop."""
    with runner:
        return generate(runner_denoiser(runner), spec, num_images, seed, batch_size, progress=progress,
                        desc=f"sampling {runner.backend}:{runner.precision}")


def _rank_device(device: str | None) -> str | None:
    """Join torchrun's process group when there is one (``tfmq_export.distributed``); a plain
    ``cuda`` then means this rank's GPU."""
    import torch

    if init_from_env(device) > 1 and device is not None and device.startswith("cuda"):
        return str(rank_device(torch.device(device)))
    return device


def sample_to_files(source: Path, out_path: Path, backend: str, num_images: int, seed: int, batch_size: int,
                    json_path: Path | None, model: str | None, scheduler: str | None = None,
                    steps: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Sample, write the PNG grid (first 64 images) and optionally a JSON summary."""
    if num_images < 1 or batch_size < 1:
        raise TfmqError("--num-images and --batch-size must be positive")
    check_writable(out_path, "--out")
    if json_path is not None:
        check_writable(json_path, "--json")
    device = _rank_device(device)
    runner, info = runner_for(source, backend, model, scheduler, steps, device)
    start = time.perf_counter()
    images = sample_with(runner, info.spec, num_images, seed, batch_size, progress=is_writer())
    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {"source": str(source), "backend": backend, "precision": info.precision,
                               "method": info.method, "num_images": num_images, "seed": seed,
                               "device": device or "cpu", "ranks": world_size(),
                               "seconds": round(seconds, 3), "grid": str(out_path)}
    if not is_writer():  # several ranks: they shared the sampling; rank 0 scores and writes
        return summary
    save_grid(images[:64], out_path)
    if is_digits_fingerprint(info.fingerprint):
        from tfmq_export.metrics.fid import digits_fid

        summary["digits_fid"] = digits_fid(images)
    if json_path is not None:
        from tfmq_export.io import atomic_write_text

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(summary, indent=2))
    return summary
