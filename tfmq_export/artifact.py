"""The calibration artifact: what calibration learned, in a form the exporter can trust.

A folder with two files:
- ``tensors.safetensors``: per quantized layer ``{name}.weight_int`` (int8, on the bits' grid),
  ``{name}.weight_scale`` (float32 [O]), ``{name}.input_scale`` (float32 scalar),
  ``{name}.input_step_min`` / ``{name}.input_step_max`` (float32 [T], per table row),
  ``{name}.output_absmax``; and ``temporal.{resnet}`` (float32 [T, C]) the temporal table.
  ``LAYER_TENSORS`` and ``GLOBAL_TENSORS`` are the one schema of these keys.
- ``artifact.json``: method, bits, timesteps, scheduler config, per-layer kinds, the model's
  weight fingerprint, calibration settings and timings, the static-scale rule, versions, and
  ``linear_act_grid`` (the Linear layers' input grid, ``config.ACT_GRIDS``) when it is not the
  default ``int8`` (so artifacts written before the option existed are unchanged).
Both are written with temp file + rename, the JSON last, so a folder with a readable
``artifact.json`` is complete. Both are checked against the schema when written and when read
(``artifact_problem``): a damaged or hand-edited artifact is refused with one line naming the
key or tensor, before anything is exported from it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tfmq_export import __version__
from tfmq_export.config import ACT_GRIDS
from tfmq_export.errors import TfmqError
from tfmq_export.io import atomic_write, atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "GLOBAL_TENSORS",
    "JSON_NAME",
    "LAYER_TENSORS",
    "OUTPUT_CORRECTION_KEY",
    "TENSORS_NAME",
    "CalibrationArtifact",
    "LayerRecord",
    "artifact_problem",
    "load_artifact",
    "meta_problem",
    "save_artifact",
]

FORMAT_VERSION = 1
JSON_NAME = "artifact.json"
TENSORS_NAME = "tensors.safetensors"


#: Tensors of one quantized layer, ``{layer}.{key}``: key -> shape rule. Rules: ``weight`` = the
#: record's weight_shape, ``out`` = [weight_shape[0]], ``steps`` = [T] (one per table row),
#: ``scalar`` = []. qdiff's split skip inputs add the ``*split*`` group (all four or none), tfmq's
#: step factors add ``input_step_factor``.
LAYER_TENSORS: dict[str, str] = {
    "weight_int": "weight",
    "weight_scale": "out",
    "input_scale": "scalar",
    "input_step_min": "steps",
    "input_step_max": "steps",
    "output_absmax": "scalar",
    "input_split": "scalar",
    "input_scale_split": "scalar",
    "input_split_step_min": "steps",
    "input_split_step_max": "steps",
    "input_step_factor": "steps",
}
#: Tensors that are not one quantized layer's: prefix -> shape rule. ``temporal.{resnet}`` is the
#: table [T, C]; ``fsc.{resnet}.step_min|max`` its per-row range [T] (tfmq); ``tib.{layer}.*`` the
#: temporal branch's own quantizers (tfmq, the branch itself is a table in the graph).
GLOBAL_TENSORS: dict[str, str] = {
    "temporal.": "table",
    "fsc.": "steps",
    "tib.": "tib",
    "correction.": "correction",
}
#: the per-step output correction ([T, C, H, W] or [T, C, 1, 1]; ``calibration.output_correction``)
OUTPUT_CORRECTION_KEY = "correction.output"
_SPLIT_GROUP = ("input_split", "input_scale_split", "input_split_step_min", "input_split_step_max")
#: positive and finite wherever present: a zero or NaN scale exports a graph that computes noise
_SCALE_KEYS = ("weight_scale", "input_scale", "input_scale_split", "input_step_factor")
#: per-step ranges: +-inf marks a step no input was observed at (activations in float)
_STEP_RANGE_KEYS = ("input_step_min", "input_step_max", "input_split_step_min", "input_split_step_max")
_INTEGER_KEYS = ("weight_int", "input_split")


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
    timesteps: list[int | float]  # a row per sampler call; floats only for fractional schedules (Euler)
    scheduler_config: dict[str, Any]
    model_name: str
    model_class: str
    model_fingerprint: str
    layers: dict[str, LayerRecord]
    tensors: dict[str, torch.Tensor]
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float | str] = field(default_factory=dict)  # seconds, and the run's device
    static_scale_rule: str = "max"
    temporal_table: str = "fp"
    #: the grid of the Linear layers' input quantizers (``config.ACT_GRIDS``); every other input: int8
    linear_act_grid: str = "int8"
    version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    # accessors
    def temporal_tables(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix("temporal."): v for k, v in self.tensors.items() if k.startswith("temporal.")}

    def layer_tensor(self, layer: str, key: str) -> torch.Tensor:
        name = f"{layer}.{key}"
        if name not in self.tensors:
            raise TfmqError(f"the artifact is corrupt: it lacks {name}")
        return self.tensors[name]

    def act_grid(self, layer: str) -> str:
        """The grid of ``layer``'s input quantizer: ``linear_act_grid`` for a Linear, int8 otherwise."""
        return self.linear_act_grid if self.layers[layer].kind == "linear" else "int8"

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
        if meta["linear_act_grid"] == "int8":  # the default: written as before the option existed
            meta.pop("linear_act_grid")
        meta["format_version"] = FORMAT_VERSION
        return meta


# --- the schema ----------------------------------------------------------------------------------

#: artifact.json: key -> accepted JSON type (the dataclass fields; ``tensors`` lives in safetensors)
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "wbits": int, "abits": int, "timesteps": list, "scheduler_config": dict, "model_name": str,
    "model_class": str, "model_fingerprint": str, "layers": dict, "settings": dict, "timings": dict,
    "static_scale_rule": str, "temporal_table": str, "linear_act_grid": str, "version": str, "created": str,
}
_RECORD_TYPES: dict[str, type] = {"kind": str, "weight_shape": list, "wbits": int, "abits": int}
assert set(_META_TYPES) == {f.name for f in fields(CalibrationArtifact)} - {"tensors"}
assert set(_RECORD_TYPES) == {f.name for f in fields(LayerRecord)}


def _type_name(expected: type | tuple[type, ...]) -> str:
    return {str: "a string", int: "an integer", list: "a list", dict: "an object"}.get(expected, str(expected))


def _is_type(value: Any, expected: type | tuple[type, ...]) -> bool:
    return isinstance(value, expected) and not (isinstance(value, bool) and expected is int)


def _record_problem(name: str, record: Any) -> str | None:
    """What is wrong with one ``layers`` entry of artifact.json, or None."""
    if not isinstance(record, dict):
        return f"layer {name!r} is {type(record).__name__}, not an object"
    unknown = sorted(set(record) - set(_RECORD_TYPES))
    missing = sorted(set(_RECORD_TYPES) - set(record))
    if unknown or missing:
        what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
        return f"layer {name!r} has {what} (a layer has {', '.join(_RECORD_TYPES)})"
    for key, expected in _RECORD_TYPES.items():
        if not _is_type(record[key], expected):
            return f"layer {name!r}: {key} must be {_type_name(expected)}, not {record[key]!r}"
    shape = record["weight_shape"]
    if not all(_is_type(d, int) and d > 0 for d in shape):
        return f"layer {name!r}: weight_shape {shape} must be positive integers"
    if record["kind"] not in ("conv", "linear") or len(shape) != (4 if record["kind"] == "conv" else 2):
        return (f"layer {name!r}: kind {record['kind']!r} with weight_shape {shape} is neither a conv (4-D) "
                "nor a linear (2-D)")
    if record["wbits"] not in (4, 8, 16) or record["abits"] not in (8, 16):
        return f"layer {name!r}: W{record['wbits']}A{record['abits']} is not a supported bit setting"
    return None


def meta_problem(meta: Any) -> str | None:
    """What is wrong with the parsed artifact.json (keys, types, layer records), or None."""
    if not isinstance(meta, dict):
        return f"it holds a JSON {type(meta).__name__}, not an object"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
    keys = set(meta) - {"format_version"}
    required = {f.name for f in fields(CalibrationArtifact) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - keys - {"tensors"})
    if missing:
        return f"no {', '.join(missing)}"
    unknown = sorted(keys - set(_META_TYPES))
    if unknown:
        return f"unknown key(s) {', '.join(unknown)}"
    for key, expected in _META_TYPES.items():
        if key in meta and not _is_type(meta[key], expected):
            return f"{key} must be {_type_name(expected)}, not {type(meta[key]).__name__}"
    if meta.get("linear_act_grid", "int8") not in ACT_GRIDS:
        return f"linear_act_grid {meta['linear_act_grid']!r} is not one of {', '.join(ACT_GRIDS)}"
    steps = meta["timesteps"]
    if not steps or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
                            for t in steps):
        return "timesteps must be a non-empty list of non-negative numbers"
    for name, record in meta["layers"].items():
        problem = _record_problem(name, record)
        if problem is not None:
            return problem
    return None


def _expected_shape(rule: str, key: str, record: LayerRecord | None, steps: int,
                    tensors: dict[str, torch.Tensor]) -> tuple[str, bool]:
    """(the shape a rule asks for, as text; whether ``tensors[key]`` has it)."""
    shape = list(tensors[key].shape)
    if rule == "table":
        return f"[{steps}, C]", len(shape) == 2 and shape[0] == steps
    if rule == "correction":
        return f"[{steps}, C, H, W]", key == OUTPUT_CORRECTION_KEY and len(shape) == 4 and shape[0] == steps
    if rule in ("steps", "scalar"):
        want = [steps] if rule == "steps" else []
    elif record is not None:  # a quantized layer's weight_int / weight_scale
        want = list(record.weight_shape) if rule == "weight" else [record.weight_shape[0]]
    elif rule == "weight":  # tib.{layer}.weight_int: a linear layer's weight
        return "2-D", len(shape) == 2
    else:  # tib.{layer}.weight_scale: one per row of its weight_int
        weight = tensors.get(key.removesuffix("weight_scale") + "weight_int")
        if weight is None:
            return "1-D", len(shape) == 1
        want = [int(weight.shape[0])]
    return str(want), shape == want


def _classify(key: str, layers: dict[str, LayerRecord]) -> tuple[str, str, LayerRecord | None] | None:
    """(rule, suffix, layer record) of a tensor key per the schema, or None for a key it does not know."""
    for suffix, rule in LAYER_TENSORS.items():
        layer = key.removesuffix(f".{suffix}")
        if layer != key and layer in layers:
            return rule, suffix, layers[layer]
    for prefix, rule in GLOBAL_TENSORS.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            if rule == "steps" and not key.endswith((".step_min", ".step_max")):
                return None
            if rule == "tib":
                suffix = key.rsplit(".", 1)[-1]
                if suffix not in ("input_step_min", "input_step_max", "weight_int", "weight_scale"):
                    return None
                return LAYER_TENSORS[suffix], suffix, None
            return rule, "", None
    return None


def _values_problem(key: str, suffix: str, tensor: torch.Tensor, record: LayerRecord | None) -> str | None:
    """Dtype, finiteness, sign and integer-grid checks of one tensor."""
    if (suffix in _INTEGER_KEYS) != (not tensor.is_floating_point()):
        return f"{key} has dtype {str(tensor.dtype).removeprefix('torch.')}"
    if not tensor.is_floating_point():
        if suffix == "weight_int" and tensor.numel():
            bits = record.wbits if record is not None else 8
            lo, hi = int(tensor.min()), int(tensor.max())
            if lo < -(2 ** (bits - 1)) or hi > 2 ** (bits - 1) - 1:
                return f"{key} holds integers in [{lo}, {hi}], outside the {bits}-bit grid"
        return None
    bad = torch.isnan(tensor) if suffix in _STEP_RANGE_KEYS else ~torch.isfinite(tensor)
    if bool(bad.any()):
        return f"{key} holds {int(bad.sum())} non-finite value(s) (NaN/Inf)"
    if suffix in _SCALE_KEYS and bool((tensor <= 0).any()):
        return f"{key} holds {int((tensor <= 0).sum())} zero or negative scale(s)"
    return None


def _tensor_problem(key: str, layers: dict[str, LayerRecord], steps: int,
                    tensors: dict[str, torch.Tensor]) -> str | None:
    kind = _classify(key, layers)
    if kind is None:
        return f"{key} is not a tensor of the artifact schema (artifact.LAYER_TENSORS / GLOBAL_TENSORS)"
    rule, suffix, record = kind
    expected, ok = _expected_shape(rule, key, record, steps, tensors)
    if not ok:
        return f"{key} has shape {list(tensors[key].shape)}, expected {expected}"
    return _values_problem(key, suffix, tensors[key], record)


def _layer_set_problem(name: str, record: LayerRecord, tensors: dict[str, torch.Tensor]) -> str | None:
    """Which tensors a layer must have, from its bits (and the split group's all-or-none)."""
    required = ["input_step_min", "input_step_max", "output_absmax"]
    required += ["weight_int", "weight_scale"] if record.wbits < 16 else []
    required += ["input_scale"] if record.abits < 16 else []
    split = [k for k in _SPLIT_GROUP if f"{name}.{k}" in tensors]
    if split:
        required += list(_SPLIT_GROUP)
    missing = [k for k in required if f"{name}.{k}" not in tensors]
    return f"{name}.{missing[0]} is missing" if missing else None


def artifact_problem(artifact: CalibrationArtifact) -> str | None:
    """The first way ``artifact`` breaks the schema (tensor key, shape, dtype, values), or None."""
    if artifact.linear_act_grid not in ACT_GRIDS:
        return f"linear_act_grid {artifact.linear_act_grid!r} is not one of {', '.join(ACT_GRIDS)}"
    steps = len(artifact.timesteps)
    for name, record in artifact.layers.items():
        problem = _layer_set_problem(name, record, artifact.tensors)
        if problem is not None:
            return problem
    for key in artifact.tensors:
        problem = _tensor_problem(key, artifact.layers, steps, artifact.tensors)
        if problem is not None:
            return problem
    return None


# --- files ---------------------------------------------------------------------------------------


def save_artifact(artifact: CalibrationArtifact, out_dir: Path) -> None:
    """Write the artifact folder (tensors first, JSON last, each atomically); refuse an invalid one."""
    problem = artifact_problem(artifact)
    if problem is not None:
        raise TfmqError(f"calibration produced an invalid artifact, nothing written to {out_dir}: {problem}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JSON_NAME).unlink(missing_ok=True)  # the folder is incomplete until the JSON lands
    tensors = {k: v.detach().contiguous().cpu() for k, v in artifact.tensors.items()}
    atomic_write(out_dir / TENSORS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "tfmq"}))
    atomic_write_text(out_dir / JSON_NAME, json.dumps(artifact.metadata(), indent=2, sort_keys=True))


def load_artifact(path: Path) -> CalibrationArtifact:
    """Read an artifact folder, refusing incomplete, foreign or damaged ones with one clear message."""
    path = Path(path)
    meta_path, tensors_path = path / JSON_NAME, path / TENSORS_NAME
    if not meta_path.is_file():
        raise TfmqError(f"{path} is not a calibration artifact (no {JSON_NAME}); run `tfmq-export calibrate` first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TfmqError(f"{meta_path} is unreadable: {exc}") from exc
    problem = meta_problem(meta)
    if problem is not None:
        raise TfmqError(f"{meta_path} does not describe a calibration artifact: {problem}")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TfmqError(f"{tensors_path} is unreadable or corrupt: {first}") from exc
    meta.pop("format_version")
    meta["layers"] = {k: LayerRecord(**v) for k, v in meta["layers"].items()}
    artifact = CalibrationArtifact(tensors=tensors, **meta)
    problem = artifact_problem(artifact)
    if problem is not None:
        raise TfmqError(f"the artifact is corrupt: {problem} ({path})")
    return artifact
