"""What block reconstruction of an SD-1.5 UNet needs, from one forward at the real latent size.

``sd15-arch`` (SD-1.5's UNet, random weights: sizes and times depend on shapes, not on weight
values) at a 64x64 latent: for every reconstruction block (``UNetAdapter.reconstruction_blocks``)
the bytes one calibration input adds to the block cache (the block's batched inputs + its output,
float32), and the time of one forward of the whole UNet per image. From those (docs/SCALING.md):

- the block cache of the largest block for the recipe's calibration set, i.e. what
  ``--cache-budget`` moves to memory-mapped files;
- an EXTRAPOLATION of the weight stage (in core-hours from the process's CPU time, which other jobs
  on a shared machine inflate far less than the wall time) of the authors' recipe (20,000 iterations per block,
  minibatch 32): one iteration over every block costs about one forward + backward of the UNet on
  32 images (~3 forwards), so the stage is ~ 20,000 x 32 x 3 x the per-image forward time.

Usage (repository root)::

    python benchmarks/sd15_block_profile.py --latent 64 --threads 2 --json benchmarks/results/sd15_block_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

RECIPE_ITERS, RECIPE_BATCH, FWD_BWD = 20_000, 32, 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--calib-inputs", type=int, default=5120,
                        help="calibration inputs of the recipe (trajectories x steps) for the cache size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tfmq_export.calibration.block_io import adapter_blocks
    from tfmq_export.calibration.memory import peak_rss_mb
    from tfmq_export.models.loading import load_model

    model = load_model("sd15-arch")
    unet = model.unet.eval()
    blocks = adapter_blocks(unet)
    sizes: dict[str, int] = {}

    def hook(name: str):
        def fn(_module, inputs, kwargs, output) -> None:
            batched = [v for v in (*inputs, *kwargs.values()) if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == 1]
            sizes[name] = sum(v.numel() * 4 for v in batched) + (output.numel() * 4 if torch.is_tensor(output) else 0)

        return fn

    handles = [unet.get_submodule(b.name).register_forward_hook(hook(b.name), with_kwargs=True) for b in blocks]
    x = torch.randn(1, 4, args.latent, args.latent)
    cond = torch.randn(1, 77, 768)
    seconds, cpu_seconds = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            unet(x, torch.tensor([500]), cond)
            seconds.append(time.perf_counter() - started)
            cpu_seconds.append(time.process_time() - cpu_started)
            for handle in handles:
                handle.remove()
            handles = []
    forward, cpu = min(seconds), min(cpu_seconds)  # CPU seconds: what the process computed, whatever the load
    largest = max(sizes, key=sizes.get)
    recipe_hours = forward * FWD_BWD * RECIPE_BATCH * RECIPE_ITERS / 3600
    result = {
        "command": "python benchmarks/sd15_block_profile.py " + " ".join(sys.argv[1:]),
        "latent": args.latent, "threads": args.threads, "blocks": len(blocks),
        "forward_seconds_per_image": round(forward, 3), "forward_seconds_all": [round(s, 3) for s in seconds],
        "forward_cpu_seconds_per_image": round(cpu, 3),
        "extrapolated_weight_stage_cpu_core_hours": round(cpu * FWD_BWD * RECIPE_BATCH * RECIPE_ITERS / 3600, 1),
        "cache_mb_per_input": {"largest_block": largest, "largest": round(sizes[largest] / 2**20, 2),
                               "sum_over_blocks": round(sum(sizes.values()) / 2**20, 1)},
        "cache_gb_largest_block_for_calib_inputs": round(sizes[largest] * args.calib_inputs / 2**30, 1),
        "calib_inputs": args.calib_inputs,
        "extrapolated_weight_stage_hours_one_process": round(recipe_hours, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "note": "shared 2-core machine; the recipe time is an extrapolation (fwd+bwd = 3 forwards, linear in batch)",
    }
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
