"""The pure helpers of ``benchmarks/cpu_facts.py`` / ``cpu_profile.py`` (issue 12): ISA flags from
/proc/cpuinfo text, onnxruntime trace aggregation, and OpenVINO per-layer counters of a real
1-conv model (real openvino, no mocks)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(_BENCH))  # cpu_profile imports cpu_facts as a sibling script does
    try:
        spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(_BENCH))


facts = _load("cpu_facts")
profile = _load("cpu_profile")

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 vaes
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 vaes
"""
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t: avx2 avx512f avx512_vnni avx_vnni " \
           "avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def test_isa_flags_from_cpuinfo_text():
    epyc = facts.cpu_isa(EPYC)
    assert epyc["cpu"] == "AMD EPYC 9R14 96-Core Processor"
    assert epyc["flags"]["avx512_vnni"] and epyc["flags"]["avx512_bf16"]
    assert not epyc["flags"]["amx_int8"] and not epyc["flags"]["avx_vnni"]
    assert facts.isa_summary(epyc) == "VNNI: avx512_vnni; BF16: avx512_bf16; AMX: none"
    spr = facts.cpu_isa(SAPPHIRE)
    assert spr["flags"]["amx_tile"] and spr["flags"]["amx_int8"] and spr["flags"]["avx_vnni"]
    assert "AMX: amx_tile, amx_int8, amx_bf16" in facts.isa_summary(spr)
    assert facts.cpu_isa("")["cpu"] == "unknown" and not any(facts.cpu_isa("")["flags"].values())


def test_exec_type_precision_and_amx_detection():
    assert facts.exec_precision("brgconv_avx512_amx_I8") == "i8"
    assert facts.exec_precision("jit_avx512_bf16") == "bf16"
    assert facts.exec_precision("gemm_mlas_f32") == "f32"
    assert facts.amx_exec_types(["brgconv_avx512_I8", "brgemm_avx512_amx_i8", "jit_f32"]) == ["brgemm_avx512_amx_i8"]
    assert facts.isa_env("AVX512_CORE_VNNI", {})[facts.ISA_ENV] == "AVX512_CORE_VNNI"
    assert facts.ISA_ENV not in facts.isa_env(None, {})


def _event(name: str, op: str, ts: float, dur: float, cat: str = "Node") -> dict:
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"op_name": op}}


def test_ort_trace_aggregation_skips_warmup_and_divides_per_call():
    events = [_event("model_run", "", 0, 100, "Session"),  # warm-up call: left out
              _event("conv_kernel_time", "QLinearConv", 10, 5000),
              _event("model_run", "", 1000, 100, "Session"), _event("model_run", "", 2000, 100, "Session"),
              _event("conv_fence_before", "QLinearConv", 1005, 1),  # not a kernel time
              _event("conv_kernel_time", "QLinearConv", 1010, 300),
              _event("conv_kernel_time", "QLinearConv", 2010, 500),
              _event("q_kernel_time", "QuantizeLinear", 1020, 100),
              _event("q_kernel_time", "QuantizeLinear", 2020, 100),
              _event("mm_kernel_time", "MatMul", 1030, 200), _event("mm_kernel_time", "MatMul", 2030, 200),
              _event("sm_kernel_time", "Softmax", 1040, 100), _event("sm_kernel_time", "Softmax", 2040, 100)]
    agg = profile.aggregate_ort_trace(events, skip_runs=1)
    assert agg["total_ms"] == pytest.approx((400 + 100 + 200 + 100) / 1000)
    top = agg["by_op_type"][0]
    assert (top["name"], top["count"]) == ("QLinearConv", 1) and top["share"] == pytest.approx(0.5)
    assert agg["compute_by_precision"]["int8"] == {"count": 1, "ms": pytest.approx(0.4)}
    assert agg["compute_by_precision"]["float"]["ms"] == pytest.approx(0.2)
    assert agg["qdq_ms"] == pytest.approx(0.1) and agg["softmax_ms"] == pytest.approx(0.1)


def _qdq_conv(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(np.round(w / 0.02).clip(-127, 127).astype(np.int8), "wq"),
             numpy_helper.from_array(np.array(0.02, np.float32), "ws")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="/attn1/conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_openvino_counters_of_a_real_int8_conv(tmp_path):
    ov = pytest.importorskip("openvino")
    _qdq_conv(tmp_path / "conv.onnx")
    config = {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(tmp_path / "conv.onnx"), "CPU", config)
    request = compiled.create_infer_request()
    layers = []
    for _ in range(2):
        request.infer({0: np.ones((1, 8, 16, 16), np.float32)})
        layers += facts.ov_layers(request)
    assert facts.type_name(compiled.get_property("INFERENCE_PRECISION_HINT")) == "f32"
    agg = profile.aggregate_ov(layers, iters=2)
    conv = [r for r in agg["by_node_type"] if r["name"] == "Convolution"]
    assert conv and conv[0]["count"] == 1  # per call, not per call x iters
    assert agg["compute_by_precision"].get("i8", {}).get("count") == 1  # the Q/DQ conv runs an int8 kernel
    assert agg["total_ms"] == pytest.approx(sum(r["ms"] for r in agg["by_exec_type"]))
    assert agg["amx_exec_types"] == facts.amx_exec_types(r["name"] for r in agg["by_exec_type"])
    md = profile.markdown({"cpu": facts.cpu_isa(SAPPHIRE), "isa_cap": None, "threads": 1, "latent": 16,
                           "model": "conv", "command": "python benchmarks/cpu_profile.py", "profiles": {"conv": agg}})
    assert "| Convolution | 1 |" in md and "i8: 1 layers" in md
    slower = {**agg, "by_node_type": [{**r, "ms": r["ms"] + (1.0 if r["name"] == "Convolution" else 0.0)}
                                      for r in agg["by_node_type"]]}
    diff = profile.compare(slower, agg)
    assert diff[0]["name"] == "Convolution" and diff[0]["diff_ms"] == pytest.approx(1.0)


def test_report_lines_for_isa_and_ov_default():
    report = _load("sd15_report")
    result = {"cpu_isa": {**facts.cpu_isa(EPYC), "onednn_max_cpu_isa": None},
              "ov_precision": {"kernels": {"fp32": {}}, "amx_ran": [],
                               "rows": [{"label": "ov-default", "batch": 1, "latency_ms_median": 10.0,
                                         "latency_ms_p90": 11.0, "latency_ms_min": 9.0,
                                         "inference_precision": "bf16", "rel_error_vs_ov_f32": 0.004}]}}
    line = report.isa_line(result)[0]
    assert "avx512_vnni, avx512_bf16" in line and "amx" not in line.split(";")[0]
    assert "no ISA cap" in line and "no AMX kernel ran" in line
    result["cpu_isa"]["onednn_max_cpu_isa"] = "AVX512_CORE_VNNI"
    result["ov_precision"]["amx_ran"] = ["brgemm_avx512_amx_i8"]
    line = report.isa_line(result)[0]
    assert "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in line and "brgemm_avx512_amx_i8" in line
    (row,) = report.ov_precision_lines(result)
    assert row.count("|") == 12 and "ov-default (bf16" in row and "| 10.0 |" in row
    assert report.isa_line({}) == [] and report.ov_precision_lines({}) == []
