"""What ``evaluate``'s Markdown (digits and digits-text) adds to its table: the verdict, the run's
provenance, the FP | quantized | difference images and the per-step error plot. Pure functions of
the results dict, so documents regenerate from results.json alone; older results without these keys
still render (the sections are left out).
"""

from __future__ import annotations

from typing import Any

from tfmq_export.workflows.report_parts import provenance_lines, quality_phrase, verdict_line
from tfmq_export.workflows.step_errors import step_error_lines

__all__ = ["evaluate_sections", "evaluate_verdict", "row_name"]


def row_name(row: dict[str, Any]) -> str:
    """``tfmq-w4a8`` for a method row (the name of its artifact, samples and images)."""
    return f"{row['method']}-w{row['wbits']}a{row['abits']}"


def evaluate_verdict(rows: list[dict[str, Any]], metric: str = "fid", metric_name: str = "digits-FID") -> list[str]:
    """One line per quantized row: within or outside the FP seed-to-seed difference of ``metric``, with
    the paired pixel RMSE; evaluate times nothing (``tfmq-export bench`` does)."""
    fp = [r for r in rows if r["method"] == "fp"]
    if not fp:
        return []
    noise = abs(fp[0][metric] - fp[-1][metric])
    lines = []
    for r in rows:
        if r["method"] in ("fp", "real"):
            continue
        quality = quality_phrase(r[metric] - fp[0][metric], noise, metric_name, rmse=r.get("rmse_vs_fp"))
        lines.append(verdict_line(f"{r['method']} W{r['wbits']}A{r['abits']}", quality))
    return lines


def evaluate_sections(results: dict[str, Any], links: dict[str, Any] | None = None) -> list[str]:
    """Provenance, comparison images and per-step errors of ``results`` (each when present). ``links``
    replaces the image paths recorded in ``results`` (relative to the run folder) by where the
    published document finds them: ``{"comparisons": {name: path}, "step_plot": path}``."""
    links = links or {}
    lines: list[str] = []
    if results.get("provenance"):
        lines += ["", "## Run", "", *provenance_lines(results["provenance"])]
    if results.get("skipped"):
        lines.append(f"- Rows left out of this run (`--skip`, not measured): {', '.join(results['skipped'])}")
    comparisons = links.get("comparisons", results.get("comparisons") or {})
    if comparisons:
        lines += ["", "## FP vs quantized from the same noise", "",
                  "Each image: FP samples (left), the setting's samples from the same noise (middle), 4 x |quantized "
                  "- FP| (right, black = identical).", ""]
        lines += [f"- `{name}`: ![{name}: FP | quantized | difference]({path})" for name, path in comparisons.items()]
    if results.get("step_errors"):
        lines += step_error_lines(results["step_errors"], links.get("step_plot", results.get("step_error_plot")))
    return lines
