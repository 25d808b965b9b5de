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

__all__ = ["Timings", "format_row", "machine_info", "run_row", "write_json"]


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
    for name in ("torch", "onnxruntime", "openvino", "nncf", "tensorrt"):
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
