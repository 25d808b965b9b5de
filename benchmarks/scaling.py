"""Data-parallel calibration, 1 vs N processes on this machine (gloo on the CPU): wall time per
stage and whether the artifacts agree (docs/SCALING.md).

Every run is ``tfmq-export calibrate digits --method tfmq --wbits 4 --abits 8 ... --workers N``
(N = 1 runs in-process, N > 1 through torch's elastic launcher), one intra-op thread per process
(``OMP_NUM_THREADS=1``), so N processes use N cores. Stage times come from the artifacts'
``timings``; the Adam loop's share is ``weight_recon_seconds`` minus the capture passes, which
every rank repeats (``calibration.parallel``).

Usage (repository root)::

    python benchmarks/scaling.py --workers 1,2 --iters 200 --json benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data_seconds", "tiar_seconds", "weight_recon_seconds", "act_calib_seconds", "calib_seconds")


def calibrate(workers: int, args: argparse.Namespace) -> dict:
    out = ROOT / "runs" / "scaling" / f"w{workers}"
    cmd = [sys.executable, "-m", "tfmq_export.cli", "calibrate", "digits", "--method", "tfmq", "--wbits", "4",
           "--abits", "8", "--steps", str(args.steps), "--num-samples", str(args.num_samples), "--batch-size",
           str(args.batch_size), "--iters", str(args.iters), "--seed", "0", "--quiet", "--workers", str(workers),
           "--out", str(out)]
    print("[scaling] " + " ".join(cmd[2:]), flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    timings = json.loads((out / "artifact.json").read_text())["timings"]
    return {"workers": workers, "wall_seconds": round(wall, 1),
            **{k: round(float(timings[k]), 1) for k in STAGES if k in timings}, "out": str(out)}


def agreement(a: Path, b: Path) -> dict:
    """Largest relative difference of the float tensors and share of differing integers."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "tensors.safetensors")), load_file(str(b / "tensors.safetensors"))
    worst, flipped, total = 0.0, 0, 0
    for key, x in ta.items():
        y = tb[key]
        if x.is_floating_point():
            ok = torch.isfinite(x) & torch.isfinite(y)
            rel = ((x - y).abs() / x.abs().clamp(min=1e-12))[ok]
            worst = max(worst, float(rel.max()) if rel.numel() else 0.0)
        else:
            flipped += int((x != y).sum())
            total += x.numel()
    return {"max_rel_float": worst, "integers_differing": flipped, "integers": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [calibrate(int(w), args) for w in args.workers.split(",")]
    base = rows[0]
    for row in rows:
        row["speedup_weight_recon"] = round(base["weight_recon_seconds"] / row["weight_recon_seconds"], 2)
        row["speedup_total"] = round(base["calib_seconds"] / row["calib_seconds"], 2)
        row["vs_first"] = agreement(Path(base["out"]), Path(row["out"]))
    result = {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "rows": rows,
              "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "note": "2-core machine shared with other jobs while measured: ratios are indicative"}
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
