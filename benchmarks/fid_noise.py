"""How much digits-FID moves between sampling seeds, at 1,000 and at 5,000 samples.

Usage: python benchmarks/fid_noise.py [--seeds 6] [--steps 25] [--threads 2]
       [--json benchmarks/results/fid_noise.json]

Samples the bundled digits model in full precision (torch, DDIM, the recipes' 25 steps) with
seeds 0..N-1, 1,000 images each, and reports the FID of every seed, then the FID of the pooled
images split into halves of N*500 (5,000 with 10 seeds). Why: it sets how many samples
``tfmq-export evaluate`` needs before a difference between methods means anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tfmq_export.io import atomic_write_text
from tfmq_export.metrics.fid import digits_fid
from tfmq_export.models.loading import load_model
from tfmq_export.sampling import sample_images, sampler_timesteps
from tfmq_export.temporal import build_table_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    table_unet = build_table_unet(model.unet, sampler_timesteps(model.scheduler_config, args.steps)).eval()

    def denoise(x, step, _cond):
        return table_unet(x, step)

    per_seed, images = [], []
    for seed in range(args.seeds):
        batch = sample_images(denoise, model.scheduler_config, args.steps, 1000, model.sample_shape, seed, 250,
                              progress=False)
        images.append(batch)
        per_seed.append(digits_fid(batch))
        print(f"seed {seed}: FID {per_seed[-1]:.2f} (1,000 samples)", flush=True)
    pooled = np.concatenate(images)
    half = len(pooled) // 2
    halves = [digits_fid(pooled[:half]), digits_fid(pooled[half:])]
    print(f"1,000 samples: min {min(per_seed):.2f}, max {max(per_seed):.2f}, std {np.std(per_seed):.2f}")
    print(f"two halves of {half:,}: {halves[0]:.2f} / {halves[1]:.2f}")
    if args.json is not None:
        result = {"command": f"python benchmarks/fid_noise.py --seeds {args.seeds} --steps {args.steps}",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "fid_1000_per_seed": per_seed, "halves_size": half, "fid_halves": halves}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
