"""The demo's report.md, written from its report.json data alone (pure: data in, Markdown out).

Order: the verdict (speed and image quality of each quantized setting, computed from the figures),
the run's provenance, the digits table with each setting's FP | quantized | difference image, the
per-step error plot, the UNet latencies, the text-to-image part.
"""

from __future__ import annotations

from typing import Any

from tfmq_export.workflows.demo_text import text_demo_lines
from tfmq_export.workflows.report_parts import provenance_lines, quality_phrase, setting_label, verdict_line
from tfmq_export.workflows.step_errors import step_error_lines

__all__ = ["demo_markdown", "demo_verdict", "onnx_speedups"]


def onnx_speedups(bench_runs: list[dict[str, Any]], precision: str, baseline: str = "fp32") -> list[tuple[int, float]]:
    """(batch, baseline median latency / ``precision``'s) for every batch onnxruntime timed both at."""
    ort = {(r["precision"], r["batch"]): r["latency_ms_median"] for r in bench_runs if r["backend"] == "onnxruntime"}
    return [(b, ort[(baseline, b)] / ort[(precision, b)]) for b in sorted({b for _, b in ort})
            if (baseline, b) in ort and (precision, b) in ort and ort[(precision, b)] > 0]


def demo_verdict(data: dict[str, Any]) -> list[str]:
    """One line per quantized setting (digits, then digits-text), computed from ``data``."""
    rows = data["rows"]
    fp, noise = rows[0], data["fp_seed_noise"]["fid_noise"]
    lines = []
    for r in rows[1:]:
        quality = quality_phrase(r["fid"] - fp["fid"], noise, "digits-FID", rmse=r["rmse_vs_fp"])
        lines.append(verdict_line(setting_label(r["setting"]), quality,
                                  onnx_speedups(data["bench"], r["setting"].split("-")[-1])))
    text = data.get("text") or []
    for r in text[1:]:
        lines.append(f"digits-text {setting_label(r['setting'])}: prompt accuracy {r['accuracy']:.3f} vs FP "
                     f"{text[0]['accuracy']:.3f} ({r['accuracy'] - text[0]['accuracy']:+.3f}), pixel RMSE to FP "
                     f"from the same noise {r['rmse_vs_fp']:.4f} (not timed)")
    return lines


def _size_note(rows: list[dict[str, Any]]) -> list[str]:
    """Why W8A8 and W4A8 graphs weigh the same (a reader expects W4 to be half)."""
    bits = {r["setting"].split("-")[-1]: r["onnx_bytes"] for r in rows}
    if "w8a8" not in bits or "w4a8" not in bits:
        return []
    return ["", f"ONNX bytes: W4A8 {bits['w4a8']:,} vs W8A8 {bits['w8a8']:,}. The exporter writes 4-bit weights "
            "as INT8 initializers (values in [-8, 7]) next to INT8 activations; it packs INT4 (two a byte) only",
            "for W4A16 MatMul/Gemm weights, as blocked DequantizeLinear, the INT4 form TensorRT accepts. So W4A8",
            "and W8A8 files weigh about the same: the 4-bit grid changes the values, not the storage."]


def _bench_lines(bench_runs: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## UNet latency per call", "", "Median / p90 ms, measured side by side in one run:", "",
             "| backend | precision | batch | median ms | p90 ms | images/s | peak MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in bench_runs:
        mem = "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['latency_ms_median']:.2f} | "
                     f"{r['latency_ms_p90']:.2f} | {r['images_per_s']:.1f} | {mem} |")
    lines += [f"\nonnxruntime W8A8 speed-up over FP32 at batch {b}: {ratio:.2f}x "
              f"({'faster' if ratio >= 1 else f'i.e. {1 / ratio:.1f}x slower'})"
              for b, ratio in onnx_speedups(bench_runs, "w8a8")]
    return lines


def demo_markdown(data: dict[str, Any]) -> str:
    """report.md from report.json's data: verdict first, then provenance, tables and images."""
    rows, noise = data["rows"], data["fp_seed_noise"]
    verdict = data.get("verdict") or demo_verdict(data)
    lines = ["# tfmq-export demo on the bundled digits model", "", "Verdict (computed from the figures below):",
             *[f"- {v}" for v in verdict], "", "## Run", "", *provenance_lines(data["provenance"]), "",
             "## Digits: quality of the exported graphs", "",
             f"digits-FID over {data['num_images']} samples (DDIM, seed {data['seed']}), sampled by onnxruntime from "
             f"the exported graphs; FP with seed {noise['seed']}: {noise['fid']:.3f} (the metric's seed-to-seed "
             f"noise: {noise['fid_noise']:.3f});",
             f"real-vs-real floor (two halves of the 1,797 real digits): {data['real_floor_fid']:.3f}", "",
             "RMSE vs FP: pixel RMSE to the FP32 samples drawn from the same noise (FID at this sample size moves",
             "by several points between seeds; see docs/RESULTS.md for 5,000-sample figures).", "",
             "| setting | digits-FID | RMSE vs FP | calibration s | ONNX bytes | FP / quantized / difference |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        link = data.get("comparisons", {}).get(r["setting"])
        image = f"[{r['setting']}]({link})" if link else f"[grid](grids/{r['setting']}.png)"
        lines.append(f"| {r['setting']} | {r['fid']:.3f} | {r['rmse_vs_fp']:.4f} | {r['calib_seconds']} | "
                     f"{r['onnx_bytes']:,} | {image} |")
    lines += _size_note(rows)
    if data.get("comparisons"):
        lines += ["", "Each image: FP samples (left), the quantized setting's from the same noise (middle), and "
                  "4 x |quantized - FP| (right, black = identical).", ""]
        lines += [f"![{name}: FP | quantized | difference]({link})" for name, link in data["comparisons"].items()]
    if data.get("step_errors"):
        lines += step_error_lines(data["step_errors"], data.get("step_error_plot"))
    lines += _bench_lines(data["bench"])
    lines += text_demo_lines(data.get("text") or [], data.get("text_per_digit", 0))
    return "\n".join(lines) + "\n"
