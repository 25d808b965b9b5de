"""What ``evaluate``'s Markdown (digits and digits-text) adds to its table: the verdict, the rows
aggregated over calibration seeds with the lead rule, the run's provenance, the FP | quantized |
difference images and the per-step error plot. Pure functions of the results dict, so documents
regenerate from results.json alone; older results without these keys still render (the sections are
left out, a row without ``calib_seed`` counts as calibration seed 0).

The lead rule: method A leads method B at a bit setting only where B's mean minus A's mean (lower is
better; the reverse for accuracies) exceeds the larger of the two spreads, spread = max - min over
the calibration seeds. A single-seed row has no measured spread, so no lead is claimed from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tfmq_export.workflows.report_parts import provenance_lines, quality_phrase, verdict_line
from tfmq_export.workflows.step_errors import step_error_lines

__all__ = ["DIGITS_METRICS", "LEAD_RULE", "TEXT_METRICS", "aggregate_rows", "compare_phrase", "evaluate_sections",
           "evaluate_verdict", "lead", "row_name", "seed_lines"]

#: (key in a row, name in the report, higher is better) of the metrics compared across methods.
DIGITS_METRICS: tuple[tuple[str, str, bool], ...] = (("rmse_vs_fp", "paired RMSE", False), ("fid", "digits-FID", False))
TEXT_METRICS = (*DIGITS_METRICS, ("accuracy", "guided prompt accuracy", True),
                ("accuracy_unguided", "unguided prompt accuracy", True))
LEAD_RULE = ("A method leads another at a bit setting only where its mean is better by more than the larger of "
             "the two spreads (spread = max - min over calibration seeds); a single seed has no measured spread, "
             "so no lead is claimed from one seed.")
NOT_METHODS = ("fp", "real")


def row_name(row: dict[str, Any]) -> str:
    """``tfmq-w4a8`` for a method row at calibration seed 0, ``tfmq-w4a8-cs1`` at seed 1 (the name of its
    artifact, samples and images)."""
    seed = row.get("calib_seed") or 0
    return f"{row['method']}-w{row['wbits']}a{row['abits']}" + (f"-cs{seed}" if seed else "")


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "spread": max(values) - min(values), "min": min(values),
            "max": max(values)}


def aggregate_rows(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = ("rmse_vs_fp", "fid")) -> list[dict]:
    """One entry per method x bits (quantized rows, in table order): ``calib_seeds``, ``n``, the mean
    calibration seconds, the first ``note`` and per metric ``{"mean", "spread", "min", "max"}``
    (spread = max - min over the calibration seeds; a metric some seed lacks is left out)."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r["method"] not in NOT_METHODS:
            groups.setdefault((r["method"], r["wbits"], r["abits"]), []).append(r)
    out = []
    for (method, wbits, abits), members in groups.items():
        entry: dict[str, Any] = {
            "method": method, "wbits": wbits, "abits": abits, "n": len(members),
            "calib_seeds": [r.get("calib_seed") or 0 for r in members],
            "calib_seconds": sum(r.get("calib_seconds") or 0.0 for r in members) / len(members),
            "note": next((r["note"] for r in members if r.get("note")), None)}
        for metric in metrics:
            values = [r.get(metric) for r in members]
            if all(v is not None for v in values):
                entry[metric] = _stats([float(v) for v in values])
        out.append(entry)
    return out


def lead(a: dict[str, Any], b: dict[str, Any], metric: str, higher_is_better: bool = False) -> tuple[bool, float,
                                                                                                      float]:
    """(``a`` leads ``b`` by the lead rule, margin = how much better ``a``'s mean is (negative: worse),
    threshold = the larger spread); aggregated entries (``aggregate_rows``)."""
    margin = b[metric]["mean"] - a[metric]["mean"]
    margin = -margin if higher_is_better else margin
    threshold = max(a[metric]["spread"], b[metric]["spread"])
    return margin > threshold and min(a["n"], b["n"]) >= 2, margin, threshold


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric == "rmse_vs_fp" else f"{value:.3f}"


def compare_phrase(a: dict[str, Any], b: dict[str, Any], metric: str, name: str, higher_is_better: bool = False) -> str:
    """``paired RMSE 0.0476 vs 0.0496 (3 / 3 seeds): tfmq leads qdiff by 0.0020 > spread 0.0015``, or
    why it does not."""
    won, margin, threshold = lead(a, b, metric, higher_is_better)
    lost, _, _ = lead(b, a, metric, higher_is_better)
    ma, mb = a["method"], b["method"]
    head = (f"{name} {_fmt(metric, a[metric]['mean'])} vs {_fmt(metric, b[metric]['mean'])} "
            f"({a['n']} / {b['n']} seeds)")
    if won:
        return f"{head}: {ma} leads {mb} by {_fmt(metric, margin)} > spread {_fmt(metric, threshold)}"
    if lost:
        return f"{head}: {mb} leads {ma} by {_fmt(metric, -margin)} > spread {_fmt(metric, threshold)}"
    if min(a["n"], b["n"]) < 2:
        side = "ahead" if margin > 0 else "behind"
        return f"{head}: {ma} {side} by {_fmt(metric, abs(margin))} on a single seed (spread not measured, no lead)"
    return (f"{head}: no lead ({ma} {'better' if margin > 0 else 'worse'} by {_fmt(metric, abs(margin))}, within "
            f"spread {_fmt(metric, threshold)})")


def _find(entries: list[dict[str, Any]], method: str, wbits: int, abits: int) -> dict[str, Any] | None:
    return next((e for e in entries if (e["method"], e["wbits"], e["abits"]) == (method, wbits, abits)), None)


def _comparisons(entries: list[dict[str, Any]], metrics: Sequence[tuple[str, str, bool]]) -> list[str]:
    """tfmq against qdiff and minmax at W4A8 (every metric), against the ModelOpt peers in paired RMSE."""
    lines = []
    pairs = [("tfmq", (4, 8), "qdiff", (4, 8), metrics), ("tfmq", (4, 8), "minmax", (4, 8), metrics),
             ("tfmq", (4, 8), "modelopt-w4a16", (4, 16), metrics[:1]),
             ("tfmq", (8, 8), "modelopt-int8", (8, 8), metrics[:1])]
    for ma, bits_a, mb, bits_b, chosen in pairs:
        a, b = _find(entries, ma, *bits_a), _find(entries, mb, *bits_b)
        if a is None or b is None:
            continue
        label = f"tfmq W{bits_a[0]}A{bits_a[1]} vs {mb} W{bits_b[0]}A{bits_b[1]}"
        parts = [compare_phrase(a, b, key, name, higher) for key, name, higher in chosen if key in a and key in b]
        lines.append(f"{label}: " + "; ".join(parts))
    return lines


def evaluate_verdict(rows: list[dict[str, Any]], metric: str = "fid", metric_name: str = "digits-FID",
                     metrics: Sequence[tuple[str, str, bool]] = DIGITS_METRICS) -> list[str]:
    """The run's statements: tfmq W4A8 against qdiff and minmax (lead rule, every metric in ``metrics``),
    tfmq W8A8 against the FP seed-to-seed FID difference, the W4A8 calibration time tfmq / qdiff (means
    over seeds), tfmq against the ModelOpt peers in paired RMSE; then one line per method x bits: its
    mean ``metric`` within or outside the FP seed-to-seed difference, with the paired pixel RMSE."""
    fp = [r for r in rows if r["method"] == "fp"]
    if not fp:
        return []
    entries = aggregate_rows(rows, [key for key, _, _ in metrics])
    lines = _comparisons(entries, metrics)
    w8 = _find(entries, "tfmq", 8, 8)
    fid_noise = abs(fp[0]["fid"] - fp[-1]["fid"])
    if w8 is not None and "fid" in w8:
        delta = w8["fid"]["mean"] - fp[0]["fid"]
        lines.append(f"tfmq W8A8: digits-FID {w8['fid']['mean']:.3f} (mean of {w8['n']}) vs FP {fp[0]['fid']:.3f} "
                     f"({delta:+.3f}), {'within' if abs(delta) <= fid_noise else 'outside'} the FP seed-to-seed "
                     f"difference {fid_noise:.3f}")
    tfmq, qdiff = _find(entries, "tfmq", 4, 8), _find(entries, "qdiff", 4, 8)
    if tfmq is not None and qdiff is not None and qdiff["calib_seconds"] > 0:
        ratio = tfmq["calib_seconds"] / qdiff["calib_seconds"]
        lines.append(f"W4A8 calibration time (mean over seeds, this run): tfmq {tfmq['calib_seconds']:.0f} s, qdiff "
                     f"{qdiff['calib_seconds']:.0f} s, tfmq / qdiff = {ratio:.2f}")
    noise = abs(fp[0][metric] - fp[-1][metric])
    for e in aggregate_rows(rows, [metric, "rmse_vs_fp"]):
        if metric not in e:
            continue
        rmse = e.get("rmse_vs_fp", {}).get("mean")
        quality = quality_phrase(e[metric]["mean"] - fp[0][metric], noise, metric_name, rmse=rmse)
        seeds = "" if e["n"] == 1 else f" (mean of {e['n']} calibration seeds)"
        lines.append(verdict_line(f"{e['method']} W{e['wbits']}A{e['abits']}{seeds}", quality))
    return lines


def seed_lines(rows: list[dict[str, Any]], metrics: Sequence[tuple[str, str, bool]] = DIGITS_METRICS,
               plot: str | None = None) -> list[str]:
    """A report's section: the lead rule, the quality-vs-bits plot and one line per method x bits with
    mean and spread of every metric over its calibration seeds and the mean calibration time."""
    entries = aggregate_rows(rows, [key for key, _, _ in metrics])
    if not entries:
        return []
    lines = ["", "## Across calibration seeds", "", f"Lead rule: {LEAD_RULE} Sampling noise (`--seed`) is the same "
             "for every row, so every row is paired with the same FP images.", ""]
    if plot:
        lines += [f"![quality vs bits]({plot})", ""]
    header = " | ".join(f"{name} mean | spread" for _, name, _ in metrics)
    lines += [f"| method | W | A | calibration seeds | {header} | calibration s (mean) | note |",
              "| --- " * (6 + 2 * len(metrics)) + "|"]
    for e in entries:
        cells = " | ".join(f"{_fmt(k, e[k]['mean'])} | {_fmt(k, e[k]['spread'])}" if k in e else " | "
                           for k, _, _ in metrics)
        lines.append(f"| {e['method']} | {e['wbits']} | {e['abits']} | {','.join(map(str, e['calib_seeds']))} | "
                     f"{cells} | {e['calib_seconds']:.1f} | {e['note'] or ''} |")
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
