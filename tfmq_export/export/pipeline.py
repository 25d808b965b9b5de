"""Export every stage of a text-to-image pipeline: ``export-pipeline ARTIFACT --out DIR``.

DIR holds (names: ``contract.py``):

- ``unet.onnx``: the calibrated UNet, the exported-UNet contract (``export/onnx_export.py``);
- ``text_encoder.onnx`` (SDXL: and ``text_encoder_2.onnx``): float, ``input_ids`` int64 [B, S] ->
  what the pipeline takes from the encoder (``models.prompts.encoder_outputs``);
- ``vae_decoder.onnx``: float, ``latents`` [B, 4, h, w] -> ``images`` [B, 3, H, W] in [0, 1]: the
  graph divides by the VAE's ``scaling_factor`` (SDXL: and applies ``latents_mean/std``),
  decodes and maps [-1, 1] to [0, 1] with clamping, as diffusers' ``output_type="np"``;
- ``tokenizer/`` (``tokenizer_2/``) and ``scheduler/``, copied from the pipeline folder;
- ``pipeline.json``: stages, files, input/output names, defaults, the artifact's fingerprint.

``--precision fp16`` (the tensorrt target's default) makes the float parts of every stage FP16 with
float32 I/O (``export.fp16``): a strongly typed TensorRT build then runs the text encoder(s) and the
VAE decoder in FP16 too, as diffusers' FP16 pipelines do, and TensorRT 11 (strong typing only) can
build them. One exception, also diffusers': SDXL's VAE decoder stays FP32 when its config says
``force_upcast`` (the SDXL VAE overflows in FP16). ``pipeline.json`` records the precision
(``float_precision``) and each stage's own (``stages.<name>.precision``).

The folder is built in a private stage beside DIR and renamed into place when complete: a
failed export leaves DIR as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tfmq_export import contract as c
from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import BASE_OPSET, build_onnx, is_large, save_onnx_atomic
from tfmq_export.io import check_writable, replace_folder
from tfmq_export.models.loading import LoadedModel
from tfmq_export.models.pipeline import PipelineParts, TextEncoderPair
from tfmq_export.models.prompts import encoder_outputs, xl_time_ids

__all__ = [
    "DEFAULT_GUIDANCE_SCALE", "VAE_DECODER_FORMULA", "VaeDecoderStage", "check_pipeline_output", "export_pipeline",
]

#: diffusers' default guidance for SD pipelines, recorded when the artifact was calibrated without prompts
DEFAULT_GUIDANCE_SCALE = 7.5
VAE_DECODER_FORMULA = "images = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1)"


class _TextEncoderStage(nn.Module):
    """input_ids -> the outputs the pipeline takes from this encoder, in ``names`` order."""

    def __init__(self, pair: TextEncoderPair, xl: bool) -> None:
        super().__init__()
        self.pair, self.encoder, self.xl = pair, pair.encoder, xl

    def names(self) -> list[str]:
        if not self.xl:
            return [c.TEXT_LAST_HIDDEN]
        return [c.TEXT_PENULTIMATE_HIDDEN, *([c.TEXT_POOLED] if self.pair.with_projection else [])]

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = encoder_outputs(self.pair, input_ids, self.xl)
        return tuple(outs[name] for name in self.names())


class VaeDecoderStage(nn.Module):
    """Denoised latents -> images in [0, 1] (section 8 of diffusers' ``__call__`` and its postprocess)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.scaling = float(cfg.scaling_factor)
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        self.has_stats = mean is not None and std is not None
        if self.has_stats:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # StableDiffusionXLPipeline with latents_mean/std: latents * std / scaling_factor + mean
        latents = latents * self.std / self.scaling + self.mean if self.has_stats else latents / self.scaling
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


def _export_module(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, outputs: list[str],
                   dynamic: dict[str, dict[int, str]], precision: str = "fp32") -> None:
    """Trace ``module`` to ``path`` (float, opset ``BASE_OPSET``), checked by onnx.checker.

    ``fp16``: traced into a temporary folder, converted (``export.fp16``, float32 I/O), then written
    (external data beside it when large)."""
    import onnx

    def trace(target: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), str(target), dynamo=False, opset_version=BASE_OPSET,
                              input_names=[input_name], output_names=outputs, dynamic_axes=dynamic,
                              do_constant_folding=True)

    if precision == "fp32":
        trace(path)
        onnx.checker.check_model(str(path))
        return
    from tfmq_export.export.fp16 import to_fp16

    with tempfile.TemporaryDirectory() as tmp:
        trace(Path(tmp) / path.name)
        graph = onnx.load(str(Path(tmp) / path.name))
    to_fp16(graph)
    save_onnx_atomic(graph, path)
    if not is_large(graph):
        onnx.checker.check_model(graph)


def _export_text_encoders(parts: PipelineParts, stage: Path, precision: str = "fp32") -> dict[str, Any]:
    described = {}
    for pair in parts.text_encoders():
        module = _TextEncoderStage(pair, parts.is_xl)
        names = module.names()
        example = torch.zeros((2, pair.max_length), dtype=torch.int64)
        dynamic = {c.TEXT_INPUT_IDS: {0: "batch"}, **{n: {0: "batch"} for n in names}}
        _export_module(module, example, stage / c.STAGE_FILES[pair.name], c.TEXT_INPUT_IDS, names, dynamic, precision)
        tokenizer = pair.name.replace("text_encoder", "tokenizer")
        shutil.copytree(parts.path / tokenizer, stage / tokenizer)
        described[pair.name] = {"file": c.STAGE_FILES[pair.name], "inputs": [c.TEXT_INPUT_IDS], "outputs": names,
                                "tokenizer": tokenizer, "max_length": pair.max_length, "precision": precision}
    return described


def vae_precision(parts: PipelineParts, precision: str) -> str:
    """The VAE decoder's float type: ``precision``, but FP32 where diffusers upcasts (SDXL, ``force_upcast``)."""
    if precision == "fp16" and parts.is_xl and parts.vae_config().get("force_upcast", True):
        return "fp32"
    return precision


def _export_vae_decoder(parts: PipelineParts, latent_shape: tuple[int, ...], stage: Path,
                        precision: str = "fp32") -> dict[str, Any]:
    precision = vae_precision(parts, precision)
    module = VaeDecoderStage(parts.vae())
    example = torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(0))
    dynamic = {c.VAE_INPUT_LATENTS: {0: "batch", 2: "height", 3: "width"},
               c.VAE_OUTPUT_IMAGES: {0: "batch", 2: "image_height", 3: "image_width"}}
    _export_module(module, example, stage / c.STAGE_FILES[c.STAGE_VAE_DECODER], c.VAE_INPUT_LATENTS,
                   [c.VAE_OUTPUT_IMAGES], dynamic, precision)
    return {"file": c.STAGE_FILES[c.STAGE_VAE_DECODER], "inputs": [c.VAE_INPUT_LATENTS],
            "outputs": [c.VAE_OUTPUT_IMAGES], "includes": VAE_DECODER_FORMULA, "precision": precision}


def _describe(model: LoadedModel, artifact: CalibrationArtifact, target: str, stages: dict[str, Any],
              precision: str) -> dict:
    parts = model.pipeline
    assert parts is not None
    settings = artifact.settings or {}
    latent_shape = list(model.sample_shape)
    described: dict[str, Any] = {
        c.PJ_FORMAT: c.PIPELINE_FORMAT,
        c.PJ_CLASS: parts.class_name,
        c.PJ_STAGES: stages,
        c.PJ_TOKENIZERS: [stages[name]["tokenizer"] for name in parts.encoder_names],
        c.PJ_SCHEDULER: "scheduler",
        c.PJ_SAMPLER: settings.get("scheduler"),
        c.PJ_GUIDANCE: float(settings.get("guidance_scale") or DEFAULT_GUIDANCE_SCALE),
        c.PJ_NEGATIVE: settings.get("negative_prompt"),
        c.PJ_STEPS: len(artifact.timesteps),
        c.PJ_TIMESTEPS: list(artifact.timesteps),
        c.PJ_LATENT_SHAPE: latent_shape,
        c.PJ_VAE_SCALE: parts.vae_scale_factor(),
        c.PJ_SAMPLE_SIZE: latent_shape[-1] * parts.vae_scale_factor(),
        c.PJ_SCALING: float(parts.vae_config().get("scaling_factor", 0.18215)),
        c.PJ_VAE_INCLUDES: VAE_DECODER_FORMULA,
        c.PJ_FINGERPRINT: artifact.model_fingerprint,
        c.PJ_PRECISION: c.precision_label(artifact.wbits, artifact.abits, precision),
        c.PJ_TARGET: target,
    }
    if precision != "fp32":  # absent = fp32, as in folders written before --precision
        described[c.PJ_FLOAT_PRECISION] = precision
    if parts.is_xl:
        described[c.PJ_TIME_IDS] = xl_time_ids(parts, latent_shape[-1])[0].tolist()
        described[c.PJ_FORCE_ZEROS] = parts.force_zeros_for_empty_prompt()
    return described


def check_pipeline_output(out_dir: Path) -> None:
    """Before any work: DIR must be writable; an existing DIR must be empty or an earlier pipeline export."""
    out_dir = Path(out_dir)
    check_writable(out_dir, "--out", folder=True)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / c.PIPELINE_JSON).is_file():
        raise TfmqError(f"--out {out_dir} holds files but no {c.PIPELINE_JSON}; refusing to replace it "
                        "(remove it or choose another folder)")


def export_pipeline(model: LoadedModel, artifact: CalibrationArtifact, out_dir: Path,
                    target: str = "onnxruntime", timesteps: str = "sampler", precision: str = "fp32") -> Path:
    """Write every stage of ``model``'s pipeline, its UNet quantized as ``artifact`` says, to ``out_dir``.

    ``timesteps``: the UNet's table rows (``export-onnx --timesteps``): ``sampler`` (the calibrated
    schedule) or ``all`` (every training timestep: ``sample --steps N`` then runs any step count).
    ``precision``: the float parts' type of every stage (module docstring).
    """
    from tfmq_export.io import staged_dir

    out_dir = Path(out_dir)
    parts = model.pipeline
    if parts is None:
        raise TfmqError(f"export-pipeline needs a text-to-image pipeline folder; {model.name} has no text encoder "
                        "(use export-onnx for a UNet)")
    check_pipeline_output(out_dir)
    # refuses another model's artifact before any stage is written
    graph = build_onnx(model, artifact, target, timesteps=timesteps, precision=precision)
    rows = json.loads({p.key: p.value for p in graph.metadata_props}[c.META_TIMESTEPS])
    with staged_dir(out_dir) as stage:
        folder = stage / out_dir.name
        folder.mkdir()
        save_onnx_atomic(graph, folder / c.STAGE_FILES[c.STAGE_UNET])
        inputs = [i.name for i in graph.graph.input]
        stages: dict[str, Any] = {c.STAGE_UNET: {"file": c.STAGE_FILES[c.STAGE_UNET], "inputs": inputs,
                                                 "outputs": [c.OUTPUT_NOISE_PRED], "precision": precision}}
        del graph
        stages.update(_export_text_encoders(parts, folder, precision))
        stages[c.STAGE_VAE_DECODER] = _export_vae_decoder(parts, model.sample_shape, folder, precision)
        shutil.copytree(parts.path / "scheduler", folder / "scheduler")
        described = {**_describe(model, artifact, target, stages, precision), c.PJ_TIMESTEPS: rows}
        (folder / c.PIPELINE_JSON).write_text(json.dumps(described, indent=2) + "\n")
        replace_folder(folder, out_dir)
    return out_dir
