"""What every engine builder shares: the source graph, the manifest beside the engine, provenance."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import onnx

from tfmq_export.contract import META_PREFIX
from tfmq_export.errors import TfmqError
from tfmq_export.io import machine_info, sha256_file, utc_now

__all__ = [
    "external_data_files", "load_source_onnx", "manifest_path", "onnx_metadata", "onnx_model_bytes", "provenance",
]


def manifest_path(out_path: str | os.PathLike[str]) -> Path:
    """The manifest beside an engine: ``unet.plan`` -> ``unet.manifest.json``."""
    return Path(out_path).with_suffix(".manifest.json")


def onnx_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``tfmq.*`` metadata (timesteps, bits, method, target...)."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def external_data_files(path: str | os.PathLike[str], model: onnx.ModelProto | None = None) -> list[Path]:
    """Side files an ONNX model stores its tensors in (empty for a self-contained model)."""
    p = Path(path)
    if model is None:
        model = onnx.load(str(p), load_external_data=False)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return [p.parent / loc for loc in sorted(locations)]


def onnx_model_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of an ONNX model on disk: the .onnx file plus the external-data files it names."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in external_data_files(p) if f.is_file())


def load_source_onnx(onnx_path: str | os.PathLike[str]) -> tuple[Path, onnx.ModelProto]:
    """The ONNX file to build from, graph only (external weights are left on disk)."""
    src = Path(onnx_path)
    if not src.is_file():
        raise TfmqError(f"{src} does not exist; pass the .onnx file written by `tfmq-export export-onnx`")
    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # DecodeError, ValueError, OSError: a broken file
        raise TfmqError(f"{src} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise TfmqError(f"{src} holds no graph; pass the .onnx file written by `tfmq-export export-onnx`")
    return src, model


def provenance(src: Path, source_model: onnx.ModelProto, started: float) -> dict[str, Any]:
    """The manifest fields every engine builder records: where the engine came from, on what
    machine, how long the build took (``started`` = ``time.perf_counter()`` at its start)."""
    from tfmq_export import __version__

    return {
        "source_onnx": str(src),
        "source_onnx_sha256": sha256_file(src),
        "source_metadata": onnx_metadata(source_model),
        "machine": machine_info(),
        "build_seconds": round(time.perf_counter() - started, 3),
        "created_utc": utc_now(),
        "tfmq_export_version": __version__,
    }
