"""Does 4-bit pay at deployment? Bytes and latency per backend of W8A8, W4A8 and W4A16, with 4-bit
weights stored as INT8 values on the 4-bit grid or as ONNX INT4, and a mixed W4A8.

Usage: python benchmarks/int4_deploy.py [--calls 40] [--threads 1] [--work runs/int4_deploy]
       [--json benchmarks/results/int4_deploy_digits.json]

Model: the bundled digits UNet. Calibration: minmax on the digits recipe's steps with 8
trajectories (bytes and latency depend on where the Q/DQ and the integers are, not on how well the
scales were chosen). Every graph is exported for ``--target onnxruntime`` at FP32 (what both CPU
backends read); ``--weight-storage`` int8 or int4. Settings: fp32 (no Q/DQ), w8a8, w4a8-int8,
w4a8-int4, w4a16-int8, w4a16-int4, mixed-int4 (W4A8 with ``w8_layers`` 4 and the shortcut and
downsample convs float).

Per backend:
- onnxruntime: the .onnx bytes; latency of an ``ORT_ENABLE_ALL`` session; the op counts of its
  optimised graph (QLinearConv / MatMulInteger = int8 kernels; Conv / MatMul with a
  DequantizeLinear weight = float kernels fed by a dequantize every call).
- openvino: the IR bytes (``save_model`` .xml + .bin, no FP16 compression, as ``build-engine``
  writes); latency of the CPU plugin at ``INFERENCE_PRECISION_HINT=f32`` (the project's runner);
  the compiled model's weight layers by runtime precision and weight element type (i4 = compressed
  4-bit weights).
Latency: median of ``--calls`` calls at batch 1, the variants round robin in one process, after 3
warm-up calls each. The 1-minute load average before and after goes into the JSON: the machine is
shared and timings under load are indicative only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

#: setting -> (bits, weight storage, extra options)
SETTINGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "fp32": ("fp", "int8", {}),
    "w8a8": ("w8a8", "int8", {}),
    "w4a8-int8": ("w4a8", "int8", {}),
    "w4a8-int4": ("w4a8", "int4", {}),
    "w4a16-int8": ("w4a16", "int8", {}),
    "w4a16-int4": ("w4a16", "int4", {}),
    "mixed-int4": ("w4a8", "int4", {"w8_layers": 4, "keep_fp": ["shortcuts", "downsamplers"]}),
}


def export_all(work: Path, settings: list[str], num_samples: int) -> dict[str, Path]:
    """The ONNX graph of every setting (artifacts and graphs reused when present)."""
    from tfmq_export.artifact import load_artifact
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.export.onnx_export import export_onnx
    from tfmq_export.models.loading import load_model
    from tfmq_export.workflows.evaluate import recipe_settings

    model = load_model("digits")
    graphs: dict[str, Path] = {}
    for name in settings:
        bits, storage, extra = SETTINGS[name]
        base = recipe_settings("minmax", "w8a8" if bits == "fp" else bits)
        wbits, abits = (16, 16) if bits == "fp" else (base.wbits, base.abits)
        calib = replace(base, wbits=wbits, abits=abits, num_samples=num_samples, batch_size=num_samples,
                        extra={**(base.extra or {}), **extra} or None)
        folder = work / f"calib-{bits}-{'-'.join(f'{k}' for k in extra) or 'plain'}"
        artifact = load_artifact(folder) if (folder / "artifact.json").is_file() else calibrate(
            model, calib, folder, progress=False)
        path = work / f"digits-{name}.onnx"
        if not path.is_file():
            export_onnx(model, artifact, path, "onnxruntime", precision="fp32", weight_storage=storage)
        graphs[name] = path
    return graphs


def ort_session(path: Path, threads: int, work: Path):
    """An optimised onnxruntime session and the op counts of the graph it runs."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    optimised = work / f"{path.stem}.ort-opt.onnx"
    so.optimized_model_filepath = str(optimised)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimised)).graph.node)
    keep = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "Conv", "FusedConv", "MatMul",
            "FusedMatMul", "DequantizeLinear", "QuantizeLinear", "MatMulNBits")
    return session, {k: ops[k] for k in keep if ops.get(k)}


def ov_compiled(path: Path, threads: int, work: Path):
    """The OpenVINO IR of ``path`` (bytes), compiled for the CPU at f32, and its weight layers by
    runtime precision and weight element type."""
    import openvino as ov

    model = ov.convert_model(str(path))
    xml = work / f"{path.stem}.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    ir_bytes = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32"})
    layers: collections.Counter = collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "FullyConnected", "MatMul", "GroupConvolution"):
            weight = op.input(1).get_element_type().get_type_name() if op.get_input_size() > 1 else "?"
            layers[f"{kind} {info['runtimePrecision'].astype(str)} w:{weight}"] += 1
    return compiled, ir_bytes, dict(layers)


def inputs_for(names: list[str]) -> dict[str, np.ndarray]:
    """Batch-1 inputs of the digits graph by input name (sample [1, 1, 16, 16], step_index [1])."""
    rng = np.random.default_rng(0)
    out = {}
    for name in names:
        out[name] = np.array([3], dtype=np.int64) if "step" in name else rng.standard_normal(
            (1, 1, 16, 16)).astype(np.float32)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tfmq_export.backends.openvino.ir import contract_input_name

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    graphs = export_all(work, names, args.num_samples)
    calls: dict[tuple[str, str], Any] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name, path in graphs.items():
        session, ops = ort_session(path, args.threads, work)
        feed = inputs_for([i.name for i in session.get_inputs()])
        calls[(name, "onnxruntime")] = (lambda s=session, f=feed: s.run(None, f))
        rows[(name, "onnxruntime")] = {"bytes": path.stat().st_size, "kernels": ops}
        compiled, ir_bytes, layers = ov_compiled(path, args.threads, work)
        request = compiled.create_infer_request()
        ov_feed = inputs_for([contract_input_name(p) for p in compiled.inputs])
        ov_feed = {p: ov_feed[contract_input_name(p)] for p in compiled.inputs}
        calls[(name, "openvino")] = (lambda r=request, f=ov_feed: r.infer(f))
        rows[(name, "openvino")] = {"bytes": ir_bytes, "kernels": layers}
    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for _ in range(3):
        for fn in calls.values():
            fn()
    for _ in range(args.calls):
        for key, fn in calls.items():
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
    load_after = os.getloadavg()
    out_rows = []
    for (name, backend), row in rows.items():
        out_rows.append({"setting": name, "backend": backend, **row,
                         "median_ms": round(1000 * statistics.median(times[(name, backend)]), 3),
                         "min_ms": round(1000 * min(times[(name, backend)]), 3)})
    return {"command": f"python benchmarks/int4_deploy.py --calls {args.calls} --threads {args.threads} "
                       f"--settings {args.settings}",
            "model": "digits", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpu_count": os.cpu_count(), "threads": args.threads, "calls": args.calls,
            "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
            "versions": versions(), "rows": out_rows}


def sd15_weight_bytes() -> dict[str, Any]:
    """Weight bytes of the sd15-arch UNet per setting, computed from its layer shapes (meta tensors, no
    weights, no export): quantizable layers at 1 byte (INT8 storage) or half a byte (INT4) a weight,
    every other parameter at 4 (float). The temporal table that replaces the time MLP is left out (it
    is the same in every setting). ``tensorrt``: convolutions stay INT8 (no INT4 conv) and INT4 is
    weight-only, so only W4A16's linear layers are 4-bit there."""
    from importlib import resources

    import torch
    from diffusers import UNet2DConditionModel

    from tfmq_export.models.adapter import UNetAdapter

    config = json.loads(resources.files("tfmq_export.configs").joinpath("sd15_unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    layers = UNetAdapter(unet).quantizable_layers()
    conv = sum(m.weight.numel() for m in layers.values() if m.weight.dim() == 4)
    linear = sum(m.weight.numel() for m in layers.values() if m.weight.dim() == 2)
    floats = 4 * (sum(p.numel() for p in unet.parameters()) - conv - linear)
    rows = {
        "fp32": floats + 4 * (conv + linear),
        "w8a8": floats + conv + linear,
        "w4 int4 storage (onnxruntime / openvino)": floats + (conv + linear) // 2,
        "w4a8 tensorrt": floats + conv + linear,
        "w4a16 tensorrt": floats + conv + linear // 2,
    }
    return {"conv_weights": conv, "linear_weights": linear, "bytes": rows}


def versions() -> dict[str, str]:
    import onnxruntime as ort
    import openvino as ov

    return {"onnxruntime": ort.__version__, "openvino": ov.__version__}


def markdown(result: dict) -> str:
    """Per backend: bytes and median latency of every setting, relative to W8A8."""
    lines = [f"Command: `{result['command']}` ({result['created']}, {result['threads']} thread(s), "
             f"{result['cpu_count']} cores; load average before {result['load_before'][0]}, after "
             f"{result['load_after'][0]}: a shared machine, latencies indicative only). onnxruntime "
             f"{result['versions']['onnxruntime']}, OpenVINO {result['versions']['openvino']}.", ""]
    for backend in ("onnxruntime", "openvino"):
        rows = [r for r in result["rows"] if r["backend"] == backend]
        ref = next((r for r in rows if r["setting"] == "w8a8"), rows[0])
        lines += [f"**{backend}**", "", "| setting | bytes | vs W8A8 | median ms | vs W8A8 | weight kernels |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            kernels = ", ".join(f"{k} {v}" for k, v in r["kernels"].items())
            lines.append(f"| {r['setting']} | {r['bytes']:,} | {r['bytes'] / ref['bytes']:.2f}x | {r['median_ms']} | "
                         f"{r['median_ms'] / ref['median_ms']:.2f}x | {kernels} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--work", type=Path, default=Path("runs/int4_deploy"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sd15-bytes", action="store_true", help="Only print sd15-arch's weight bytes per setting "
                        "(computed from layer shapes; no export, no timing).")
    args = parser.parse_args()
    if args.sd15_bytes:
        print(json.dumps(sd15_weight_bytes(), indent=2))
        return
    import torch

    from tfmq_export.io import atomic_write_text

    torch.set_num_threads(args.threads)
    result = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
