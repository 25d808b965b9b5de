"""The pipeline bench's verdict and provenance: speed-ups of the quantized pipelines, computed from the rows."""

from __future__ import annotations

from typing import Any

from tfmq_export.workflows.report_parts import provenance_lines, speedup_phrase

__all__ = ["pipeline_report_lines", "pipeline_verdict"]

#: full-precision rows a quantized pipeline is compared with, in order of preference per backend
FP_PRECISIONS = ("fp16", "fp32", "ov-default")


def pipeline_verdict(runs: list[dict[str, Any]]) -> list[str]:
    """One line per quantized row: whole-pipeline and UNet-call speed-ups over each full-precision row of
    the same backend, and the images' error against the reference run; pure."""
    lines = []
    for row in runs:
        if row["precision"] in FP_PRECISIONS:
            continue
        bases = [r for r in runs if r["backend"] == row["backend"] and r["precision"] in FP_PRECISIONS]
        error = row.get("images_rel_error_vs_reference")
        quality = "images not compared" if error is None else f"images rel. error {error:.2e} vs the reference"
        if not bases:
            lines.append(f"{row['label']}: no full-precision pipeline on {row['backend']} to compare with; {quality}")
            continue
        parts = []
        for base in bases:
            whole = base["stages"]["pipeline"] / row["stages"]["pipeline"]
            unet = base["stages"]["unet"] / row["stages"]["unet"]
            parts.append(f"vs {base['label']}: whole pipeline {speedup_phrase(whole)}, "
                         f"UNet call {speedup_phrase(unet)}")
        lines.append(f"{row['label']}: " + "; ".join(parts) + f"; {quality}")
    return lines or ["no quantized pipeline timed: nothing to compare (see the rows)"]


def pipeline_report_lines(result: dict[str, Any], format_row: Any) -> list[str]:
    """What the terminal shows: the verdict first, one line per row, then the provenance."""
    lines = [f"Verdict: {v}" for v in result.get("verdict") or pipeline_verdict(result["runs"])]
    lines += [format_row(row) for row in result["runs"]]
    if result.get("provenance"):
        lines += provenance_lines(result["provenance"])
    return lines
