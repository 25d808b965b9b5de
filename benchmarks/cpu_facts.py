"""What a CPU timing depends on and what OpenVINO did with it: ISA flags, kernel types, default precision.

Why: issue 12 found our W8A8 level with NNCF on an AVX512-VNNI CPU without AMX while it led on an
AMX Xeon. A CPU figure is only meaningful with the ISA it ran on, and on an AMX machine a VNNI-only
CPU is emulated through oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``), which must be checked against the
kernels that actually ran (``exec_type`` of OpenVINO's performance counters, e.g.
``brgconv_avx512_amx_i8`` vs ``brgconv_avx512_I8``).

``ONEDNN_MAX_CPU_ISA`` is read by oneDNN once, at its first use: it has to be in the environment
before ``openvino`` is imported. ``benchmarks/sd15_cpu.py`` passes it to its child processes (the
bench and ``python benchmarks/cpu_facts.py --ov-child``), ``benchmarks/cpu_profile.py`` sets it at
process start.

Observed with OpenVINO 2026.4 on an AMX Xeon: the cap removes the AMX kernels, but the CPU plugin's
*default* inference precision still follows the CPU's own flags (bf16 with AVX512-BF16/AMX), so under
``AVX512_CORE_VNNI`` an ``ov-default`` row runs bf16 through non-native (``jit_avx512_bf16``)
kernels. A VNNI + BF16 CPU without AMX (the AMD EPYC of issue 12) is closer to
``AVX512_CORE_BF16``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["ISA_ENV", "ISA_FLAGS", "amx_exec_types", "cpu_isa", "exec_precision", "isa_env", "isa_summary",
           "ov_feed", "ov_layers", "run_ov_child", "type_name", "unet_feed"]

#: the /proc/cpuinfo flags int8 / bf16 CPU inference speed depends on
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "amx_fp16")
#: oneDNN's ISA cap (OpenVINO's CPU plugin and torch each read it at their first oneDNN call)
ISA_ENV = "ONEDNN_MAX_CPU_ISA"


def cpu_isa(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """CPU model and the ISA flags above, from /proc/cpuinfo's text (read when not given)."""
    if cpuinfo_text is None:
        cpuinfo_text = ""
        with contextlib.suppress(OSError):
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
    model, flags = "unknown", set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return {"cpu": model, "flags": {f: f in flags for f in ISA_FLAGS}}


def isa_summary(isa: dict[str, Any]) -> str:
    """One line for a report: ``VNNI: avx512_vnni, avx_vnni; BF16: avx512_bf16; AMX: none``."""
    flags = isa.get("flags", {})

    def present(*names: str) -> str:
        have = [n for n in names if flags.get(n)]
        return ", ".join(have) if have else "none"

    return (f"VNNI: {present('avx512_vnni', 'avx_vnni')}; BF16: {present('avx512_bf16')}; "
            f"AMX: {present('amx_tile', 'amx_int8', 'amx_bf16')}")


def isa_env(cap: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment with the oneDNN ISA cap set (``cap`` None: the parent's, unchanged)."""
    env = dict(os.environ if base is None else base)
    if cap:
        env[ISA_ENV] = cap
    return env


def exec_precision(exec_type: str) -> str:
    """The precision suffix of an OpenVINO exec type, lower case: ``brgconv_avx512_amx_I8`` -> ``i8``."""
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return tail if tail in ("i8", "u8", "f32", "bf16", "f16", "i32", "i64", "u1", "boolean") else "other"


def amx_exec_types(exec_types: Iterable[str]) -> list[str]:
    """The exec types that name an AMX kernel (must be none under an ISA cap below AMX)."""
    return sorted({e for e in exec_types if "amx" in e.lower()})


def ov_layers(request: Any) -> list[dict[str, Any]]:
    """Executed layers of an OpenVINO infer request compiled with ``PERF_COUNT``: type, kernel, µs."""
    rows = []
    for p in request.get_profiling_info():
        if str(p.status).rsplit(".", 1)[-1] != "EXECUTED":
            continue
        rows.append({"node_name": p.node_name, "node_type": p.node_type, "exec_type": p.exec_type,
                     "real_time_us": p.real_time.total_seconds() * 1e6})
    return rows


# --- the OpenVINO child of sd15_cpu.py: ov-default vs forced f32, and the kernels every engine ran ------


def unet_feed(names: list[str], sample_shape: list[int], cond_shape: list[int], batch: int = 1,
              seed: int = 0) -> dict[int, Any]:
    """Seeded UNet inputs by input index: x ~ N(0, 1), step 0, a random condition."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feed: dict[int, Any] = {}
    for i, name in enumerate(names):
        if "step" in name or "time" in name:
            feed[i] = np.zeros(batch, dtype=np.int64)
        elif "encoder" in name:
            feed[i] = rng.standard_normal((batch, *cond_shape), dtype=np.float32)
        else:
            feed[i] = rng.standard_normal((batch, *sample_shape), dtype=np.float32)
    return feed


def ov_feed(compiled: Any, sample_shape: list[int], cond_shape: list[int], batch: int = 1,
            seed: int = 0) -> dict[int, Any]:
    """``unet_feed`` for an OpenVINO compiled model (its ports named as the UNet contract names them)."""
    from tfmq_export.backends.openvino.ir import contract_input_name

    return unet_feed([contract_input_name(p) for p in compiled.inputs], sample_shape, cond_shape, batch, seed)


def type_name(value: Any) -> str:
    """``bf16`` / ``f32`` for an OpenVINO element type property (``str`` gives ``<Type: 'bfloat16'>``)."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


def _time_precisions(core: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Forced f32 and the plugin's default precision on the FP32 IR, round robin, per batch."""
    import numpy as np

    base = {"INFERENCE_NUM_THREADS": payload["threads"]}
    configs = {"ov-f32": {**base, "INFERENCE_PRECISION_HINT": "f32"}, "ov-default": base}
    compiled = {k: core.compile_model(payload["fp32_xml"], "CPU", c) for k, c in configs.items()}
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    rows = []
    for batch in payload["batches"]:
        feed = ov_feed(compiled["ov-f32"], payload["sample_shape"], payload["cond_shape"], batch, payload["seed"])
        times: dict[str, list[float]] = {k: [] for k in configs}
        outputs = {}
        for i in range(payload["warmup"] + payload["iters"]):
            for key, request in requests.items():
                time.sleep(payload["pause_ms"] / 1000)
                started = time.perf_counter()
                request.infer(feed)
                if i >= payload["warmup"]:
                    times[key].append((time.perf_counter() - started) * 1000)
                outputs[key] = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        ref = outputs["ov-f32"]
        for key, values in times.items():
            err = float(np.linalg.norm(outputs[key] - ref) / max(np.linalg.norm(ref), 1e-12))
            rows.append({"label": key, "batch": batch, "latency_ms_median": statistics.median(values),
                         "latency_ms_p90": sorted(values)[int(0.9 * (len(values) - 1))], "latency_ms_min": min(values),
                         "inference_precision": type_name(compiled[key].get_property("INFERENCE_PRECISION_HINT")),
                         "rel_error_vs_ov_f32": err, "iters": len(values)})
    return {"rows": rows}


def _kernels(core: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Per engine (and precision setting): the set of exec types one PERF_COUNT inference ran."""
    out = {}
    for label, (xml, hint) in payload["engines"].items():
        config = {"INFERENCE_NUM_THREADS": payload["threads"], "PERF_COUNT": True}
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        compiled = core.compile_model(xml, "CPU", config)
        request = compiled.create_infer_request()
        request.infer(ov_feed(compiled, payload["sample_shape"], payload["cond_shape"], 1, payload["seed"]))
        types = sorted({r["exec_type"] for r in ov_layers(request)})
        out[label] = {"exec_types": types, "amx_exec_types": amx_exec_types(types),
                      "inference_precision": type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    return out


def ov_child_main(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process (the ISA cap in its environment before ``openvino`` is imported)."""
    import openvino as ov

    core = ov.Core()
    result = {"isa_cap": os.environ.get(ISA_ENV), "default_precision": type_name(core.get_property(
        "CPU", "INFERENCE_PRECISION_HINT"))}
    result.update(_time_precisions(core, payload) if payload.get("iters") else {"rows": []})
    result["kernels"] = _kernels(core, payload)
    result["amx_ran"] = sorted({e for k in result["kernels"].values() for e in k["amx_exec_types"]})
    return result


def run_ov_child(payload: dict[str, Any], isa_cap: str | None, timeout_s: float = 3600) -> dict[str, Any]:
    """``ov_child_main`` in a child process with ``ONEDNN_MAX_CPU_ISA=isa_cap``; its JSON result."""
    import subprocess

    proc = subprocess.run([sys.executable, __file__, "--ov-child", json.dumps(payload)], env=isa_env(isa_cap),
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"OpenVINO child failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--ov-child":
        print(json.dumps(ov_child_main(json.loads(sys.argv[2]))))
    else:
        print(json.dumps({**cpu_isa(), "isa_cap": os.environ.get(ISA_ENV)}, indent=2))
