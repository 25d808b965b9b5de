"""``sample DIR --prompt TEXT``: text-to-image sampling through an exported pipeline folder.

tokenizer -> text_encoder.onnx -> UNet x steps with classifier-free guidance (a batch of 2N:
unconditional half first, as diffusers) -> vae_decoder.onnx -> images in [0, 1]. Tokenization,
the combination of encoder outputs and the guided loop are the ones calibration uses
(``models.prompts``, ``models.guidance``); only the stage calls differ.

Per backend (``backends.stages``): onnxruntime and OpenVINO run the ``.onnx`` stages or the
engines ``build-engine DIR`` built, TensorRT only its built engines. The UNet runs at the precision
it was exported at (a Q/DQ UNet's float parts in f32, as calibrated); the float stages (text
encoder(s), VAE decoder) at ``--float-stages``: ``default`` is what the backend gives without
asking (OpenVINO: its default inference precision, bf16 on CPUs with AMX; TensorRT: FP16),
``fp32`` forces FP32, which the parity contract with diffusers needs. ``--backend torch`` samples
an artifact folder instead (``sample_torch_pipeline``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfmq_export import contract as c
from tfmq_export.backends.stages import StageRunner, float_stage_precision
from tfmq_export.errors import TfmqError
from tfmq_export.models.guidance import GuidedConditions, guided_sample, scheduler_rows
from tfmq_export.models.prompts import combine, tokenize

__all__ = [
    "ExportedPipeline", "is_pipeline_dir", "pipeline_images", "read_latents", "sample_pipeline_cli",
    "sample_pipeline_images", "sample_pipeline_to_files", "stage_precisions",
]


def is_pipeline_dir(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``export-pipeline``."""
    return Path(path).is_dir() and (Path(path) / c.PIPELINE_JSON).is_file()


@dataclass
class ExportedPipeline:
    """An ``export-pipeline`` folder: its ``pipeline.json`` and the paths of its stages."""

    path: Path
    described: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> ExportedPipeline:
        path = Path(path)
        try:
            described = json.loads((path / c.PIPELINE_JSON).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TfmqError(f"cannot read {path / c.PIPELINE_JSON}: {exc}") from exc
        if not isinstance(described, dict) or described.get(c.PJ_FORMAT) != c.PIPELINE_FORMAT:
            raise TfmqError(f"{path / c.PIPELINE_JSON} is not a format-{c.PIPELINE_FORMAT} pipeline description")
        for stage, entry in described[c.PJ_STAGES].items():
            if not (path / entry["file"]).is_file():
                raise TfmqError(f"{path} is missing its {stage} stage ({entry['file']}); export the pipeline again")
        return cls(path, described)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.described[c.PJ_LATENT_SHAPE])

    def stage_path(self, stage: str, backend: str | None = None) -> Path:
        """The stage's file: the engine ``build-engine DIR --backend`` built for it, else the .onnx."""
        engine = self.described.get(c.PJ_ENGINES, {}).get(backend or "", {}).get(stage)
        if engine and (self.path / engine).is_file():
            return self.path / engine
        return self.path / self.described[c.PJ_STAGES][stage]["file"]

    def built_for(self, backend: str) -> bool:
        """Whether ``build-engine DIR --backend`` built every stage's engine (and they are there)."""
        engines = self.described.get(c.PJ_ENGINES, {}).get(backend) or {}
        return bool(engines) and all((self.path / engines.get(s, "")).is_file() for s in self.described[c.PJ_STAGES])

    def encoder_stages(self) -> list[str]:
        return [s for s in (c.STAGE_TEXT_ENCODER, c.STAGE_TEXT_ENCODER_2) if s in self.described[c.PJ_STAGES]]

    def scheduler_config(self) -> dict[str, Any]:
        return json.loads((self.path / self.described[c.PJ_SCHEDULER] / "scheduler_config.json").read_text())


def read_latents(path: Path, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """--latents: float [N, C, h, w] from a ``numpy.save`` file (never unpickled), finite."""
    try:
        array = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TfmqError(f"--latents {path} is not a readable .npy array (numpy.save format)") from exc
    return check_latents(array, latent_shape, f"--latents {path}")


def check_latents(array: Any, latent_shape: tuple[int, ...], source: str) -> torch.Tensor:
    """Latents from a file or memory: real floats [N >= 1, C, h, w] of the pipeline's shape, finite."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise TfmqError(f"{source} must hold real float latents")
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(latent_shape) or array.shape[0] < 1:
        expected = ", ".join(map(str, latent_shape))
        raise TfmqError(f"{source} holds shape {list(array.shape)}; expected [N, {expected}]")
    if not np.isfinite(array).all():
        raise TfmqError(f"{source} holds non-finite values (NaN/Inf)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def check_sample_options(path: Path, *, prompt: str | None, guidance_scale: float | None, latents_given: bool,
                         num_images: int | None, backend: str = "onnxruntime") -> None:
    """The checks of ``sample DIR --prompt`` (CLI and API alike), one line each, before any stage runs."""
    if backend == "torch":
        from tfmq_export.workflows.sample_torch_pipeline import check_torch_source

        check_torch_source(path)
    elif not is_pipeline_dir(path):
        raise TfmqError(f"--prompt needs a pipeline folder written by export-pipeline; {path} has no {c.PIPELINE_JSON}")
    if prompt is None or not prompt.strip():
        raise TfmqError(f"{path} is a text-to-image pipeline: give --prompt TEXT")
    if guidance_scale is not None and not guidance_scale >= 1.0:
        raise TfmqError(f"--guidance-scale {guidance_scale} must be at least 1 (1 = no guidance)")
    if latents_given and num_images is not None:
        raise TfmqError("give --latents or --num-images, not both (the latents decide the number of images)")


def requested_scheduler(path: Path, scheduler: str | None, steps: int | None) -> Any:
    """The scheduler asked for by ``--scheduler``/``--steps`` (the export's own for what is not given), or None."""
    if scheduler is None and steps is None:
        return None
    from tfmq_export.sampling import make_scheduler

    pipe = ExportedPipeline.read(path)
    name = scheduler or pipe.described.get(c.PJ_SAMPLER)
    return make_scheduler(name, pipe.scheduler_config(), steps or int(pipe.described[c.PJ_STEPS]))


def stage_precisions(pipe: ExportedPipeline, backend: str, float_stages: str | None = None) -> dict[str, str]:
    """stage -> the precision label it runs at on ``backend``: the UNet at its export precision, the
    float stages per ``float_stages`` (None: as ``build-engine`` recorded for its engines, else
    ``default``). A TensorRT engine's precision is built in: another one is refused."""
    built = pipe.described.get(c.PJ_ENGINE_PRECISIONS, {}).get(backend, {}) if pipe.built_for(backend) else {}
    recorded = built.get(c.STAGE_VAE_DECODER)
    if float_stages is None:
        precision = recorded or float_stage_precision(backend)
    else:
        precision = float_stage_precision(backend, float_stages)
    if backend == "tensorrt" and recorded and recorded != precision:
        raise TfmqError(f"the TensorRT engines of {pipe.path} run the float stages in {recorded}; rebuild them with "
                        f"build-engine DIR --backend tensorrt --float-stages {float_stages}")
    return {stage: pipe.described[c.PJ_PRECISION] if stage == c.STAGE_UNET else precision
            for stage in pipe.described[c.PJ_STAGES]}


def check_stage_backend(pipe: ExportedPipeline, backend: str) -> None:
    """TensorRT runs built engines only, and only where it can run at all: one line otherwise."""
    if backend != "tensorrt":
        return
    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

    reason = check_tensorrt_available()
    if reason is not None:
        raise TfmqError(f"cannot sample {pipe.path} with TensorRT: {reason}")
    if not pipe.built_for(backend):
        raise TfmqError(f"{pipe.path} has no TensorRT engines; build them first: tfmq-export build-engine "
                        f"{pipe.path} --backend tensorrt")


def _encode(pipe: ExportedPipeline, runners: dict[str, StageRunner], prompt: str, negative: str | None,
            guidance_scale: float) -> GuidedConditions:
    """Both halves' conditions of one prompt through the exported text encoder(s)."""
    from transformers import CLIPTokenizer

    xl = c.STAGE_TEXT_ENCODER_2 in pipe.described[c.PJ_STAGES]
    time_ids = torch.tensor([pipe.described[c.PJ_TIME_IDS]], dtype=torch.float32) if xl else None
    halves = []
    for text in (prompt, negative or ""):
        outs = []
        for stage in pipe.encoder_stages():
            tokenizer = CLIPTokenizer.from_pretrained(str(pipe.path / pipe.described[c.PJ_STAGES][stage]["tokenizer"]))
            out = runners[stage].run({c.TEXT_INPUT_IDS: tokenize(tokenizer, [text])})
            outs.append({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in out.items()})
        halves.append(outs)
    zeros = xl and negative is None and bool(pipe.described.get(c.PJ_FORCE_ZEROS, True))
    return GuidedConditions(combine(halves[0], time_ids), combine(halves[1], time_ids, zeros=zeros),
                            float(guidance_scale), (prompt,), negative)


def pipeline_images(path: Path, prompt: str, *, negative_prompt: str | None = None,
                    guidance_scale: float | None = None, num_images: int = 1, seed: int = 0,
                    latents: torch.Tensor | None = None, backend: str = "onnxruntime",
                    threads: int | None = None, scheduler: Any = None,
                    float_stages: str | None = None) -> np.ndarray:
    """float32 images [N, H, W, 3] in [0, 1] of ``prompt`` from an exported pipeline folder.

    ``latents`` [N, C, h, w] (else noise from ``seed``) give N images of the prompt, diffusers'
    ``num_images_per_prompt=N`` with those latents. ``scheduler``: a diffusers scheduler set to
    its steps (default: the folder's, ``default_scheduler``); its timesteps must have table rows.
    ``float_stages``: ``default`` or ``fp32`` for the text encoder(s) and VAE decoder (None: as
    ``build-engine`` recorded, else ``default``; the parity contract needs ``fp32`` on OpenVINO).
    """
    from tfmq_export.sampling import initial_noise

    pipe = ExportedPipeline.read(path)
    check_stage_backend(pipe, backend)
    precisions = stage_precisions(pipe, backend, float_stages)
    guidance = pipe.described[c.PJ_GUIDANCE] if guidance_scale is None else guidance_scale
    if latents is None:
        if num_images < 1:
            raise TfmqError(f"--num-images {num_images} must be positive")
        latents = initial_noise(num_images, pipe.latent_shape, seed)
    if scheduler is None:  # the sampler the UNet was calibrated with, at its step count
        from tfmq_export.sampling import make_scheduler

        scheduler = make_scheduler(pipe.described.get(c.PJ_SAMPLER), pipe.scheduler_config(),
                                   int(pipe.described[c.PJ_STEPS]))
    runners = {stage: StageRunner(backend, pipe.stage_path(stage, backend), precisions[stage], threads)
               for stage in pipe.encoder_stages()}
    for runner in runners.values():
        runner.__enter__()
    try:
        conditions = _encode(pipe, runners, prompt, negative_prompt, guidance).repeated(latents.shape[0])
    finally:
        for runner in runners.values():
            runner.__exit__()
    with StageRunner(backend, pipe.stage_path(c.STAGE_UNET, backend), precisions[c.STAGE_UNET], threads) as unet:

        def denoise(x: torch.Tensor, rows: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
            named = {c.INPUT_SAMPLE: x.numpy(), c.INPUT_STEP_INDEX: rows.numpy(),
                     **{k: v.numpy() for k, v in feed.items()}}
            return torch.from_numpy(unet.run(named)[c.OUTPUT_NOISE_PRED].astype(np.float32))

        rows = scheduler_rows(pipe.described[c.PJ_TIMESTEPS], scheduler, str(pipe.stage_path(c.STAGE_UNET)))
        final = guided_sample(denoise, scheduler, latents, conditions, rows)
    vae_precision = precisions[c.STAGE_VAE_DECODER]
    with StageRunner(backend, pipe.stage_path(c.STAGE_VAE_DECODER, backend), vae_precision, threads) as vae:
        images = vae.run({c.VAE_INPUT_LATENTS: final.numpy().astype(np.float32)})[c.VAE_OUTPUT_IMAGES]
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1), dtype=np.float32)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: numpy.save would append .npy to the temp name
        np.save(handle, array)


def source_latent_shape(path: Path, backend: str) -> tuple[int, ...]:
    """The latent shape [C, h, w] of an export-pipeline folder (or, ``--backend torch``, an artifact's)."""
    if backend == "torch":
        from tfmq_export.workflows.sample_torch_pipeline import TorchPipelineSource

        return TorchPipelineSource.read(path).latent_shape
    return ExportedPipeline.read(path).latent_shape


def sample_pipeline_images(path: Path, prompt: str, *, backend: str = "onnxruntime", scheduler: str | None = None,
                           steps: int | None = None, float_stages: str | None = None, model: str | None = None,
                           **options: Any) -> np.ndarray:
    """``pipeline_images`` (or, ``backend="torch"``, ``torch_pipeline_images`` of an artifact) with the
    sampler asked for by name (``--scheduler``/``--steps``); ``options`` as ``pipeline_images``."""
    if backend == "torch":
        from tfmq_export.workflows.sample_torch_pipeline import torch_pipeline_images

        float_stage_precision(backend, float_stages or "default")  # a bad name stops here; torch's are FP32 either way
        return torch_pipeline_images(path, prompt, scheduler=scheduler, steps=steps, model=model, **options)
    if model is not None:
        raise TfmqError("--model goes with --backend torch (an artifact's pipeline folder); an export-pipeline "
                        "folder holds its own stages")
    sampler = requested_scheduler(path, scheduler, steps)
    return pipeline_images(path, prompt, backend=backend, scheduler=sampler, float_stages=float_stages, **options)


def _summary_precisions(path: Path, backend: str, float_stages: str | None) -> tuple[str, dict[str, str]]:
    """The UNet's precision label and every stage's, for the summary line."""
    if backend == "torch":
        from tfmq_export.workflows.sample_torch_pipeline import TorchPipelineSource

        source = TorchPipelineSource.read(path)
        encoders = [s for s in (c.STAGE_TEXT_ENCODER, c.STAGE_TEXT_ENCODER_2) if (source.model_dir / s).is_dir()]
        return source.precision, {**dict.fromkeys(encoders, "fp32"), c.STAGE_UNET: source.precision,
                                  c.STAGE_VAE_DECODER: "fp32"}
    pipe = ExportedPipeline.read(path)
    return pipe.described[c.PJ_PRECISION], stage_precisions(pipe, backend, float_stages)


def sample_pipeline_to_files(path: Path, prompt: str, out_path: Path, *, npy_path: Path | None = None,
                             latents_path: Path | None = None, **options: Any) -> dict[str, Any]:
    """Sample, write the PNG grid (and ``--npy`` float32 [N, H, W, 3]); returns a summary."""
    from tfmq_export.images import save_grid
    from tfmq_export.io import atomic_write, check_writable

    check_writable(out_path, "--out")
    if npy_path is not None:
        check_writable(npy_path, "--npy")
    backend = options.get("backend", "onnxruntime")
    precision, precisions = _summary_precisions(path, backend, options.get("float_stages"))
    latents = None if latents_path is None else read_latents(latents_path, source_latent_shape(path, backend))
    start = time.perf_counter()
    images = sample_pipeline_images(path, prompt, latents=latents, **options)
    seconds = time.perf_counter() - start
    save_grid(images[:64].transpose(0, 3, 1, 2) * 2.0 - 1.0, out_path)
    if npy_path is not None:
        Path(npy_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(npy_path), lambda tmp: _save_npy(tmp, images))
    return {"source": str(path), "prompt": prompt, "backend": backend, "precision": precision,
            "stage_precisions": precisions, "num_images": int(images.shape[0]), "seconds": round(seconds, 3),
            "grid": str(out_path), "npy": None if npy_path is None else str(npy_path)}


def sample_pipeline_cli(path: Path, out_path: Path, *, prompt: str | None, negative_prompt: str | None,
                        guidance_scale: float | None, num_images: int | None, seed: int,
                        latents_path: Path | None, npy_path: Path | None, backend: str,
                        scheduler: str | None = None, steps: int | None = None, float_stages: str | None = None,
                        model: str | None = None) -> dict[str, Any]:
    """``sample DIR --prompt ...``: every option checked (one line each) before any stage runs."""
    check_sample_options(path, prompt=prompt, guidance_scale=guidance_scale, latents_given=latents_path is not None,
                         num_images=num_images, backend=backend)
    return sample_pipeline_to_files(path, prompt, out_path, npy_path=npy_path, latents_path=latents_path,
                                    negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                    num_images=1 if num_images is None else num_images, seed=seed, backend=backend,
                                    scheduler=scheduler, steps=steps, float_stages=float_stages, model=model)
