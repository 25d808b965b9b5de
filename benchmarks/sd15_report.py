"""docs/BENCHMARKS.md from a ``benchmarks/sd15_cpu.py`` bench JSON: every variant, the ratios, the verdicts.

Kept apart from the stages that produce the numbers, so ``python benchmarks/sd15_cpu.py --report-only
FILE`` rewrites the report without importing anything heavy.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

__all__ = ["NOTES_MARKER", "isa_line", "ov_precision_lines", "targets", "write_report"]

#: targets the report checks (the project's CPU targets, issue 4)
TARGET_OV_VS_FP32 = 2.8
TARGET_ORT_VS_FP32 = 2.0
TARGET_SIZE_RATIO = 0.27
#: docs/BENCHMARKS.md: everything below this line is written by hand and kept by the script
NOTES_MARKER = "<!-- hand-written notes below: kept when the script rewrites the tables above -->"


def _pick(result: dict[str, Any], backend: str, precision: str, batch: int, target: str | None = None):
    for row in result["runs"]:
        if row["backend"] == backend and row["precision"] == precision and row["batch"] == batch and (
                target is None or row.get("target") == target):
            return row
    return None


#: the least number of quiet rounds for the verdicts to use quiet-round medians
MIN_QUIET_ROUNDS = 5


def _key(result: dict[str, Any]) -> str:
    """Latency the verdicts use: the quiet-round median when enough rounds were quiet, else the median."""
    quiet = [r.get("quiet_rounds") or 0 for r in result["runs"]]
    return "latency_ms_median_quiet" if quiet and min(quiet) >= MIN_QUIET_ROUNDS else "latency_ms_median"


def _ratio(num: dict | None, den: dict | None, key: str = "latency_ms_median") -> float | None:
    if num is None or den is None or not num.get(key) or not den.get(key):
        return None
    return den[key] / num[key]


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, per batch: measured ratio, goal, met or not."""
    out = []
    key = _key(result)
    for batch in sorted({r["batch"] for r in result["runs"]}):
        ov_fp32 = _pick(result, "openvino", "fp32", batch)
        nncf = _pick(result, "openvino", "nncf-int8", batch)
        ort_fp32 = _pick(result, "onnxruntime", "fp32", batch)
        ort_w8 = _pick(result, "onnxruntime", "w8a8", batch)
        ov_w8 = [r for r in result["runs"] if r["backend"] == "openvino" and r["precision"] == "w8a8"
                 and r["batch"] == batch]
        largest_ov = max(ov_w8, key=lambda r: r["model_bytes"]) if ov_w8 else None
        for row in ov_w8:
            tag = f"OpenVINO W8A8 ({row.get('target', '?')} graph)"
            out.append(_target(batch, f"{tag} vs OpenVINO FP32, speed-up", TARGET_OV_VS_FP32, row, ov_fp32, key))
            out.append(_target(batch, f"{tag} vs NNCF INT8, speed-up", 1.0, row, nncf, key, "(no slower)"))
        out.append(_target(batch, "onnxruntime W8A8 vs onnxruntime FP32, speed-up", TARGET_ORT_VS_FP32, ort_w8,
                           ort_fp32, key))
        if batch != min(r["batch"] for r in result["runs"]):
            continue  # sizes do not depend on the batch
        for what, w8, fp in (("OpenVINO IR", largest_ov, ov_fp32), ("ONNX, onnxruntime target", ort_w8, ort_fp32)):
            if w8 is not None and fp is not None:
                size = w8["model_bytes"] / fp["model_bytes"]
                out.append({"batch": "-", "what": f"model size W8A8 / FP32 ({what})",
                            "goal": f"<= {TARGET_SIZE_RATIO}x", "value": size, "met": size <= TARGET_SIZE_RATIO})
    return out


def _target(batch: int, what: str, goal: float, row: dict | None, base: dict | None, key: str,
            note: str = "") -> dict[str, Any]:
    value = _ratio(row, base, key)
    return {"batch": batch, "what": what, "goal": f">= {goal}x {note}".strip(), "value": value,
            "all_rounds": _ratio(row, base), "met": _met(value, goal)}


def _batch_loads(result: dict[str, Any]) -> dict[int, list[float]]:
    return {r["batch"]: r["load_avg_1min_before_after"] for r in result["runs"] if "load_avg_1min_before_after" in r}


def _met(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def isa_line(result: dict[str, Any]) -> list[str]:
    """The machine lines on the ISA (issue 12): /proc/cpuinfo flags and oneDNN's cap, when recorded."""
    isa = result.get("cpu_isa")
    if not isa:
        return []
    flags = isa.get("flags", {})
    have = [f for f, on in flags.items() if on and ("vnni" in f or "bf16" in f or "amx" in f)]
    cap = isa.get("onednn_max_cpu_isa")
    kernels = result.get("ov_precision", {})
    line = (f"- ISA flags (/proc/cpuinfo): {', '.join(have) or 'no VNNI / BF16 / AMX'}; OpenVINO variants run with "
            + (f"`ONEDNN_MAX_CPU_ISA={cap}`" if cap else "no ISA cap"))
    if kernels.get("kernels"):
        amx = kernels.get("amx_ran", [])
        line += (f"; AMX kernels that ran: {', '.join(amx)}" if amx else "; no AMX kernel ran (exec types of every "
                 "OpenVINO engine, `ov_precision.kernels` in the JSON)")
    return [line]


def ov_precision_lines(result: dict[str, Any]) -> list[str]:
    """Table rows for ``ov-default`` (OpenVINO's own inference precision) beside forced f32.

    Timed in their own round robin after the bench (``benchmarks/cpu_facts.py``), so they are
    rows of their own: compare them with each other, not with the bench's medians.
    """
    ov = result.get("ov_precision", {})
    lines = []
    for row in ov.get("rows", []):
        lines.append(f"| OpenVINO FP32 {row['label']} ({row['inference_precision']}; separate round robin) | "
                     f"{row['batch']} | {row['latency_ms_median']:.1f} | n/a | {row['latency_ms_p90']:.1f} | "
                     f"{row['latency_ms_min']:.1f} | n/a | n/a | n/a | n/a | "
                     f"{row['rel_error_vs_ov_f32']:.4f} vs OpenVINO f32 |")
    return lines


def write_report(result: dict[str, Any], command: list[str], extra: dict[str, Any], path: Path) -> str:
    """``docs/BENCHMARKS.md``: the command, the machine, every variant, the ratios, the verdicts."""
    machine = result["machine"]
    load = extra.get("load", {})
    lines = [
        "# Benchmarks: SD-1.5-architecture UNet on CPU",
        "",
        "Generated by `python benchmarks/sd15_cpu.py` (do not edit by hand; rerun the script).",
        "Model: `sd15-arch`, the Stable Diffusion 1.5 UNet architecture (859.5 M parameters) with random "
        "weights, so speed, memory and size are real while the outputs are meaningless (no quality claims "
        "are made from them).",
        "",
        "## Command",
        "",
        "```",
        " ".join(shlex.quote(c) for c in command),
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu')} ({machine.get('cpu_count')} logical cores visible; AVX512-VNNI: "
        f"{machine.get('avx512_vnni')}, AMX: {machine.get('amx')})",
        *isa_line(result),
        f"- threads per backend: {machine.get('threads')}; onnxruntime {machine.get('onnxruntime')}, "
        f"OpenVINO {machine.get('openvino')}, NNCF {machine.get('nncf')}, torch {machine.get('torch')}",
        f"- 1-minute load average: {_fmt(machine.get('load_avg_start', [None])[0])} when timing started, "
        f"{_fmt(machine.get('load_avg_end', [None])[0])} when it ended"
        + ("" if load.get("quiet", True) else
           f" (the machine never got quiet: it was shared with other jobs, waited {load.get('waited_s', 0) // 60} "
           "min, so absolute times are inflated; ratios come from round-robin timing and are fairer)"),
        "- 1-minute load average just before / after the round-robin UNet calls (batches interleaved; the "
        f"bench's own {machine.get('threads')} threads count about {machine.get('threads')}): "
        + " / ".join(str(x) for x in next(iter(_batch_loads(result).values()), ["n/a"])),
        f"- latents {result['sample_shape'][1]}x{result['sample_shape'][2]}, "
        f"encoder_hidden_states [B, 77, 768], DDIM {result['runs'][0]['sampling_steps']} steps (the temporal "
        "table's rows)",
        "",
        "## Every variant",
        "",
        "Latency is one UNet call (median / p90 over round-robin iterations, a 100 ms pause before each "
        "call). `sampling s` is a full DDIM run (UNet calls + scheduler updates) with the variants taking "
        "turns step by step; `images/s` = batch / sampling s (measured, see the basis column). `rel. error` "
        "is the relative L2 error of one UNet output against torch FP32 on the same inputs (step 0, random "
        "latents and condition).",
        "",
        "| variant | batch | median ms | quiet-round median ms | p90 ms | min ms | sampling s | images/s (basis) "
        "| peak MB | model MB | rel. error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        basis = "measured" if row.get("images_per_s_basis", "").startswith("measured") else "derived"
        lines.append(
            f"| {row['label']} | {row['batch']} | {row['latency_ms_median']:.1f} | "
            f"{_fmt(row.get('latency_ms_median_quiet'), '.1f')} | {row['latency_ms_p90']:.1f} | "
            f"{row['latency_ms_min']:.1f} | {_fmt(row.get('sampling_s_median'))} | "
            f"{row['images_per_s']:.3f} ({basis}) | "
            f"{_fmt(row.get('peak_mem_mb'), '.0f')} | {row['model_bytes'] / 1e6:.0f} | "
            f"{_fmt(row.get('rel_error_vs_reference'), '.4f')} |"
        )
    lines += ov_precision_lines(result)
    for skipped in result.get("skipped", []):
        lines.append(f"| {skipped['label']} | - | skipped: {skipped['reason']} | | | | | | | | |")
    key = _key(result)
    quiet = min((r.get("quiet_rounds") or 0) for r in result["runs"])
    basis = (f"quiet-round medians ({quiet} of {result['runs'][0]['iters']} rounds quiet: rounds in which other "
             "jobs slowed every variant are left out, see `tfmq_export.workflows.bench.timing.quiet_rounds`)"
             if key == "latency_ms_median_quiet" else "medians over all rounds")
    lines += ["", "## Targets", "", f"Speed-ups are ratios of {basis}; `all rounds` gives the ratio of the plain "
              "medians.", "", "| batch | ratio | goal | measured | all rounds | met |",
              "| --- | --- | --- | --- | --- | --- |"]
    verdicts = targets(result)
    for t in verdicts:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['batch']} | {t['what']} | {t['goal']} | {_fmt(t['value'], '.2f', 'x')} | "
                     f"{_fmt(t.get('all_rounds'), '.2f', 'x')} | {met} |")
    met = [t for t in verdicts if t["met"]]
    missed = [t for t in verdicts if t["met"] is False]
    lines += ["", f"Met: {len(met)} of {len(verdicts)}."
              + (" Not met: " + "; ".join(f"{t['what']} at batch {t['batch']} ({_fmt(t['value'], '.2f', 'x')})"
                                          for t in missed) + "." if missed else "")]
    if extra.get("fusion"):
        lines += ["", "## onnxruntime: what the optimiser fused", "",
                  "From `build_onnxruntime_engine`'s manifests (graph optimisation level `extended`):", "",
                  "| graph | QLinearConv | MatMulIntegerToFloat | QLinearMatMul | QGemm | weight DQ in source | "
                  "weight DQ left unfused | QuantizeLinear | DequantizeLinear |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in extra["fusion"].items():
            lines.append(f"| {name} | {m['QLinearConv']} | {m['MatMulIntegerToFloat']} | {m['QLinearMatMul']} | "
                         f"{m['QGemm']} | {m['weight_dequantize_in_source']} | {m['unfused_weight_dequantize']} | "
                         f"{m['QuantizeLinear']} | {m['DequantizeLinear']} |")
    if extra.get("openvino"):
        lines += ["", "## OpenVINO: runtime precision of the weight layers", "",
                  "From the IR manifests (`compiled_cpu_layer_precisions`, CPU plugin, f32 inference precision):", ""]
        for name, counts in extra["openvino"].items():
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    text = "\n".join(lines) + "\n"
    # hand-written analysis below the marker survives regeneration
    kept = path.read_text().split(NOTES_MARKER, 1)[1] if path.is_file() and NOTES_MARKER in path.read_text() else "\n"
    text += f"\n{NOTES_MARKER}{kept}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text
