"""``tfmq-export sample``: sample from an exported graph or an artifact's simulation, write a grid."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner
from tfmq_export.backends.torch.runner import TorchRunner, runner_denoiser
from tfmq_export.errors import TfmqError
from tfmq_export.images import save_grid
from tfmq_export.sampling import sample_images


def is_digits_fingerprint(fingerprint: str) -> bool:
    """True when ``fingerprint`` is the bundled digits model's (so digits-FID applies)."""
    from tfmq_export.models.loading import load_model

    try:
        return fingerprint == load_model("digits").fingerprint()
    except TfmqError:  # a build without the bundled model
        return False


def runner_for(source: Path, backend: str, model: str | None = None) -> tuple[Runner, dict[str, Any]]:
    """A runner for SOURCE (ONNX file or artifact folder) and what sampling needs to know."""
    source = Path(source)
    if source.is_dir():
        if backend != "torch":
            raise TfmqError(f"{source} is an artifact folder: sample it with --backend torch, or export it first")
        from tfmq_export.artifact import load_artifact
        from tfmq_export.contract import precision_label
        from tfmq_export.models.loading import load_model_for_artifact
        from tfmq_export.quant.state import simulation_from_artifact

        artifact = load_artifact(source)
        loaded = load_model_for_artifact(artifact, model)
        artifact.check_model(loaded.fingerprint(), loaded.name)
        sim = simulation_from_artifact(loaded.unet, artifact)
        info = {"timesteps": artifact.timesteps, "scheduler_config": artifact.scheduler_config,
                "sample_shape": loaded.sample_shape, "conditional": loaded.is_conditional,
                "precision": precision_label(artifact.wbits, artifact.abits), "method": artifact.method,
                "fingerprint": artifact.model_fingerprint}
        return TorchRunner(sim, info["precision"]), info
    from tfmq_export.export.onnx_export import describe_onnx

    described = describe_onnx(source)
    info = {"timesteps": described.timesteps, "scheduler_config": described.scheduler_config,
            "sample_shape": described.sample_shape, "conditional": described.conditional,
            "precision": described.precision, "method": described.method, "fingerprint": described.fingerprint}
    if backend == "onnxruntime":
        from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(source, described.precision), info
    if backend == "openvino":
        from tfmq_export.backends.openvino.runner import OpenVINORunner

        return OpenVINORunner(source, described.precision), info
    raise TfmqError(f"--backend {backend} cannot run {source}; use onnxruntime or openvino for ONNX files")


def generate(runner: Runner, info: dict[str, Any], num_images: int, seed: int, batch_size: int,
             progress: bool = True) -> np.ndarray:
    """Sample ``num_images`` with the shared DDIM loop through ``runner``."""
    from tfmq_export.sampling import sampler_timesteps

    if info["conditional"]:
        raise TfmqError("sampling a conditional UNet needs text conditions, which `sample` does not take yet")
    steps = len(info["timesteps"])
    if sampler_timesteps(info["scheduler_config"], steps) != list(info["timesteps"]):
        raise TfmqError("the model's temporal table does not match its DDIM schedule; re-export it")
    with runner:
        return sample_images(runner_denoiser(runner), info["scheduler_config"], steps, num_images,
                             tuple(info["sample_shape"]), seed, batch_size, progress=progress,
                             desc=f"sampling {runner.backend}:{runner.precision}")


def sample_to_files(source: Path, out_path: Path, backend: str, num_images: int, seed: int, batch_size: int,
                    json_path: Path | None, model: str | None) -> dict[str, Any]:
    """Sample, write the PNG grid (first 64 images) and optionally a JSON summary."""
    if num_images < 1 or batch_size < 1:
        raise TfmqError("--num-images and --batch-size must be positive")
    runner, info = runner_for(source, backend, model)
    start = time.perf_counter()
    images = generate(runner, info, num_images, seed, batch_size)
    seconds = time.perf_counter() - start
    save_grid(images[:64], out_path)
    summary: dict[str, Any] = {"source": str(source), "backend": backend, "precision": info["precision"],
                               "method": info["method"], "num_images": num_images, "seed": seed,
                               "seconds": round(seconds, 3), "grid": str(out_path)}
    if is_digits_fingerprint(info["fingerprint"]):
        from tfmq_export.metrics.fid import digits_fid

        summary["digits_fid"] = digits_fid(images)
    if json_path is not None:
        from tfmq_export.io import atomic_write_text

        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(summary, indent=2))
    return summary
