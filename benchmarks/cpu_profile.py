"""Per-op CPU profile of our W8A8 graphs and the NNCF INT8 peer: where the milliseconds go (issue 12).

Why: on an AVX512-VNNI CPU without AMX our W8A8 was level with NNCF INT8 instead of ahead. The
engines' own counters say why: OpenVINO's per-layer performance counters (``PERF_COUNT``:
``node_type``, ``exec_type`` = kernel + precision, ``real_time``) and onnxruntime's profiler (the
JSON trace's per-node kernel times). Both are aggregated per node/op type and per kernel, with the
questions of issue 12 answered in a Markdown table: share of each op type, int8 vs float kernels of
the weight layers, Reorder (layout conversion) time, Q/DQ time (FakeQuantize, QuantizeLinear /
DequantizeLinear), and the precision of the attention MatMuls and Softmax.

Graphs and engines come from ``benchmarks/sd15_cpu.py``'s builders (reused when present): the W8A8
``tensorrt``-target and ``onnxruntime``-target graphs (OpenVINO IR of both; onnxruntime runs the
.onnx at its default optimisation level, as the bench's runner does) and NNCF's INT8 IR.

``--isa-cap`` sets ``ONEDNN_MAX_CPU_ISA`` at process start, before anything imports openvino, and the
profile lists any AMX kernel that still ran (there must be none under a cap below AMX).

Quiet-machine run (SD-1.5 architecture, batch 1, 32x32 latents, what issue 12 measures)::

    python benchmarks/cpu_profile.py --threads 2 --iters 10 \\
        --json benchmarks/results/cpu_profile.json --md benchmarks/results/cpu_profile.md
    # on an AMX machine, emulating VNNI + BF16 without AMX (the issue's EPYC):
    python benchmarks/cpu_profile.py --threads 2 --iters 10 --isa-cap AVX512_CORE_BF16 \\
        --json benchmarks/results/cpu_profile_noamx.json --md benchmarks/results/cpu_profile_noamx.md

Smoke run (tiny ``digits-text`` UNet, about a minute)::

    python benchmarks/cpu_profile.py --model digits-text --latent 8 --work runs/cpu_profile_smoke \\
        --threads 1 --iters 3 --json runs/cpu_profile_smoke/profile.json --md runs/cpu_profile_smoke/profile.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.cpu_profile
    from .cpu_facts import (
        ISA_ENV,
        amx_exec_types,
        cpu_isa,
        exec_precision,
        isa_summary,
        ov_feed,
        ov_layers,
        type_name,
        unet_feed,
    )
else:  # run as python benchmarks/cpu_profile.py
    from cpu_facts import (
        ISA_ENV,
        amx_exec_types,
        cpu_isa,
        exec_precision,
        isa_summary,
        ov_feed,
        ov_layers,
        type_name,
        unet_feed,
    )

__all__ = ["aggregate_ort_trace", "aggregate_ov", "compare", "markdown", "ort_kernel_precision"]

ROOT = Path(__file__).resolve().parents[1]
#: OpenVINO node types (prefixes: ``FullyConnectedQuantizedLegacy`` too) that hold weights or do the heavy arithmetic
OV_COMPUTE = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
#: OpenVINO node types of attention's score / probability path (MatMul without weights: QK^T, PV;
#: Softmax; or all of it fused into one MHA snippet ``Subgraph``), counted inside ``/attn`` blocks
OV_ATTENTION = ("MatMul", "Softmax", "ScaledDotProductAttention", "MHA", "Subgraph")
ATTENTION_NAME = "/attn"
OV_QDQ = ("FakeQuantize",)
OV_LAYOUT = ("Reorder", "Transpose")
ORT_INT8 = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QGemm", "ConvInteger",
            "DynamicQuantizeMatMul", "QAttention")
ORT_FLOAT = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "NhwcFusedConv", "Attention",
             "MultiHeadAttention")
ORT_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
ORT_LAYOUT = ("Transpose", "ReorderInput", "ReorderOutput", "Reshape")


def _table(groups: dict[str, list[float]], total: float, calls: int) -> list[dict[str, Any]]:
    rows = [{"name": k, "count": round(len(v) / calls), "ms": sum(v) / 1000, "share": sum(v) / total if total else 0.0}
            for k, v in groups.items()]
    return sorted(rows, key=lambda r: -r["ms"])


def aggregate_ov(layers: list[dict[str, Any]], iters: int = 1) -> dict[str, Any]:
    """Per node type, per exec type, and the issue's questions, from ``ov_layers`` rows of ``iters`` calls."""
    by_node: dict[str, list[float]] = defaultdict(list)
    by_exec: dict[str, list[float]] = defaultdict(list)
    compute: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    attention: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    for row in layers:
        us = row["real_time_us"] / iters
        by_node[row["node_type"]].append(us)
        by_exec[row["exec_type"]].append(us)
        precision = exec_precision(row["exec_type"])
        if row["node_type"].startswith(OV_COMPUTE):
            compute[precision]["count"] += 1 / iters
            compute[precision]["ms"] += us / 1000
        if row["node_type"] in OV_ATTENTION and ATTENTION_NAME in row.get("node_name", ""):
            attention[f"{row['node_type']} {precision}"]["count"] += 1 / iters
            attention[f"{row['node_type']} {precision}"]["ms"] += us / 1000
    total = sum(sum(v) for v in by_node.values())
    return {
        "total_ms": total / 1000,
        "by_node_type": _table(by_node, total, iters),
        "by_exec_type": _table(by_exec, total, iters),
        "compute_by_precision": {k: {"count": round(v["count"]), "ms": v["ms"]} for k, v in compute.items()},
        "layout_ms": sum(sum(by_node.get(k, [])) for k in OV_LAYOUT) / 1000,
        "qdq_ms": sum(sum(by_node.get(k, [])) for k in OV_QDQ) / 1000,
        "attention_by_precision": {k: {"count": round(v["count"]), "ms": v["ms"]}
                                   for k, v in sorted(attention.items())},
        "amx_exec_types": amx_exec_types(by_exec),
    }


def ort_kernel_precision(op_type: str) -> str:
    """int8 / float / qdq / other for an onnxruntime op type (kernels of the weight layers only)."""
    if op_type in ORT_INT8:
        return "int8"
    if op_type in ORT_FLOAT:
        return "float"
    return "qdq" if op_type in ORT_QDQ else "other"


def aggregate_ort_trace(events: list[dict[str, Any]], skip_runs: int = 0) -> dict[str, Any]:
    """Per op type kernel time (per call) from an onnxruntime profiling trace.

    Node events named ``*_kernel_time`` are counted from the start of the ``model_run`` after the
    first ``skip_runs`` (warm-up calls in the same session), divided by the calls left.
    """
    starts = sorted(float(e["ts"]) for e in events if e.get("name") == "model_run")
    runs = max(len(starts) - skip_runs, 1)
    since = starts[skip_runs] if len(starts) > skip_runs else float("-inf")
    by_op: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or float(e["ts"]) < since:
            continue
        by_op[e.get("args", {}).get("op_name", "?")].append(float(e.get("dur", 0)) / runs)
    total = sum(sum(v) for v in by_op.values())
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: {"count": 0, "ms": 0.0})
    for op, values in by_op.items():
        kind = ort_kernel_precision(op)
        if kind in ("int8", "float"):
            kernels[kind]["count"] += len(values) / runs
            kernels[kind]["ms"] += sum(values) / 1000
    return {
        "total_ms": total / 1000,
        "by_op_type": _table(by_op, total, runs),
        "compute_by_precision": {k: {"count": round(v["count"]), "ms": v["ms"]} for k, v in kernels.items()},
        "layout_ms": sum(sum(by_op.get(k, [])) for k in ORT_LAYOUT) / 1000,
        "qdq_ms": sum(sum(by_op.get(k, [])) for k in ORT_QDQ) / 1000,
        "softmax_ms": sum(by_op.get("Softmax", [])) / 1000,
        "float_matmul_ms": sum(sum(by_op.get(k, [])) for k in ("MatMul", "FusedMatMul")) / 1000,
    }


# --- running the engines -----------------------------------------------------------------------------


def profile_openvino(xml: Path, args: argparse.Namespace, shapes: tuple, hint: str | None) -> dict[str, Any]:
    """PERF_COUNT layers of ``args.iters`` calls after ``args.warmup``, aggregated (per call)."""
    import openvino as ov

    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": args.threads}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    feed = ov_feed(compiled, *shapes, 1, args.seed)
    layers, walls = [], []
    for i in range(args.warmup + args.iters):
        request.infer(feed)
        if i >= args.warmup:
            rows = ov_layers(request)
            layers += rows
            walls.append(sum(r["real_time_us"] for r in rows) / 1000)
    out = aggregate_ov(layers, args.iters)
    out.update({"engine": "openvino", "file": str(xml), "inference_precision": type_name(compiled.get_property(
        "INFERENCE_PRECISION_HINT")), "call_ms_median": statistics.median(walls)})
    return out


def profile_onnxruntime(onnx_path: Path, args: argparse.Namespace, shapes: tuple) -> dict[str, Any]:
    """onnxruntime's profiler over ``args.iters`` runs after the warm-up ones (level ``all``, as the bench)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[i].name: v for i, v in unet_feed(
            [i.name for i in session.get_inputs()], *shapes, 1, args.seed).items()}
        for _ in range(args.warmup + args.iters):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    out = aggregate_ort_trace(events, args.warmup)
    out.update({"engine": "onnxruntime", "file": str(onnx_path)})
    return out


def compare(ours: dict[str, Any], peer: dict[str, Any], top: int = 10) -> list[dict[str, Any]]:
    """Node types by how many more ms per call ``ours`` spends in them than ``peer`` (largest first)."""
    a = {r["name"]: r for r in ours["by_node_type"]}
    b = {r["name"]: r for r in peer["by_node_type"]}
    rows = [{"name": n, "ours_ms": a.get(n, {}).get("ms", 0.0), "peer_ms": b.get(n, {}).get("ms", 0.0),
             "ours_count": a.get(n, {}).get("count", 0), "peer_count": b.get(n, {}).get("count", 0)}
            for n in set(a) | set(b)]
    for r in rows:
        r["diff_ms"] = r["ours_ms"] - r["peer_ms"]
    return sorted(rows, key=lambda r: -abs(r["diff_ms"]))[:top]


# --- Markdown ------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any], top: int = 12) -> str:
    """The profile as Markdown: one section per engine x graph."""
    lines = ["# Per-op CPU profile (benchmarks/cpu_profile.py)", "",
             f"- CPU: {result['cpu']['cpu']} ({isa_summary(result['cpu'])}); {ISA_ENV}="
             f"{result.get('isa_cap') or 'unset'}; threads {result['threads']}; latents {result['latent']}x"
             f"{result['latent']}, batch 1; model {result['model']}",
             f"- command: `{result['command']}`", ""]
    for label, p in result["profiles"].items():
        lines += [f"## {label}", "", f"Sum of layer times {p['total_ms']:.1f} ms per call"
                  + (f" (inference precision {p['inference_precision']})" if "inference_precision" in p else "")
                  + f"; layout conversion {p['layout_ms']:.1f} ms; Q/DQ {p['qdq_ms']:.1f} ms.", ""]
        kernels = ", ".join(f"{k}: {v['count']} layers, {v['ms']:.1f} ms"
                            for k, v in sorted(p["compute_by_precision"].items()))
        lines += [f"Weight / matmul layers by kernel precision: {kernels or 'none'}.", ""]
        if "attention_by_precision" in p:
            att = ", ".join(f"{k}: {v['count']} layers, {v['ms']:.1f} ms"
                            for k, v in p["attention_by_precision"].items())
            lines += [f"Attention core (MatMul without weights, Softmax, MHA subgraphs in `/attn`): {att or 'none'}."
                      + (f" AMX kernels: {', '.join(p['amx_exec_types'])}." if p["amx_exec_types"] else
                         " No AMX kernel ran."), ""]
        else:
            lines += [f"Softmax {p['softmax_ms']:.1f} ms; float MatMul/FusedMatMul {p['float_matmul_ms']:.1f} ms.", ""]
        key = "by_node_type" if "by_node_type" in p else "by_op_type"
        lines += ["| op type | layers | ms | share |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['count']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in p[key][:top]]
        if "by_exec_type" in p:
            lines += ["", "| exec type | layers | ms | share |", "| --- | --- | --- | --- |"]
            lines += [f"| {r['name']} | {r['count']} | {r['ms']:.2f} | {r['share']:.1%} |"
                      for r in p["by_exec_type"][:top]]
        lines.append("")
    ours, peer = (result["profiles"].get(k) for k in ("OpenVINO W8A8 (tensorrt graph)", "OpenVINO + NNCF INT8"))
    if ours and peer:
        lines += ["## OpenVINO W8A8 (tensorrt graph) vs NNCF INT8, per node type", "",
                  "| node type | ours: layers, ms | NNCF: layers, ms | ours - NNCF ms |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['name']} | {r['ours_count']}, {r['ours_ms']:.2f} | {r['peer_count']}, {r['peer_ms']:.2f} | "
                  f"{r['diff_ms']:+.2f} |" for r in compare(ours, peer)]
        lines.append("")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sd15_cpu", help="sd15_cpu.py's work folder")
    parser.add_argument("--model", default="sd15-arch", help="sd15-arch, or digits-text for a smoke run")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--nncf-samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--isa-cap", default=None, help=f"sets {ISA_ENV} (e.g. AVX512_CORE_VNNI) at process start")
    parser.add_argument("--ov-default", action="store_true",
                        help="also profile the FP32 IR at OpenVINO's default precision (bf16 where native)")
    parser.add_argument("--engines", default="openvino,onnxruntime")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_profile.json")
    parser.add_argument("--md", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_profile.md")
    return parser.parse_args(argv)


def _build(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path], tuple]:
    """sd15_cpu.py's graphs and engines for the same settings (reused when present)."""
    if __package__:
        from . import sd15_cpu
    else:
        import sd15_cpu

    sd_args = sd15_cpu.parse_args(["--work", str(args.work), "--model", args.model, "--latent", str(args.latent),
                                   "--steps", str(args.steps), "--num-samples", str(args.num_samples),
                                   "--nncf-samples", str(args.nncf_samples), "--seed", str(args.seed),
                                   "--threads", str(args.threads)])
    args.work.mkdir(parents=True, exist_ok=True)
    graphs = sd15_cpu.export_graphs(args.work.resolve(), sd_args)
    engines = sd15_cpu.build_engines(graphs, sd_args)
    from tfmq_export.export.onnx_export import describe_onnx

    sample_shape = (describe_onnx(graphs["fp32"]).sample_shape[0], args.latent, args.latent)
    return graphs, engines, (sample_shape, sd15_cpu.cond_shape(sd_args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.isa_cap:  # before anything imports openvino (or torch): oneDNN reads it once
        os.environ[ISA_ENV] = args.isa_cap
    from tfmq_export.io import atomic_write_text

    graphs, engines, shapes = _build(args)
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    profiles: dict[str, Any] = {}
    if "openvino" in names:
        for label, key in (("OpenVINO W8A8 (tensorrt graph)", "openvino:w8a8-tensorrt"),
                           ("OpenVINO W8A8 (onnxruntime graph)", "openvino:w8a8-onnxruntime"),
                           ("OpenVINO W8A8 (openvino graph)", "openvino:w8a8-openvino"),
                           ("OpenVINO W8A8 (openvino graph, float attention)", "openvino:w8a8-openvino-floatattn"),
                           ("OpenVINO + NNCF INT8", "nncf"), ("OpenVINO FP32 (f32)", "openvino:fp32")):
            print(f"[cpu_profile] {label}", flush=True)
            profiles[label] = profile_openvino(engines[key], args, shapes, "f32")
        if args.ov_default:
            profiles["OpenVINO FP32 (ov-default)"] = profile_openvino(engines["openvino:fp32"], args, shapes, None)
    if "onnxruntime" in names:
        for label, key in (("onnxruntime W8A8 (onnxruntime graph)", "w8a8-onnxruntime"),
                           ("onnxruntime W8A8 (tensorrt graph)", "w8a8-tensorrt")):
            print(f"[cpu_profile] {label}", flush=True)
            profiles[label] = profile_onnxruntime(graphs[key], args, shapes)
    given = argv if argv is not None else sys.argv[1:]
    result = {"cpu": cpu_isa(), "isa_cap": os.environ.get(ISA_ENV), "threads": args.threads, "latent": args.latent,
              "model": args.model, "iters": args.iters,
              "command": " ".join(["python benchmarks/cpu_profile.py", *given]), "profiles": profiles}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.md, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
