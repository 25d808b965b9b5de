"""The calibration artifact: what calibration learned, in a form the exporter can trust.

A folder with two files:
- ``tensors.safetensors``: per quantized layer ``{name}.weight_int`` (int8, on the bits' grid),
  ``{name}.weight_scale`` (float32 [O]), ``{name}.input_scale`` (float32 scalar),
  ``{name}.input_step_min`` / ``{name}.input_step_max`` (float32 [T], per table row),
  ``{name}.output_absmax``; and ``temporal.{resnet}`` (float32 [T, C]) the temporal table.
- ``artifact.json``: method, bits, timesteps, scheduler config, per-layer kinds, the model's
  weight fingerprint, calibration settings and timings, the static-scale rule, versions.
Both are written with temp file + rename, the JSON last, so a folder with a readable
``artifact.json`` is complete.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tfmq_export import __version__
from tfmq_export.errors import TfmqError
from tfmq_export.io import atomic_write, atomic_write_text

FORMAT_VERSION = 1
JSON_NAME = "artifact.json"
TENSORS_NAME = "tensors.safetensors"


@dataclass
class LayerRecord:
    """What the exporter needs to know about one quantized layer."""

    kind: str  # "conv" or "linear"
    weight_shape: list[int]
    wbits: int
    abits: int


@dataclass
class CalibrationArtifact:
    method: str
    wbits: int
    abits: int
    timesteps: list[int]
    scheduler_config: dict[str, Any]
    model_name: str
    model_class: str
    model_fingerprint: str
    layers: dict[str, LayerRecord]
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    static_scale_rule: str = "max"
    temporal_table: str = "fp"
    version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    # accessors
    def temporal_tables(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("temporal."): v for k, v in self.tensors.items() if k.startswith("temporal.")}

    def layer_tensor(self, layer: str, key: str) -> torch.Tensor:
        name = f"{layer}.{key}"
        if name not in self.tensors:
            raise TfmqError(f"artifact lacks {name}")
        return self.tensors[name]

    def check_model(self, fingerprint: str, model_name: str = "") -> None:
        """Refuse to apply the artifact to weights other than the ones it was calibrated on."""
        if fingerprint != self.model_fingerprint:
            raise TfmqError(
                f"this artifact was calibrated on model {self.model_name!r} (weights {self.model_fingerprint[:12]}), "
                f"not on {model_name or 'the given model'} (weights {fingerprint[:12]}); calibrate this model first"
            )

    def metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("tensors")
        meta["format_version"] = FORMAT_VERSION
        return meta


def save_artifact(artifact: CalibrationArtifact, out_dir: Path) -> None:
    """Write the artifact folder (tensors first, JSON last, each atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_NAME).unlink(missing_ok=True)  # the folder is incomplete until the JSON lands
    tensors = {k: v.detach().contiguous().cpu() for k, v in artifact.tensors.items()}
    atomic_write(out_dir / TENSORS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "tfmq"}))
    atomic_write_text(out_dir / JSON_NAME, json.dumps(artifact.metadata(), indent=2, sort_keys=True))


def load_artifact(path: Path) -> CalibrationArtifact:
    """Read an artifact folder, refusing incomplete or foreign ones with one clear message."""
    path = Path(path)
    meta_path, tensors_path = path / JSON_NAME, path / TENSORS_NAME
    if not meta_path.is_file():
        raise TfmqError(f"{path} is not a calibration artifact (no {JSON_NAME}); run `tfmq-export calibrate` first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"{meta_path} is unreadable: {exc}") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise TfmqError(f"{meta_path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise TfmqError(f"{tensors_path} is unreadable or corrupt: {exc}") from exc
    meta.pop("format_version")
    meta["layers"] = {k: LayerRecord(**v) for k, v in meta["layers"].items()}
    try:
        return CalibrationArtifact(tensors=tensors, **meta)
    except TypeError as exc:
        raise TfmqError(f"{meta_path} does not describe a calibration artifact: {exc}") from exc
