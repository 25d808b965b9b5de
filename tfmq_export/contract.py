"""The contracts users, scripts and outside checks rely on: the one place they are spelled.

The README ("Commands") and docs/DESIGN.md ("Where each contract lives") are the prose; this
module is the code. Graph I/O names, the ``tfmq.*`` metadata keys (written by the exporter, read
by sampling, bench, lint and engine manifests), precision labels and backend names live here and
nowhere else, so a rename is one edit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tfmq_export.errors import TfmqError

__all__ = [
    "ATTENTION_MODES",
    "BACKENDS",
    "DEFAULT_ATTENTION",
    "DEFAULT_FLOAT_PRECISION",
    "EXPORT_TARGETS",
    "FLOAT_PRECISIONS",
    "FLOAT_STAGES",
    "INPUT_CONDITIONS",
    "INPUT_SAMPLE",
    "INPUT_STEP_INDEX",
    "INPUT_TEXT_EMBEDS",
    "INPUT_TIME_IDS",
    "META_ABITS",
    "META_ATTENTION",
    "META_FINGERPRINT",
    "META_FLOAT_PRECISION",
    "META_METHOD",
    "META_PREFIX",
    "META_SAMPLE_SHAPE",
    "META_SCHEDULER",
    "META_SCHEDULER_CONFIG",
    "META_STEPS",
    "META_TARGET",
    "META_TEMPORAL_TABLE",
    "META_TIMESTEPS",
    "META_VERSION",
    "META_WBITS",
    "OUTPUT_NOISE_PRED",
    "OV_DEFAULT",
    "PIPELINE_FORMAT",
    "PIPELINE_JSON",
    "PJ_CLASS",
    "PJ_ENGINES",
    "PJ_ENGINE_PRECISIONS",
    "PJ_FINGERPRINT",
    "PJ_FLOAT_PRECISION",
    "PJ_FORCE_ZEROS",
    "PJ_FORMAT",
    "PJ_GUIDANCE",
    "PJ_LATENT_SHAPE",
    "PJ_NEGATIVE",
    "PJ_PRECISION",
    "PJ_SAMPLER",
    "PJ_SAMPLE_SIZE",
    "PJ_SCALING",
    "PJ_SCHEDULER",
    "PJ_STAGES",
    "PJ_STEPS",
    "PJ_TARGET",
    "PJ_TIMESTEPS",
    "PJ_TIME_IDS",
    "PJ_TOKENIZERS",
    "PJ_VAE_INCLUDES",
    "PJ_VAE_SCALE",
    "PRECISIONS",
    "STAGE_FILES",
    "STAGE_TEXT_ENCODER",
    "STAGE_TEXT_ENCODER_2",
    "STAGE_UNET",
    "STAGE_VAE_DECODER",
    "TABLE_KINDS",
    "TEXT_INPUT_IDS",
    "TEXT_LAST_HIDDEN",
    "TEXT_PENULTIMATE_HIDDEN",
    "TEXT_POOLED",
    "UNET_INPUTS",
    "VAE_INPUT_LATENTS",
    "VAE_OUTPUT_IMAGES",
    "GraphMetadata",
    "default_attention",
    "default_float_precision",
    "parse_metadata",
    "precision_label",
]

# --- the exported UNet's inputs and output -------------------------------------------------------
INPUT_SAMPLE = "sample"
"""float32 [B, C, H, W]: the noisy latent x_t."""
INPUT_STEP_INDEX = "step_index"
"""int64 [B]: the row of the temporal table (0 = the sampler's first step)."""
INPUT_CONDITIONS = "encoder_hidden_states"
"""float32 [B, S, D]: text conditions of a conditional UNet."""
UNET_INPUTS = (INPUT_SAMPLE, INPUT_STEP_INDEX, INPUT_CONDITIONS)
OUTPUT_NOISE_PRED = "noise_pred"
INPUT_TEXT_EMBEDS = "text_embeds"
"""float32 [B, P]: SDXL's pooled text embedding (``text_time`` added conditioning)."""
INPUT_TIME_IDS = "time_ids"
"""float32 [B, 6]: SDXL's original size, crop and target size (``text_time`` added conditioning)."""

# --- an exported pipeline folder (``export-pipeline``) ---------------------------------------------
PIPELINE_JSON = "pipeline.json"
PIPELINE_FORMAT = 1
STAGE_UNET = "unet"
STAGE_TEXT_ENCODER = "text_encoder"
STAGE_TEXT_ENCODER_2 = "text_encoder_2"
STAGE_VAE_DECODER = "vae_decoder"
#: stage -> its file in the folder
STAGE_FILES = {STAGE_UNET: "unet.onnx", STAGE_TEXT_ENCODER: "text_encoder.onnx",
               STAGE_TEXT_ENCODER_2: "text_encoder_2.onnx", STAGE_VAE_DECODER: "vae_decoder.onnx"}
TEXT_INPUT_IDS = "input_ids"
"""int64 [B, S]: token ids, padded to the tokenizer's model_max_length."""
TEXT_LAST_HIDDEN = "last_hidden_state"
"""float32 [B, S, D]: SD 1.x / 2.x text encoder output (the UNet's encoder_hidden_states)."""
TEXT_PENULTIMATE_HIDDEN = "penultimate_hidden_state"
"""float32 [B, S, D]: SDXL takes the penultimate layer of both encoders (concatenated)."""
TEXT_POOLED = "text_embeds"
"""float32 [B, P]: SDXL's second encoder's projected pooled output."""
VAE_INPUT_LATENTS = "latents"
"""float32 [B, 4, h, w]: denoised latents as the sampler leaves them (the graph divides by scaling_factor)."""
VAE_OUTPUT_IMAGES = "images"
"""float32 [B, 3, H, W] in [0, 1]: (decode(latents / scaling_factor) / 2 + 0.5) clamped, as diffusers' np output."""
#: pipeline.json keys
PJ_FORMAT = "format"
PJ_CLASS = "pipeline_class"
PJ_STAGES = "stages"
PJ_TOKENIZERS = "tokenizers"
PJ_SCHEDULER = "scheduler"
"""The folder of the pipeline's scheduler config (copied from the pipeline folder)."""
PJ_SAMPLER = "sampler"
"""The sampler the UNet was calibrated with (``config.SCHEDULER_NAMES``); ``sample``'s default."""
PJ_GUIDANCE = "guidance_scale"
PJ_NEGATIVE = "negative_prompt"
PJ_STEPS = "num_inference_steps"
PJ_TIMESTEPS = "timesteps"
PJ_SAMPLE_SIZE = "sample_size"
PJ_LATENT_SHAPE = "latent_shape"
PJ_VAE_SCALE = "vae_scale_factor"
PJ_SCALING = "scaling_factor"
PJ_VAE_INCLUDES = "vae_decoder_includes"
PJ_FINGERPRINT = "model_fingerprint"
PJ_PRECISION = "precision"
PJ_TARGET = "target"
PJ_FLOAT_PRECISION = "float_precision"
"""``fp32`` / ``fp16``: the type of the float parts of the stages (``export-pipeline --precision``);
each stage's own entry carries it too (an SDXL VAE decoder stays fp32, see ``export.pipeline``)."""
PJ_TIME_IDS = "time_ids"
PJ_FORCE_ZEROS = "force_zeros_for_empty_prompt"
PJ_ENGINES = "engines"
"""``build-engine DIR``: backend -> stage -> engine file, relative to the pipeline folder."""
PJ_ENGINE_PRECISIONS = "engine_precisions"
"""``build-engine DIR``: backend -> stage -> the precision label that stage's engine runs at."""
FLOAT_STAGES = ("default", "fp32")
"""``--float-stages``: the text encoder(s) and VAE decoder at the backend's default precision
(OpenVINO: ``ov-default``, TensorRT: ``fp16``, onnxruntime: ``fp32``) or forced to ``fp32``."""

# --- metadata_props of an exported graph ---------------------------------------------------------
META_PREFIX = "tfmq."
META_SAMPLE_SHAPE = "tfmq.sample_shape"
META_TIMESTEPS = "tfmq.timesteps"
META_WBITS = "tfmq.wbits"
META_ABITS = "tfmq.abits"
META_METHOD = "tfmq.method"
META_VERSION = "tfmq.version"
META_TARGET = "tfmq.target"
META_FINGERPRINT = "tfmq.model_fingerprint"
META_TEMPORAL_TABLE = "tfmq.temporal_table"
META_SCHEDULER_CONFIG = "tfmq.scheduler_config"
META_SCHEDULER = "tfmq.scheduler"
"""The scheduler the graph was calibrated with (``config.SCHEDULER_NAMES``); sampling's default."""
META_STEPS = "tfmq.steps"
"""The calibrated step count; sampling's default."""
META_FLOAT_PRECISION = "tfmq.float_precision"
"""``fp16`` when the float parts (weights of float layers, activations, Q/DQ scales, tables) are
FP16 (``export-onnx --precision fp16``); absent in FP32 graphs, which are written as before the
option existed (the I/O stays float32 either way: the contract's types, Casts at the edges)."""
META_ATTENTION = "tfmq.attention"
"""``int8`` when the attention score MatMul has int8 query and key (``export-onnx --attention``);
absent when it is float."""

# --- labels --------------------------------------------------------------------------------------
EXPORT_TARGETS = ("tensorrt", "onnxruntime", "openvino")
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
OV_DEFAULT = "ov-default"
"""The FP32 graph compiled with OpenVINO's default inference precision (bf16 on CPUs with AMX)."""
PRECISIONS = ("fp32", "fp16", "w8a8", "w4a8", "w4a16", "nncf-int8", OV_DEFAULT)
"""Bench labels; an FP16 export of a quantized artifact is ``w8a8-fp16`` etc. (``precision_label``)."""
#: ``export-onnx`` / ``export-pipeline --precision``: the type of the graph's float parts.
FLOAT_PRECISIONS = ("fp16", "fp32")
#: the ``--precision`` each export target gets by default: TensorRT builds the graph strongly typed, so
#: its float parts run in the type the graph declares (FP16 is what peers compare INT8 engines with);
#: onnxruntime's CPU kernels are FP32 (and fuse Q/DQ into int8 kernels only around FP32 tensors);
#: OpenVINO does not read FP16 Q/DQ graphs (``backends.openvino.ir.fp16_hint``).
DEFAULT_FLOAT_PRECISION = {"tensorrt": "fp16", "onnxruntime": "fp32", "openvino": "fp32"}
#: ``export-onnx --timesteps``: a row per sampler call, or a row per training timestep.
TABLE_KINDS = ("sampler", "all")
#: ``export-onnx --attention``: whether the attention score MatMul (query x key) gets int8 Q/DQ on
#: its inputs (calibrated from the artifact's query / key ranges and simulated by
#: ``quant.attention``), or stays float.
ATTENTION_MODES = ("int8", "float")
#: the ``--attention`` each target gets by default: OpenVINO runs int8 query / key as an i8 MHA
#: kernel (faster, docs/BENCHMARKS.md); onnxruntime ran quantized attention matmuls slower, and
#: TensorRT's is not measured here.
DEFAULT_ATTENTION = {"tensorrt": "float", "onnxruntime": "float", "openvino": "int8"}


def _per_target(option: str, value: str | None, target: str, defaults: dict[str, str], choices: tuple[str, ...]) -> str:
    """``value`` of ``--option`` checked against ``choices``, or ``target``'s entry of ``defaults`` when None."""
    if value is None:
        if target not in defaults:
            raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(EXPORT_TARGETS)})")
        return defaults[target]
    if value not in choices:
        raise TfmqError(f"unknown --{option} {value!r} (choose {' or '.join(choices)})")
    return value


def default_attention(target: str, attention: str | None = None) -> str:
    """``attention`` checked, or the target's default (``DEFAULT_ATTENTION``) when None."""
    return _per_target("attention", attention, target, DEFAULT_ATTENTION, ATTENTION_MODES)


def precision_label(wbits: int, abits: int, float_precision: str = "fp32") -> str:
    """Bench/CLI name of a bit setting: fp32, w8a8, w4a8, w4a16 (16 bits = float); an FP16 export
    is ``fp16`` or ``w8a8-fp16`` (INT8 layers, FP16 float parts)."""
    if wbits >= 16 and abits >= 16:
        return float_precision or "fp32"
    return f"w{wbits}a{abits}" + ("" if float_precision in ("", "fp32") else f"-{float_precision}")


def default_float_precision(target: str, precision: str | None = None) -> str:
    """``precision`` checked, or the target's default (``DEFAULT_FLOAT_PRECISION``) when None."""
    return _per_target("precision", precision, target, DEFAULT_FLOAT_PRECISION, FLOAT_PRECISIONS)


@dataclass(frozen=True)
class GraphMetadata:
    """The ``tfmq.*`` metadata of an exported graph, typed."""

    timesteps: list[int | float]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    wbits: int
    abits: int
    method: str = ""
    target: str = ""
    fingerprint: str = ""
    temporal_table: str = ""
    version: str = ""
    scheduler: str = ""
    steps: int = 0
    float_precision: str = "fp32"
    attention: str = "float"

    @property
    def precision(self) -> str:
        return precision_label(self.wbits, self.abits, self.float_precision)

    def to_props(self) -> dict[str, str]:
        """Key/value strings for ``ModelProto.metadata_props`` (the order the exporter writes)."""
        return {
            META_SAMPLE_SHAPE: json.dumps(list(self.sample_shape or ())),
            META_TIMESTEPS: json.dumps(self.timesteps),
            META_WBITS: str(self.wbits),
            META_ABITS: str(self.abits),
            META_METHOD: self.method,
            META_VERSION: self.version,
            META_TARGET: self.target,
            META_FINGERPRINT: self.fingerprint,
            META_TEMPORAL_TABLE: self.temporal_table,
            META_SCHEDULER_CONFIG: json.dumps(self.scheduler_config, sort_keys=True),
            META_SCHEDULER: self.scheduler,
            META_STEPS: str(self.steps),
            # absent = fp32: an FP32 export stays byte-identical to those written before --precision
            **({META_FLOAT_PRECISION: self.float_precision} if self.float_precision != "fp32" else {}),
            **({META_ATTENTION: self.attention} if self.attention != "float" else {}),
        }


def parse_metadata(meta: dict[str, str], source: str) -> GraphMetadata:
    """Typed metadata from the props of a graph (or an engine manifest's ``source_metadata``).

    ``source`` names the file in the one-line error when the props were not written by
    tfmq-export or are damaged.
    """
    missing = [k for k in (META_TIMESTEPS, META_SCHEDULER_CONFIG, META_WBITS, META_ABITS) if k not in meta]
    if missing:
        raise TfmqError(f"{source} was not exported by tfmq-export (no {', '.join(missing)} metadata)")
    try:
        timesteps = json.loads(meta[META_TIMESTEPS])
        scheduler_config = json.loads(meta[META_SCHEDULER_CONFIG])
        shape = json.loads(meta[META_SAMPLE_SHAPE]) if META_SAMPLE_SHAPE in meta else None
        wbits, abits = int(meta[META_WBITS]), int(meta[META_ABITS])
        steps = int(meta.get(META_STEPS) or 0)
    except (TypeError, ValueError) as exc:
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({exc})") from exc
    if not isinstance(timesteps, list) or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in timesteps
    ):
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_TIMESTEPS} is not a list of timesteps)")
    scheduler = meta.get(META_SCHEDULER, "")  # checked where it is used (sampling.make_scheduler)
    float_precision = meta.get(META_FLOAT_PRECISION, "fp32")
    if float_precision not in FLOAT_PRECISIONS:
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_FLOAT_PRECISION} is {float_precision!r})")
    if not isinstance(scheduler_config, dict):
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_SCHEDULER_CONFIG} is not an object)")
    attention = meta.get(META_ATTENTION, "float")
    if attention not in ATTENTION_MODES:
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_ATTENTION} is {attention!r})")
    return GraphMetadata(
        timesteps=timesteps,
        scheduler_config=scheduler_config,
        sample_shape=tuple(shape) if shape else None,
        wbits=wbits,
        abits=abits,
        method=meta.get(META_METHOD, ""),
        target=meta.get(META_TARGET, ""),
        fingerprint=meta.get(META_FINGERPRINT, ""),
        temporal_table=meta.get(META_TEMPORAL_TABLE, ""),
        version=meta.get(META_VERSION, ""),
        scheduler=scheduler,
        steps=steps,
        float_precision=float_precision,
        attention=attention,
    )
