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
    "BACKENDS",
    "EXPORT_TARGETS",
    "INPUT_CONDITIONS",
    "INPUT_SAMPLE",
    "INPUT_STEP_INDEX",
    "META_ABITS",
    "META_FINGERPRINT",
    "META_METHOD",
    "META_PREFIX",
    "META_SAMPLE_SHAPE",
    "META_SCHEDULER_CONFIG",
    "META_TARGET",
    "META_TEMPORAL_TABLE",
    "META_TIMESTEPS",
    "META_VERSION",
    "META_WBITS",
    "OUTPUT_NOISE_PRED",
    "PRECISIONS",
    "UNET_INPUTS",
    "GraphMetadata",
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

# --- labels --------------------------------------------------------------------------------------
EXPORT_TARGETS = ("tensorrt", "onnxruntime")
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "w8a8", "w4a8", "w4a16", "nncf-int8")


def precision_label(wbits: int, abits: int) -> str:
    """Bench/CLI name of a bit setting: fp32, w8a8, w4a8, w4a16 (16 bits = float)."""
    if wbits >= 16 and abits >= 16:
        return "fp32"
    return f"w{wbits}a{abits}"


@dataclass(frozen=True)
class GraphMetadata:
    """The ``tfmq.*`` metadata of an exported graph, typed."""

    timesteps: list[int]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    wbits: int
    abits: int
    method: str = ""
    target: str = ""
    fingerprint: str = ""
    temporal_table: str = ""
    version: str = ""

    @property
    def precision(self) -> str:
        return precision_label(self.wbits, self.abits)

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
    except (TypeError, ValueError) as exc:
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({exc})") from exc
    if not isinstance(timesteps, list) or not all(isinstance(t, int) for t in timesteps):
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_TIMESTEPS} is not a list of integers)")
    if not isinstance(scheduler_config, dict):
        raise TfmqError(f"{source} has damaged tfmq.* metadata ({META_SCHEDULER_CONFIG} is not an object)")
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
    )
