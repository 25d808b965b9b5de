"""Block reconstruction of the SD-1.5 UNet architecture on the CPU: peak memory with the block
cache in RAM and memory-mapped (``--cache-budget``), and the per-iteration cost behind the
extrapolated time of the authors' recipe (docs/SCALING.md).

The model is ``sd15-arch`` (SD-1.5's UNet, random weights: time and memory depend on shapes, not
on weight values). A few iterations per block at a small latent and minibatch: the authors'
recipe (20,000 iterations per block, minibatch 32, 64x64 latents) is days of compute, and its
attention at 64x64 with minibatch 32 needs ~17 GB for one score tensor, more than this machine.
Each variant runs in its own child process so its peak resident memory is its own.

Model copies: every row reports ``weight_copies`` per device, the bytes of distinct float parameter
storages alive while blocks are reconstructed (largest over the blocks), in units of one UNet's
weights, counting the loaded UNet itself (``calibration.memory.float_parameter_storages``). The
run shares the float weights between the loaded UNet and its float references, so the expected
figure is about 2 (the float weights + the simulation's quantized layers); it was 4 before.

``--offload`` (only meaningful with ``--device cuda``; the pipeline refuses it on the CPU) runs
every variant with ``calibrate --offload``: the UNets stay in CPU memory and the GPU holds one
top-level block at a time plus the block being learned (compare ``peak_cuda_mb_method`` with a run
without it).

Usage (repository root)::

    python benchmarks/sd15_recon_memory.py --latent 32 --batch 4 --iters 3 \
        --json benchmarks/results/sd15_recon_memory.json
    python benchmarks/sd15_recon_memory.py --device cuda --offload --budgets none --json runs/offload.json
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

#: the authors' recipe (TFMQ-DM / Q-Diffusion / BRECQ)
RECIPE_ITERS, RECIPE_BATCH = 20_000, 32


def child(args: argparse.Namespace) -> dict:
    """One calibration in this process; returns its timings, per-block costs and peak memory."""
    import torch

    from tfmq_export.calibration import reconstruction
    from tfmq_export.calibration.memory import float_parameter_storages
    from tfmq_export.calibration.pipeline import run_calibration
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.models.loading import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    model.unet.register_to_config(sample_size=args.latent)
    if model.is_conditional:
        width = model.unet.config.cross_attention_dim
        model.conditions = torch.randn(args.num_samples, 77, width, generator=torch.Generator().manual_seed(0))
    extra = {"recon_batch_size": args.batch, "tiar_iters": args.iters}
    if args.cache_budget is not None:
        extra.update(cache_mb=args.cache_budget * 1024, disk_cache=True)
    if args.offload:
        extra["offload"] = True
    unet_bytes = sum(p.untyped_storage().nbytes() for p in model.unet.parameters())
    baseline = set(float_parameter_storages()) - {(str(p.device), p.untyped_storage().data_ptr())
                                                  for p in model.unet.parameters()}
    copies: dict[str, float] = {}
    real = reconstruction.reconstruct_block

    def counted(*call_args, **kwargs):  # copies of the weights alive while a block is learned
        per_device: dict[str, int] = {}
        for key, nbytes in float_parameter_storages().items():
            device = key[0]
            if key not in baseline:
                per_device[device] = per_device.get(device, 0) + nbytes
        for device, nbytes in per_device.items():
            copies[device] = max(copies.get(device, 0.0), round(nbytes / unet_bytes, 3))
        return real(*call_args, **kwargs)

    reconstruction.reconstruct_block = counted
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, steps=args.steps, num_samples=args.num_samples,
                                   batch_size=args.num_samples, iters=args.iters, seed=0, extra=extra)
    started = time.perf_counter()
    run = run_calibration(model, settings, Path(args.out), progress=False, device=args.device)
    blocks = run.result.weights
    return {
        "cache_budget_gb": args.cache_budget,
        "device": args.device,
        "offload": args.offload,
        "unet_weights_mb": round(unet_bytes / 2**20, 1),
        "weight_copies": copies,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "timings": {k: v for k, v in run.artifact.timings.items() if not isinstance(v, str)},
        "blocks": len(blocks),
        "train_seconds": round(sum(b.train_seconds for b in blocks), 2),
        "capture_seconds": round(sum(b.capture_seconds for b in blocks), 2),
        "seconds_per_iteration_all_blocks": round(sum(b.train_seconds for b in blocks) / args.iters, 3),
        "largest_block": max(blocks, key=lambda b: b.train_seconds).name,
    }


def extrapolate(row: dict, args: argparse.Namespace) -> dict:
    """Hours of the weight stage at the authors' recipe, from the measured cost of one iteration over
    every block, scaled linearly by minibatch and latent pixels (an estimate: attention grows faster
    than linearly in pixels, so the 64x64 figure is a lower bound)."""
    per_iter = row["seconds_per_iteration_all_blocks"]
    batch_scale = RECIPE_BATCH / args.batch
    out = {}
    for name, latent in (("sd15_64x64", 64), ("sdxl_128x128_same_blocks", 128)):
        pixel_scale = (latent / args.latent) ** 2
        out[name] = round(per_iter * batch_scale * pixel_scale * RECIPE_ITERS / 3600, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="reconstruction minibatch")
    parser.add_argument("--iters", type=int, default=3, help="iterations per block")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budgets", default="none,0.05", help="comma list: none (RAM, chunked) or GB")
    parser.add_argument("--model", default="sd15-arch", help="sd15-arch (a small model only to try the script)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--offload", action="store_true", help="calibrate --offload (needs --device cuda)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-budget", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for budget in args.budgets.split(","):
        out = ROOT / "runs" / "sd15_recon_memory" / f"budget-{budget}{'-offload' if args.offload else ''}"
        cmd = [sys.executable, __file__, "--child", "--latent", str(args.latent), "--batch", str(args.batch),
               "--iters", str(args.iters), "--steps", str(args.steps), "--num-samples", str(args.num_samples),
               "--threads", str(args.threads), "--out", str(out), "--device", args.device,
               "--model", args.model]
        if args.offload:
            cmd.append("--offload")
        if budget != "none":
            cmd += ["--cache-budget", budget]
        print(f"[sd15_recon_memory] {' '.join(cmd[2:])}", flush=True)
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["recipe_hours_weight_stage_one_process"] = extrapolate(row, args)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    result = {"command": "python benchmarks/sd15_recon_memory.py " + " ".join(sys.argv[1:]),
              "settings": vars(args) | {"json": str(args.json)}, "rows": rows,
              "note": "shared 2-core machine: times are upper bounds; extrapolation is linear in batch and pixels"}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
