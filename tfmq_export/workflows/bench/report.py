"""What ``bench`` reports: one row per (variant, batch), the machine, the JSON file, a terminal line.

The JSON follows the bench contract (README, docs/BENCHMARKS.md) (``runs`` with backend, precision, batch,
latency_ms_median, latency_ms_p90, images_per_s, peak_mem_mb, model_bytes; ``machine``) with extra
fields that say how each number was obtained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.metrics.error import rel_l2
from tfmq_export.workflows.bench.plan import Variant
from tfmq_export.workflows.report_parts import package_versions, provenance_lines, speedup_phrase

__all__ = ["Timings", "bench_provenance", "bench_verdict", "format_row", "machine_info", "report_lines", "run_row",
           "write_json"]

#: Baseline precisions a quantized row is compared with, on its own backend, first found wins (a
#: TensorRT INT8-with-FP16 engine is compared with the FP16 engine, as peers do).
BASELINES = ("fp16", "fp32")


@dataclass
class Timings:
    """What one variant accumulates at one batch size."""

    calls_ms: list[float] = field(default_factory=list)
    sampling_s: list[float] = field(default_factory=list)
    output: np.ndarray | None = None
    final: np.ndarray | None = None


def _versions() -> dict[str, str]:
    """Installed versions of the runtimes (from package metadata: nothing is imported)."""
    from importlib import metadata

    versions = {}
    for name in ("tfmq-export", "torch", "onnxruntime", "openvino", "nncf", "tensorrt", "diffusers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info(threads: int | None) -> dict[str, Any]:
    """What a CPU timing depends on: the CPU and its int8 ISA, cores, threads, load, versions."""
    from tfmq_export.io import machine_info as engine_machine_info

    info = engine_machine_info()
    return {**info, "cores": info["cpu_count"], "threads": threads, "load_avg": list(os.getloadavg()),
            **_versions()}


def _rel_error(out: np.ndarray | None, ref: np.ndarray | None) -> float | None:
    return None if out is None or ref is None else rel_l2(out, ref)


def run_row(variant: Variant, model_bytes: int, batch: int, acc: Timings, ref: Timings | None, num_steps: int,
            iters: int, warmup: int, load_s: float) -> dict[str, Any]:
    """One CONTRACT run row (plus extra fields) from a variant's timings at one batch size."""
    ms = np.asarray(acc.calls_ms)
    median = float(np.median(ms))
    derived = batch / (num_steps * median / 1000.0)
    row: dict[str, Any] = {
        "backend": variant.backend,
        "precision": variant.precision,
        "label": variant.name,
        "batch": batch,
        "latency_ms_median": median,
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_min": float(ms.min()),
        "images_per_s": derived,
        "images_per_s_basis": f"derived: batch / ({num_steps} steps x median UNet latency)",
        "images_per_s_derived": derived,
        "sampling_steps": num_steps,
        "peak_mem_mb": None,
        "model_bytes": model_bytes,
        "iters": iters,
        "warmup": warmup,
        "load_s": round(load_s, 3),
        "path": variant.path,
        "target": variant.target or None,
        "device": variant.device,
    }
    if acc.sampling_s:
        sampling = float(np.median(acc.sampling_s))
        row.update({
            "sampling_s_median": sampling,
            "sampling_s_all": [round(s, 4) for s in acc.sampling_s],
            "images_per_s": batch / sampling,
            "images_per_s_basis": f"measured: batch / median full DDIM sampling time ({num_steps} steps)",
        })
    if ref is not None:
        row["rel_error_vs_reference"] = _rel_error(acc.output, ref.output)
        if acc.final is not None:
            row["sampling_rel_error_vs_reference"] = _rel_error(acc.final, ref.final)
    return row


def format_row(row: dict[str, Any]) -> str:
    """One line per run for the terminal (the JSON has everything)."""
    err = row.get("rel_error_vs_reference")
    mem = row.get("peak_mem_mb")
    return (f"{row['label']:>32s} batch {row['batch']}: {row['latency_ms_median']:.2f} ms "
            f"(p90 {row['latency_ms_p90']:.2f}), {row['images_per_s']:.3f} img/s "
            f"({row['images_per_s_basis'].split(':')[0]}), "
            f"{'-' if mem is None else f'{mem:.0f}'} MB peak, {row['model_bytes'] / 1e6:.1f} MB model, "
            f"rel. error {'-' if err is None else f'{err:.2e}'}")


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the bench JSON atomically (a crashed run leaves the previous file whole)."""
    from tfmq_export.io import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")


def bench_verdict(result: dict[str, Any]) -> list[str]:
    """One line per (backend, quantized precision): its speed-up over the FP row of the same backend
    (``BASELINES``) at every batch, and its UNet output error against the run's reference; pure."""
    runs = result["runs"]
    median = {(r["backend"], r["precision"], r["batch"]): r["latency_ms_median"] for r in runs}
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in runs):
        precisions = list(dict.fromkeys(r["precision"] for r in runs if r["backend"] == backend))
        base = next((p for p in BASELINES if p in precisions), None)
        for precision in precisions:
            if precision in BASELINES:
                continue
            batches = sorted({r["batch"] for r in runs if (r["backend"], r["precision"]) == (backend, precision)})
            speeds = [(b, median[backend, base, b] / median[backend, precision, b]) for b in batches
                      if base is not None and (backend, base, b) in median and median[backend, precision, b] > 0]
            errors = [r.get("rel_error_vs_reference") for r in runs
                      if (r["backend"], r["precision"]) == (backend, precision)]
            error = next((e for e in errors if e is not None), None)
            quality = ("UNet output error not measured" if error is None else
                       f"UNet output rel. error {error:.2e} vs the reference ({result.get('reference') or 'none'})")
            label = f"{precision.upper()} on {backend}"
            if not speeds:
                lines.append(f"{label}: no FP16/FP32 row on {backend} to compare with; {quality}")
                continue
            parts = ", ".join(f"{speedup_phrase(ratio)} at batch {b}" for b, ratio in speeds)
            lines.append(f"{label} vs {base.upper()}: {parts}; {quality}")
    return lines or ["no quantized variant timed: nothing to compare (see the rows)"]


def bench_provenance(result: dict[str, Any], command: str, recipes: list[str] | None) -> dict[str, Any]:
    """The report-wide provenance (``report_parts.provenance_lines``) of a bench result."""
    machine = result.get("machine", {})
    targets = sorted({r["target"] for r in result["runs"] if r.get("target")})
    return {"machine": {"cpu": machine.get("cpu"), "cores": machine.get("cpu_count"),
                        "platform": machine.get("platform")},
            "load_avg_start": machine.get("load_avg_start"), "load_avg_end": machine.get("load_avg_end"),
            "versions": package_versions(), "target": ", ".join(targets) or "none (torch only)",
            "command": command,
            "recipes": list(recipes) if recipes else ["not recorded in the graphs (pass the recipe names to "
                                                      "bench_to_json(recipes=...))"]}


def report_lines(result: dict[str, Any]) -> list[str]:
    """What the terminal shows: the verdict first, one line per row, then the provenance."""
    lines = [f"Verdict: {v}" for v in result.get("verdict") or bench_verdict(result)]
    lines += [format_row(row) for row in result["runs"]]
    if result.get("provenance"):
        lines += provenance_lines(result["provenance"])
    return lines
