"""The quality-vs-bits plot of ``evaluate``: what each method keeps as weights and activations shrink.

One panel per metric (paired RMSE to the FP images, digits-FID, and for digits-text the prompt
accuracy), x the bit setting (W8A8, W4A8, W4A16), one line per method at its mean over calibration
seeds, error bars from the seeds' min to max. FP's seed-to-seed range is drawn as a band where the
metric has one (FID, accuracy), so a reader sees which points are inside the metric's own noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tfmq_export.workflows.evaluate_report import DIGITS_METRICS, aggregate_rows

__all__ = ["BIT_ORDER", "plot_quality"]

#: x axis order: from the widest setting to the narrowest.
BIT_ORDER = ((8, 8), (4, 8), (4, 16))
#: Horizontal offset between methods at one bit setting, so their error bars do not overlap.
DODGE = 0.06


def _panel(ax: Any, entries: list[dict[str, Any]], fp: list[dict[str, Any]], key: str, name: str) -> None:
    """One metric: a line per method with seed min..max error bars, FP's seed range as a band."""
    settings = [b for b in BIT_ORDER if any((e["wbits"], e["abits"]) == b for e in entries)]
    x_of = {b: i for i, b in enumerate(settings)}
    methods = list(dict.fromkeys(e["method"] for e in entries))
    for i, method in enumerate(methods):  # one colour per method on every panel, points side by side
        points = sorted((x_of[(e["wbits"], e["abits"])], e[key]) for e in entries
                        if e["method"] == method and key in e and (e["wbits"], e["abits"]) in x_of)
        if not points:
            continue
        xs = [x + DODGE * (i - (len(methods) - 1) / 2) for x, _ in points]
        means = [s["mean"] for _, s in points]
        errors = [[max(s["mean"] - s["min"], 0.0) for _, s in points],  # rounding: a mean of equal values
                  [max(s["max"] - s["mean"], 0.0) for _, s in points]]
        ax.errorbar(xs, means, yerr=errors, marker="o", markersize=4, capsize=4, label=method, color=f"C{i}")
    values = [r[key] for r in fp if r.get(key) is not None]
    if key != "rmse_vs_fp" and values:
        low, high = min(values), max(values)
        ax.axhspan(low, high, color="grey", alpha=0.25, label="FP (seed range)")
        ax.axhline(values[0], color="grey", linewidth=1)
    ax.set_xticks(range(len(settings)), [f"W{w}A{a}" for w, a in settings])
    ax.set_xlim(-0.5, len(settings) - 0.5)
    ax.set_xlabel("bit setting")
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)


def plot_quality(rows: Sequence[dict[str, Any]], path: Path,
                 metrics: Sequence[tuple[str, str, bool]] = DIGITS_METRICS, title: str = "quality vs bits") -> Path:
    """Write the PNG (atomically) at ``path``: one panel per metric of ``metrics`` ((key, name, higher is
    better), as ``evaluate_report``), from the rows of ``results.json``."""
    from matplotlib.figure import Figure

    from tfmq_export.io import atomic_write

    entries = aggregate_rows(rows, [key for key, _, _ in metrics])
    fp = [r for r in rows if r["method"] == "fp"]
    fig = Figure(figsize=(4.5 * len(metrics), 4), dpi=100)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (key, name, higher) in zip(axes, metrics, strict=True):
        _panel(ax, entries, fp, key, name)
        ax.set_title(f"{name} ({'higher' if higher else 'lower'} is better)")
    legend: dict[str, Any] = {}
    for ax in axes:  # every method once, and the FP band (drawn only where a metric has one)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        axes[-1].legend(list(legend.values()), list(legend), fontsize=8)
    fig.suptitle(f"{title}: mean over calibration seeds, bars = seed min..max")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
