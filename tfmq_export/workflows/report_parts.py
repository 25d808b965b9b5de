"""Pieces every report shares (demo, evaluate, bench): the verdict, the provenance, the comparison image.

A reader opens a report to learn whether the quantized model is faster and still draws the same
images, and whether the figures can be trusted (which machine, how loaded, which versions, which
command and recipe). The phrasing functions are pure (numbers in, text out) so tests can pin the
wording; ``start_provenance`` / ``end_provenance`` are the only ones that look at the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VERSION_PACKAGES",
    "comparison_panel",
    "end_provenance",
    "package_versions",
    "provenance_lines",
    "quality_phrase",
    "save_comparison",
    "setting_label",
    "speedup_phrase",
    "start_provenance",
    "verdict_line",
]

#: The packages whose versions a report names (``None``: not installed).
VERSION_PACKAGES = ("tfmq-export", "torch", "onnxruntime", "openvino", "diffusers")
#: Pixels between the three panels of a comparison image (white).
PANEL_GAP = 8
#: The difference map shows |quantized - FP| times this (clipped), so small errors are visible.
DIFF_GAIN = 4.0


def package_versions(names: Sequence[str] = VERSION_PACKAGES) -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def start_provenance(command: str, target: str, recipes: Sequence[str]) -> dict[str, Any]:
    """What a report's figures depend on, taken when the run starts (the load average too)."""
    from tfmq_export.io import machine_info

    info = machine_info()
    return {"machine": {"cpu": info["cpu"], "cores": info["cpu_count"], "platform": info["platform"]},
            "load_avg_start": [round(v, 2) for v in os.getloadavg()], "versions": package_versions(),
            "target": target, "command": command, "recipes": list(recipes)}


def end_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """``provenance`` with the load average at the end of the run."""
    return provenance | {"load_avg_end": [round(v, 2) for v in os.getloadavg()]}


def _load(values: Sequence[float] | None) -> str:
    return "not taken" if not values else " / ".join(f"{v:.2f}" for v in values)


def provenance_lines(provenance: dict[str, Any]) -> list[str]:
    """Markdown bullet lines: machine, load average (1/5/15 min) at start and end, versions, target,
    command, recipe(s)."""
    machine = provenance.get("machine", {})
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in provenance.get("versions", {}).items())
    recipes = provenance.get("recipes") or []
    return [
        f"- Machine: {machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} cores "
        f"({machine.get('platform', 'unknown platform')})",
        f"- Load average (1/5/15 min): {_load(provenance.get('load_avg_start'))} at start, "
        f"{_load(provenance.get('load_avg_end'))} at end (figures measured above about the core count are slowed "
        "by other jobs)",
        f"- Versions: {versions}",
        f"- Target: {provenance.get('target', 'unknown')}",
        f"- Command: `{provenance.get('command', 'unknown')}`",
        f"- Recipe(s): {', '.join(recipes) if recipes else 'none (settings given directly)'}",
    ]


def speedup_phrase(ratio: float) -> str:
    """``ratio`` = baseline latency / quantized latency: ``1.40x faster``, or for a ratio below 1
    ``0.29x, i.e. 3.4x slower`` (a bare 0.29x reads as a speed-up to most readers)."""
    if ratio >= 1.0:
        return f"{ratio:.2f}x faster"
    return f"{ratio:.2f}x, i.e. {1.0 / ratio:.1f}x slower"


def quality_phrase(delta: float, noise: float, metric: str, rmse: float | None = None) -> str:
    """Whether a metric's change against FP is within the FP seed-to-seed difference of that metric."""
    verdict = "within FP noise" if abs(delta) <= noise else "outside FP noise"
    rmse_part = "" if rmse is None else f"; pixel RMSE to FP from the same noise {rmse:.4f}"
    return f"images {verdict} ({metric} {delta:+.3f} vs FP seed-to-seed {noise:.3f}{rmse_part})"


def verdict_line(label: str, quality: str, speeds: Sequence[tuple[int, float]] = (), baseline: str = "FP32",
                 backend: str = "onnxruntime") -> str:
    """``TFMQ W8A8 vs FP32 on onnxruntime: 0.29x, i.e. 3.4x slower at batch 1, 1.40x faster at batch 64;
    images within FP noise (...)``. ``speeds``: (batch, baseline latency / quantized latency); without
    them only the quality part (the setting was not timed)."""
    if not speeds:
        return f"{label}: {quality} (not timed)"
    parts = ", ".join(f"{speedup_phrase(ratio)} at batch {batch}" for batch, ratio in speeds)
    return f"{label} vs {baseline} on {backend}: {parts}; {quality}"


def setting_label(name: str) -> str:
    """``tfmq-w8a8`` -> ``TFMQ W8A8`` (a report's name for a setting)."""
    return name.replace("-", " ").upper()


def _to_panel(images: np.ndarray, columns: int | None) -> np.ndarray:
    from tfmq_export.images import to_grid

    grid = to_grid(images, columns)
    return grid if grid.ndim == 3 else np.repeat(grid[:, :, None], 3, axis=2)


def comparison_panel(fp: np.ndarray, quantized: np.ndarray, columns: int | None = None,
                     gain: float = DIFF_GAIN) -> np.ndarray:
    """uint8 RGB image: FP grid | quantized grid | difference map, side by side (``PANEL_GAP`` white
    pixels between). The map shows ``gain`` x |quantized - FP| per pixel (black = identical), for
    images drawn from the same noise; [N, C, H, W] in [-1, 1]."""
    from tfmq_export.errors import TfmqError

    if fp.shape != quantized.shape:
        raise TfmqError(f"comparison needs images of one shape, got {fp.shape} and {quantized.shape}")
    a, b = (np.clip(x.astype(np.float32), -1.0, 1.0) for x in (fp, quantized))
    diff = np.clip(np.abs(b - a) * gain, 0.0, 2.0) - 1.0  # 0 -> black
    panels = [_to_panel(x, columns) for x in (a, b, diff)]
    gap = np.full((panels[0].shape[0], PANEL_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


def save_comparison(fp: np.ndarray, quantized: np.ndarray, path: Path, columns: int | None = None) -> Path:
    """Write ``comparison_panel`` as a PNG (atomically) and return its path."""
    from PIL import Image

    from tfmq_export.io import atomic_write

    panel = comparison_panel(fp, quantized, columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(panel).save(tmp, format="PNG"))
    return path
