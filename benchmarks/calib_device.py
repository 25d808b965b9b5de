"""Calibration time of ``calibrate digits`` on the CPU and, where one is visible, a CUDA GPU.

Usage:
  python benchmarks/calib_device.py [--recipes digits-tfmq-w8a8,digits-tfmq-w4a8] [--iters N]
         [--num-samples N] [--devices cpu,cuda] [--out runs/calib-device] [--json benchmarks/results/calib_device.json]

Each (recipe, device) pair runs ``tfmq_export.calibrate("digits", ..., recipe=..., device=...)`` once,
with the shipped recipe (``--iters`` / ``--num-samples`` override its budget for a quick look) and writes its artifact
under ``--out/<recipe>-<device>``. The JSON records every run's wall time, the artifact's own
timings (data collection, TIAR, weight reconstruction, activation calibration), the machine (CPU
count, load average, torch version, GPU name) and, per recipe, the CUDA speed-up over the CPU and
how far the CUDA artifact is from the CPU one (integer weights that differ, largest relative L2 of
a float tensor): the figures docs/CALIBRATION.md asks a GPU session to record. Devices that are
not available are listed as skipped, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from tfmq_export import calibrate
from tfmq_export.artifact import load_artifact
from tfmq_export.device import resolve_device
from tfmq_export.errors import TfmqError

DEFAULT_RECIPES = "digits-tfmq-w8a8,digits-tfmq-w4a8"


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _distance(cuda_dir: Path, cpu_dir: Path) -> dict[str, float]:
    """How far the CUDA artifact is from the CPU one: the tolerance docs/CALIBRATION.md states."""
    a, b = load_artifact(cuda_dir).tensors, load_artifact(cpu_dir).tensors
    ints = [k for k in b if k.endswith("weight_int")]
    differ = sum(int((a[k] != b[k]).sum()) for k in ints)
    total = sum(b[k].numel() for k in ints)
    floats = [k for k in b if b[k].is_floating_point() and bool(torch.isfinite(b[k]).all())]
    rel = max((float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp(min=1e-12))
               for k in floats), default=0.0)
    return {"weight_int_differ_fraction": differ / max(total, 1), "max_float_rel_l2": rel}


def run(recipes: list[str], devices: list[str], iters: int | None, out: Path,
        num_samples: int | None = None) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for device in devices:
        try:
            resolve_device(device)
        except TfmqError as exc:
            skipped.append({"device": device, "reason": str(exc)})
    ready = [d for d in devices if d not in {s["device"] for s in skipped}]
    for recipe in recipes:
        for device in ready:
            folder = out / f"{recipe}-{device.replace(':', '')}"
            started = time.perf_counter()
            artifact = calibrate("digits", folder, recipe=recipe, iters=iters, num_samples=num_samples,
                                 device=device, quiet=True)
            runs.append({"recipe": recipe, "device": device, "wall_s": round(time.perf_counter() - started, 2),
                         "folder": str(folder), "iters": artifact.settings.get("iters"),
                         "num_samples": artifact.settings.get("num_samples"),
                         "timings": artifact.timings})
    speedups: list[dict[str, Any]] = []
    for recipe in recipes:
        by_device = {r["device"]: r for r in runs if r["recipe"] == recipe}
        cpu = by_device.get("cpu")
        for device, row in by_device.items():
            if device == "cpu" or cpu is None:
                continue
            speedups.append({"recipe": recipe, "device": device,
                             "speedup_vs_cpu": round(cpu["wall_s"] / max(row["wall_s"], 1e-9), 2),
                             **_distance(Path(row["folder"]), Path(cpu["folder"]))})
    return {"machine": _machine(), "runs": runs, "speedups": speedups, "skipped": skipped}


def _table(result: dict[str, Any]) -> str:
    lines = ["| recipe | device | iters | wall s | data s | weight recon s | act calib s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        t = r["timings"]
        lines.append(f"| {r['recipe']} | {r['device']} | {r['iters']} | {r['wall_s']:.1f} | "
                     f"{t.get('data_seconds', 0.0):.1f} | {t.get('weight_recon_seconds', 0.0):.1f} | "
                     f"{t.get('act_calib_seconds', 0.0):.1f} |")
    for s in result["speedups"]:
        lines.append(f"\n{s['recipe']} on {s['device']}: {s['speedup_vs_cpu']}x faster than the CPU; "
                     f"{100 * s['weight_int_differ_fraction']:.3f}% of integer weights differ, largest float "
                     f"tensor relative L2 {s['max_float_rel_l2']:.2e}")
    for s in result["skipped"]:
        lines.append(f"\nskipped {s['device']}: {s['reason']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=DEFAULT_RECIPES)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--iters", type=int, default=None, help="override the recipes' iterations per block")
    parser.add_argument("--num-samples", type=int, default=None, help="override the recipes' trajectories")
    parser.add_argument("--out", type=Path, default=Path("runs/calib-device"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/calib_device.json"))
    args = parser.parse_args()
    result = run([r for r in args.recipes.split(",") if r], [d for d in args.devices.split(",") if d], args.iters,
                 args.out, args.num_samples)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(_table(result))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
