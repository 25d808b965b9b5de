"""The Python API: every ``tfmq-export`` command as a function, keyword arguments named as its options.

``tfmq_export.calibrate(...)`` is ``tfmq-export calibrate ...``: both call the same workflow
function (``workflows/``), so the API and the command line cannot drift apart. Options keep their
command-line names with ``_`` for ``-`` (``--num-samples`` -> ``num_samples``, ``--quiet`` ->
``quiet``). Every failure on bad input raises ``TfmqError`` with the same one line the command
prints; nothing is half-written. Heavy libraries (torch, diffusers, onnxruntime) load on the
first call, not on ``import tfmq_export``.

``EngineUNet`` (``workflows/engine_unet.py``) is the drop-in for a diffusers pipeline's ``unet``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tfmq_export.errors import TfmqError

if TYPE_CHECKING:
    import numpy as np

    from tfmq_export.artifact import CalibrationArtifact
    from tfmq_export.export.lint.common import LintViolation

__all__ = [
    "bench", "build_engine", "calibrate", "demo", "evaluate", "export_onnx", "export_pipeline", "lint", "sample",
    "train_digits",
    "train_digits_text",
]

F = TypeVar("F", bound=Callable[..., Any])
PathLike = str | Path


def _one_line(fn: F) -> F:
    """Unreadable or unwritable files (``OSError``) and ``MemoryError`` become ``TfmqError``, as the CLI's one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, MemoryError) as exc:
            raise TfmqError(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


@_one_line
def calibrate(model: PathLike, out: PathLike, *, method: str | None = None, wbits: int | None = None,
              abits: int | None = None, steps: int | None = None, num_samples: int | None = None,
              iters: int | None = None, seed: int | None = None, batch_size: int | None = None,
              static_scale_rule: str | None = None, temporal_table: str | None = None,
              recipe: PathLike | None = None, conditions: PathLike | None = None,
              prompts: PathLike | Sequence[str] | None = None, negative_prompt: str | None = None,
              guidance_scale: float | None = None, scheduler: str | None = None,
              linear_act_grid: str | None = None, quiet: bool = False, device: str = "cpu") -> CalibrationArtifact:
    """``tfmq-export calibrate MODEL --out OUT``: calibrate and write the artifact folder; returns it.

    ``model``: ``digits``, ``sd15-arch`` or a local diffusers folder. ``prompts``: a text file (one
    prompt per line) or a list of prompts, for a text-to-image pipeline folder (calibrates on both
    classifier-free guidance halves; ``guidance_scale`` defaults to 7.5). ``None`` = the recipe's or
    the default value. ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (where torch computes; not a setting).
    ``linear_act_grid``: ``int8`` or ``uint8-127`` (the Linear inputs' grid, for ``--target openvino``).
    """
    from tfmq_export.workflows.calibrate import calibrate_model

    overrides = {"method": method, "wbits": wbits, "abits": abits, "steps": steps, "num_samples": num_samples,
                 "iters": iters, "seed": seed, "batch_size": batch_size, "static_scale_rule": static_scale_rule,
                 "temporal_table": temporal_table, "negative_prompt": negative_prompt,
                 "guidance_scale": guidance_scale, "scheduler": scheduler}
    prompts_file = None
    if isinstance(prompts, (str, Path)):
        prompts_file = Path(prompts)
    elif prompts is not None:
        return _calibrate_prompt_list(str(model), Path(out), overrides, list(prompts), recipe, conditions, quiet,
                                      device, linear_act_grid)
    return calibrate_model(str(model), Path(out), overrides, recipe=recipe,
                           conditions=None if conditions is None else Path(conditions), prompts=prompts_file,
                           progress=not quiet, device=device, linear_act_grid=linear_act_grid)


def _calibrate_prompt_list(model: str, out: Path, overrides: dict[str, Any], prompts: list[str],
                           recipe: PathLike | None, conditions: PathLike | None, quiet: bool,
                           device: str, linear_act_grid: str | None = None) -> CalibrationArtifact:
    """A list of prompts goes through the same checks as a prompts file (written to a temporary one)."""
    import tempfile

    from tfmq_export.workflows.calibrate import calibrate_model

    if not all(isinstance(p, str) for p in prompts):
        raise TfmqError("prompts must be a prompts file or a list of strings")
    with tempfile.TemporaryDirectory(prefix="tfmq-prompts-") as folder:
        path = Path(folder) / "prompts.txt"
        path.write_text("".join(p.replace("\n", " ") + "\n" for p in prompts), encoding="utf-8")
        return calibrate_model(model, out, overrides, recipe=recipe,
                               conditions=None if conditions is None else Path(conditions), prompts=path,
                               progress=not quiet, device=device, linear_act_grid=linear_act_grid)


@_one_line
def export_onnx(artifact_dir: PathLike, out: PathLike, *, target: str = "tensorrt", timesteps: str = "sampler",
                model: str | None = None, precision: str | None = None, weight_storage: str = "int8",
                attention: str | None = None) -> Path:
    """``tfmq-export export-onnx ARTIFACT --out OUT.onnx``: the Q/DQ UNet with its temporal table.

    ``timesteps``: ``sampler`` (one row per calibrated step) or ``all`` (one per training timestep).
    ``precision``: ``fp16`` / ``fp32`` float parts (None: fp16 for tensorrt, fp32 for onnxruntime).
    ``weight_storage``: ``int8`` or ``int4`` (ONNX INT4 for 4-bit weights; onnxruntime target only).
    ``attention``: ``int8`` / ``float`` attention score MatMul inputs (None: int8 for openvino only).
    """
    from tfmq_export.workflows.export_onnx import export_onnx_file

    export_onnx_file(Path(artifact_dir), Path(out), target, model, timesteps, precision, weight_storage, attention)
    return Path(out)


@_one_line
def export_pipeline(artifact_dir: PathLike, out: PathLike, *, target: str = "onnxruntime",
                    timesteps: str = "sampler", model: str | None = None,
                    precision: str | None = None) -> dict[str, Any]:
    """``tfmq-export export-pipeline ARTIFACT --out DIR``: every stage of a text-to-image pipeline;
    returns the written ``pipeline.json``. ``precision``: as ``export_onnx``'s."""
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    return export_pipeline_folder(Path(artifact_dir), Path(out), target, model, timesteps, precision)


@_one_line
def build_engine(onnx_or_dir: PathLike, out: PathLike | None = None, *, backend: str = "onnxruntime",
                 min_batch: int = 1, opt_batch: int = 1, max_batch: int = 2,
                 timing_cache: PathLike | None = None, float_stages: str | None = None) -> dict[str, Any]:
    """``tfmq-export build-engine FILE.onnx --out PATH`` (returns the engine's manifest) or
    ``build-engine DIR`` for a pipeline folder (every stage; returns the manifests by stage).

    ``min_batch``/``opt_batch``/``max_batch``/``timing_cache``: TensorRT's profile and cache.
    ``float_stages`` (a pipeline folder): ``default`` (None) or ``fp32`` for its text encoder(s) and VAE decoder.
    """
    source = Path(onnx_or_dir)
    trt = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
           "timing_cache": None if timing_cache is None else Path(timing_cache)}
    if source.is_dir():
        try:
            from tfmq_export.workflows.build_pipeline import build_pipeline_engines
        except ImportError:
            raise TfmqError("building the engines of a pipeline folder is not available in this version") from None
        return build_pipeline_engines(source, backend, None if out is None else Path(out),
                                      batches=(min_batch, opt_batch, max_batch), timing_cache=trt["timing_cache"],
                                      float_stages=float_stages or "default")
    if float_stages is not None:
        raise TfmqError("float_stages applies to pipeline folders (export-pipeline); one .onnx has no float stages")
    if out is None:
        raise TfmqError("out is required when building one .onnx file (the engine's path)")
    from tfmq_export.backends.builders import build_engine as build

    return build(backend, source, Path(out), **(trt if backend == "tensorrt" else {}))


@_one_line
def lint(onnx_path: PathLike) -> list[LintViolation]:
    """``tfmq-export lint FILE.onnx``: TensorRT's explicit-quantization rules; returns the violations
    (empty: clean). The command exits 1 when there are any; the function leaves that to the caller."""
    from tfmq_export.export.lint import lint_onnx_file

    return lint_onnx_file(Path(onnx_path))


@_one_line
def sample(source: PathLike, *, prompt: str | None = None, negative_prompt: str | None = None,
           guidance_scale: float | None = None, num_images: int | None = None, seed: int = 0,
           latents: PathLike | np.ndarray | None = None, backend: str = "onnxruntime", scheduler: str | None = None,
           steps: int | None = None, float_stages: str | None = None, batch_size: int = 250,
           model: str | None = None, out: PathLike | None = None, npy: PathLike | None = None,
           quiet: bool = False, device: str = "cpu") -> np.ndarray:
    """``tfmq-export sample SOURCE``: float32 images [N, H, W, C] in [0, 1]; also writes the PNG grid
    (``out``) and the array (``npy``) when given.

    SOURCE is a folder written by ``export-pipeline`` (then ``prompt`` is required; ``latents``
    [N, C, h, w], an array or a ``.npy`` file, give N images of the prompt; ``float_stages``
    ``default``/``fp32``: the text encoder(s) and VAE decoder at the backend's default precision or
    FP32), an exported UNet ``.onnx`` (unconditional sampling, ``num_images`` default 64) or an
    artifact folder (``backend="torch"``; with ``prompt``: in the pipeline it was calibrated on).
    ``device`` (``cpu``, ``cuda``, ``cuda:N``): where the torch backend computes an artifact without ``prompt``.
    """
    from tfmq_export.workflows.sample_pipeline import is_pipeline_dir

    source = Path(source)
    for path, option in ((out, "--out"), (npy, "--npy")):
        if path is not None:
            from tfmq_export.io import check_writable

            check_writable(Path(path), option)
    if is_pipeline_dir(source) or prompt is not None:
        if device != "cpu":
            raise TfmqError("device applies to an artifact folder or .onnx sampled without a prompt; pipeline "
                            "folders and prompts run on the CPU in this version")
        images = _sample_pipeline(source, prompt, negative_prompt, guidance_scale, num_images, seed, latents,
                                  backend, {"scheduler": scheduler, "steps": steps, "float_stages": float_stages,
                                            "model": model})
    else:
        if latents is not None or float_stages is not None:
            raise TfmqError("latents and float_stages are taken by pipeline folders (export-pipeline); this source "
                            "samples a bare UNet from seed")
        images = _sample_unet(source, backend, 64 if num_images is None else num_images, seed, batch_size, model,
                              scheduler, steps, quiet, device)
    _write_outputs(images, out, npy)
    return images


def _sample_pipeline(source: Path, prompt: str | None, negative_prompt: str | None, guidance_scale: float | None,
                     num_images: int | None, seed: int, latents: Any, backend: str,
                     choices: dict[str, Any]) -> np.ndarray:
    """The checks of ``sample DIR --prompt`` (one line each, before any stage runs), then the images;
    ``choices``: scheduler, steps, float_stages, model."""
    import numpy as np

    from tfmq_export.workflows.sample_pipeline import (
        check_latents,
        check_sample_options,
        read_latents,
        sample_pipeline_images,
        source_latent_shape,
    )

    check_sample_options(source, prompt=prompt, guidance_scale=guidance_scale, latents_given=latents is not None,
                         num_images=num_images, backend=backend)
    if latents is not None:
        shape = source_latent_shape(source, backend)
        latents = (check_latents(latents, shape, "latents") if isinstance(latents, np.ndarray)
                   else read_latents(Path(latents), shape))
    return sample_pipeline_images(source, prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                  num_images=1 if num_images is None else num_images, seed=seed, latents=latents,
                                  backend=backend, **choices)


def _sample_unet(source: Path, backend: str, num_images: int, seed: int, batch_size: int, model: str | None,
                 scheduler: str | None, steps: int | None, quiet: bool, device: str = "cpu") -> np.ndarray:
    """Unconditional sampling of a UNet graph or artifact: [N, C, H, W] in [-1, 1] -> [N, H, W, C] in [0, 1]."""
    import numpy as np

    from tfmq_export.workflows.sample import runner_for, sample_with

    if num_images < 1 or batch_size < 1:
        raise TfmqError("--num-images and --batch-size must be positive")
    runner, info = runner_for(source, backend, model, scheduler, steps, device)
    images = sample_with(runner, info.spec, num_images, seed, batch_size, progress=not quiet)
    return np.ascontiguousarray((np.clip(images, -1.0, 1.0).transpose(0, 2, 3, 1) + 1.0) / 2.0, dtype=np.float32)


def _write_outputs(images: np.ndarray, out: PathLike | None, npy: PathLike | None) -> None:
    """The PNG grid of the first 64 images and the float32 array, each written atomically."""
    import numpy as np

    from tfmq_export.images import save_grid
    from tfmq_export.io import atomic_write

    if out is not None:
        save_grid(images[:64].transpose(0, 3, 1, 2) * 2.0 - 1.0, Path(out))
    if npy is not None:
        Path(npy).parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:  # a handle: numpy.save would append .npy to the temp name
                np.save(handle, images)

        atomic_write(Path(npy), write)


@_one_line
def bench(model: str = "digits", *, onnx: Sequence[PathLike] = (), variant: Sequence[str] = (),
          backends: str | None = None, pipelines: Sequence[PathLike] = (), num_images: int = 1,
          prompt: str | None = None, negative_prompt: str | None = None, guidance_scale: float | None = None,
          no_ov_default: bool = False, nncf: bool = False, nncf_engine: PathLike | None = None,
          nncf_samples: int = 4, batch_size: Sequence[int] = (1,), timed_calls: int = 10, warmup: int = 2,
          sampling_runs: int = 0, pause_ms: float = 0.0, threads: int | None = None, latent_size: int | None = None,
          seed: int = 0, json: PathLike | None = None, no_memory: bool = False, quiet: bool = False,
          batch: Sequence[int] | None = None, iters: int | None = None,
          device: str = "cpu") -> dict[str, Any]:
    """``tfmq-export bench MODEL --onnx A.onnx ...``: time the variants side by side; returns the bench JSON
    (``runs`` rows; written to ``json`` when given). ``variant``: ``BACKEND=FILE`` strings;
    ``batch_size``: the UNet batch sizes to time; ``timed_calls``: timed calls per variant and batch size.

    A pipeline folder as MODEL (or ``pipelines``, the ``--onnx-pipeline`` folders) times whole
    text-to-image pipelines stage by stage (``num_images``, ``prompt``, ... apply there).
    ``batch`` and ``iters`` are the deprecated names of ``batch_size`` and ``timed_calls``.
    """
    from tfmq_export.workflows.bench import bench_mode

    batch_size = _deprecated("batch", "batch_size", batch, batch_size)
    iters = _deprecated("iters", "timed_calls", iters, timed_calls)

    json_path = None if json is None else Path(json)
    unet_only = {"onnx": onnx, "variant": variant, "nncf": nncf, "sampling_runs": sampling_runs,
                 "latent_size": latent_size}
    is_pipeline, chosen = bench_mode(str(model), pipelines, backends, batch_size, unet_only, cli=False)
    if is_pipeline:
        if device != "cpu":
            raise TfmqError("device applies to the torch rows of a UNet bench; pipeline folders run on their backends")
        try:
            from tfmq_export.workflows.bench.pipeline import bench_pipelines_to_json
        except ImportError:
            raise TfmqError("the pipeline bench is not available in this version") from None
        folders = [Path(model), *map(Path, pipelines)]
        return bench_pipelines_to_json(folders, chosen, json_path=json_path, num_images=num_images, iters=iters,
                                       warmup=warmup, threads=threads, prompt=prompt, negative_prompt=negative_prompt,
                                       guidance_scale=guidance_scale, seed=seed, pause_ms=pause_ms,
                                       measure_memory=not no_memory, ov_default=not no_ov_default, progress=not quiet)
    from tfmq_export.workflows.bench import bench_to_json

    return bench_to_json(model, [Path(p) for p in onnx], chosen,
                         list(batch_size), iters, threads, json_path, not no_memory, latent_size,
                         variant_specs=list(variant), warmup=warmup, sampling_runs=sampling_runs, pause_ms=pause_ms,
                         seed=seed, nncf=nncf, nncf_engine=None if nncf_engine is None else Path(nncf_engine),
                         nncf_samples=nncf_samples, progress=not quiet, device=device)


def _deprecated(old: str, new: str, old_value: Any, new_value: Any) -> Any:
    """``old_value`` when the deprecated keyword was given (a ``DeprecationWarning``), else ``new_value``."""
    if old_value is None:
        return new_value
    import warnings

    warnings.warn(f"bench({old}=...) is deprecated, use {new}= (same meaning)", DeprecationWarning, stacklevel=3)
    return old_value


@_one_line
def evaluate(out: PathLike, *, model: str = "digits", methods: str | Sequence[str] = "minmax,qdiff,tfmq",
             bits: str | Sequence[str] = "w8a8,w4a8,w4a16", num_images: int | None = None, seed: int = 0,
             target: str = "tensorrt", guidance_scale: float | None = None, doc: PathLike | None = None,
             quiet: bool = False, device: str = "cpu", skip: str | Sequence[str] = (),
             calib_seeds: str | Sequence[int] | None = None) -> dict[str, Any]:
    """``tfmq-export evaluate --out DIR [--model digits-text]``: every method x bits (less ``skip``) x calibration
    seed on a bundled model; returns the results (``rows``), written to ``DIR/results.json`` (and as Markdown to
    ``doc``)."""
    from tfmq_export.workflows.evaluate_text import evaluate_model

    results, _markdown = evaluate_model(model, Path(out), _names(methods), _names(bits), num_images=num_images,
                                        seed=seed, target=target, guidance_scale=guidance_scale,
                                        doc_path=None if doc is None else Path(doc), progress=not quiet,
                                        device=device, skip=_names(skip), calib_seeds=calib_seeds)
    return results


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


@_one_line
def demo(out: PathLike = "runs/demo", *, num_images: int = 1000, quiet: bool = False, device: str = "cpu") -> str:
    """``tfmq-export demo``: the main job on the bundled model (calibrating on ``device``); returns the
    report's Markdown."""
    from tfmq_export.workflows.demo import run_demo

    return run_demo(Path(out), num_images=num_images, progress=not quiet, device=device)


@_one_line
def train_digits(out: PathLike | None = None, *, iters: int = 3000, batch_size: int = 64, lr: float = 1.5e-3,
                 seed: int = 0, classifier_epochs: int = 40, threads: int = 2,
                 skip_unet: bool = False) -> dict[str, Any]:
    """``tfmq-export train-digits``: retrain the bundled digits UNet and classifier; returns their records."""
    from tfmq_export.workflows.train_digits import train_digits_model

    return train_digits_model(None if out is None else Path(out), iters=iters, batch_size=batch_size, lr=lr, seed=seed,
                              classifier_epochs=classifier_epochs, threads=threads, skip_unet=skip_unet)


@_one_line
def train_digits_text(out: PathLike, *, vae_iters: int = 1000, unet_iters: int = 5000, batch_size: int = 64,
                      lr: float = 1e-3, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    """``tfmq-export train-digits-text --out DIR``: retrain the bundled text-to-image pipeline; returns its record."""
    from tfmq_export.models.digits_text_training import train_digits_text as train

    return train(Path(out), vae_iters=vae_iters, unet_iters=unet_iters, batch_size=batch_size, lr=lr, seed=seed,
                 threads=threads)
