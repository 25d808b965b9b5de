"""onnxruntime "engine": the exported Q/DQ graph after onnxruntime's offline graph optimisation.

onnxruntime has no engine format of its own; what it can save is the graph after its optimisers
ran (``SessionOptions.optimized_model_filepath``), with Q/DQ pairs already fused into int8
kernels (QLinearConv, MatMulIntegerToFloat, QGemm...). Loading that file skips the fusion work,
and, more usefully, lets us check the fusion *before* benchmarking: on the SD-1.5 architecture a
weight DequantizeLinear that no int8 kernel absorbed cost 36% of a call (ARCHITECTURE.md, CPU
notes), and onnxruntime on x86 only fuses with unsigned activations (``--target onnxruntime``).
The manifest therefore counts the weight DequantizeLinear nodes left in the optimised graph.

This module also holds the small helpers every engine builder uses (hashes, machine description,
staged atomic writes, manifest paths): the other builders import them from here.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from tfmq_export import __version__
from tfmq_export.errors import TfmqError

__all__ = [
    "INT8_KERNEL_OPS",
    "build_onnxruntime_engine",
    "commit_staged",
    "external_data_files",
    "load_source_onnx",
    "machine_info",
    "manifest_path",
    "onnx_metadata",
    "provenance",
    "sha256_file",
    "staged_dir",
    "unfused_weight_dequantize",
    "utc_now",
]

#: onnxruntime ops that run a quantized Conv/MatMul/Gemm with int8 arithmetic
INT8_KERNEL_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QGemm",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
)
_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
#: above this source size the optimised model keeps its weights in a side file (protobuf: 2 GB max)
_EXTERNAL_DATA_BYTES = 1 << 30


# --- helpers shared by the engine builders -------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (engines and ONNX files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def machine_info() -> dict[str, Any]:
    """What a CPU timing depends on: CPU model, core count, the int8/bf16 ISA extensions."""
    flags = _cpu_flags()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
    }


def manifest_path(out_path: str | os.PathLike[str]) -> Path:
    """The manifest beside an engine: ``unet.plan`` -> ``unet.manifest.json``."""
    return Path(out_path).with_suffix(".manifest.json")


def onnx_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``tfmq.*`` metadata (timesteps, bits, method, target...)."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("tfmq.")}


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


@contextlib.contextmanager
def staged_dir(out_path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private folder beside ``out_path`` to build into; removed afterwards, whatever happens.

    Builders write every output there under its final name (so references between files, like
    ONNX external data or OpenVINO's .bin, stay valid) and call ``commit_staged`` when all is
    written: a failed build leaves nothing at the destination.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit_staged(
    stage: Path, out_dir: Path, names: Sequence[str], manifest: dict[str, Any], manifest_name: str
) -> None:
    """Move the staged files into ``out_dir`` (``os.replace``, atomic per file), manifest last.

    The manifest is written last so that its presence means the engine beside it is complete.
    """
    (stage / manifest_name).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    for name in [*names, manifest_name]:
        os.replace(stage / name, out_dir / name)


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


def utc_now() -> str:
    """Build time for manifests (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


# --- the onnxruntime builder ---------------------------------------------------------------------


def unfused_weight_dequantize(model: onnx.ModelProto) -> list[str]:
    """DequantizeLinear nodes of constant weights: after optimisation, each one is a weight that is
    dequantized to float at every call instead of feeding an int8 kernel."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {n.output[0] for n in model.graph.node if n.op_type == "Constant" and n.output}
    return [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input and n.input[0] in constants
    ]


def build_onnxruntime_engine(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    threads: int | None = None,
    *,
    level: str = "extended",
    providers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Save onnxruntime's optimised graph of ``onnx_path`` to ``out_path`` (.onnx) with a manifest.

    ``level="extended"`` (default) runs every fusion the int8 kernels need (QDQ -> QLinearConv,
    MatMulIntegerToFloat, QGemm) and stays portable; ``"all"`` also bakes in the NCHWc layout of
    *this* CPU (onnxruntime warns the file is then hardware specific). A session that loads the
    file still applies the layout optimisations at load time, so ``extended`` loses nothing.
    Returns the manifest (also written to ``manifest_path(out_path)``).
    """
    import onnxruntime as ort

    out = Path(out_path)
    if out.suffix != ".onnx":
        raise TfmqError(f"--out {out} must end in .onnx (onnxruntime saves an optimised ONNX graph)")
    if level not in _LEVELS:
        raise TfmqError(f"level {level!r} is not one of {', '.join(_LEVELS)}")
    if threads is not None and threads < 1:
        raise TfmqError(f"threads must be a positive number, not {threads}")
    src, source_model = load_source_onnx(onnx_path)
    source_files = [src, *external_data_files(src, source_model)]
    source_bytes = sum(p.stat().st_size for p in source_files if p.is_file())
    providers = list(providers) if providers else ["CPUExecutionProvider"]

    start = time.perf_counter()
    with staged_dir(out) as stage:
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        so.optimized_model_filepath = str(stage / out.name)
        if threads:
            so.intra_op_num_threads = threads
        data_name = f"{out.name}.data"
        if source_bytes > _EXTERNAL_DATA_BYTES:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_name)
        try:
            session = ort.InferenceSession(str(src), so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TfmqError(f"onnxruntime could not load {src}: {first}") from exc
        active = session.get_providers()
        del session
        optimised = onnx.load(str(stage / out.name), load_external_data=False)
        names = [out.name] + ([data_name] if (stage / data_name).exists() else [])

        ops = Counter(n.op_type for n in optimised.graph.node)
        unfused = unfused_weight_dequantize(optimised)
        manifest: dict[str, Any] = {
            "backend": "onnxruntime",
            "engine": out.name,
            "engine_files": names,
            "engine_bytes": sum((stage / n).stat().st_size for n in names),
            "engine_sha256": sha256_file(stage / out.name),
            "source_onnx": str(src),
            "source_onnx_sha256": sha256_file(src),
            "source_metadata": onnx_metadata(source_model),
            "onnxruntime_version": ort.__version__,
            "providers": active,
            "graph_optimization_level": _LEVELS[level],
            "hardware_specific": level == "all",
            "threads": threads,
            "op_counts": dict(sorted(ops.items())),
            "int8_kernels": {op: ops[op] for op in INT8_KERNEL_OPS if ops[op]},
            "QLinearConv": ops["QLinearConv"],
            "QLinearMatMul": ops["QLinearMatMul"],
            "MatMulInteger": ops["MatMulInteger"],
            "MatMulIntegerToFloat": ops["MatMulIntegerToFloat"],
            "QGemm": ops["QGemm"],
            "DequantizeLinear": ops["DequantizeLinear"],
            "QuantizeLinear": ops["QuantizeLinear"],
            "weight_dequantize_in_source": len(unfused_weight_dequantize(source_model)),
            "unfused_weight_dequantize": len(unfused),
            "unfused_weight_dequantize_nodes": unfused[:50],
            "machine": machine_info(),
            "build_seconds": round(time.perf_counter() - start, 3),
            "created_utc": utc_now(),
            "tfmq_export_version": __version__,
        }
        commit_staged(stage, out.parent, names, manifest, manifest_path(out).name)
    return manifest
