"""onnxruntime "engine": the exported Q/DQ graph after onnxruntime's offline graph optimisation.

onnxruntime has no engine format of its own; what it can save is the graph after its optimisers
ran (``SessionOptions.optimized_model_filepath``), with Q/DQ pairs already fused into int8
kernels (QLinearConv, MatMulIntegerToFloat, QGemm...). Loading that file skips the fusion work,
and, more usefully, lets us check the fusion *before* benchmarking: on the SD-1.5 architecture a
weight DequantizeLinear that no int8 kernel absorbed cost 36% of a call (2 cores), and onnxruntime
on x86 only fuses with unsigned activations (``--target onnxruntime``).
The manifest therefore counts the weight DequantizeLinear nodes left in the optimised graph.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from tfmq_export.backends.manifest import external_data_files, load_source_onnx, manifest_path, provenance
from tfmq_export.errors import TfmqError
from tfmq_export.io import commit_staged, sha256_file, staged_dir

__all__ = ["INT8_KERNEL_OPS", "build_onnxruntime_engine", "unfused_weight_dequantize"]

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
            **provenance(src, source_model, start),
        }
        commit_staged(stage, out.parent, names, manifest, manifest_path(out).name)
    return manifest
