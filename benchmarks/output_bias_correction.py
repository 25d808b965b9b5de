"""What a per-step correction of the UNet output's mean error would buy (PTQD / TAC-Diffusion style).

Usage: python benchmarks/output_bias_correction.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--num-images 500]
       [--json benchmarks/results/output_bias_correction_tfmq_w4a8.json]

Digits only, torch simulation, on artifacts calibrated without ``output_correction`` (the option
this measurement led to): for each artifact, the mean of (quantized - FP) noise prediction is
measured per sampler step on 64 FP trajectories (seed 7, not the sampling noise), per output pixel
and per output channel, and subtracted from the simulation's output at that step while sampling.
Reported: the paired pixel RMSE of the sampled images to the FP images from the same noise (seed 0)
without a correction, with the per-channel one, with the per-pixel one and with the per-pixel one at
the first three steps only. Also on those trajectories: the share of the error energy that is the
per-pixel mean of its step, and PTQD's correlated part (the error regressed on the FP output,
error = k * FP + rest: k and the share of the error energy it explains). docs/ANALYSIS.md, section
"The rounding regulariser and the output correction".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tfmq_export.artifact import load_artifact
from tfmq_export.calibration.data import collect_calibration_data
from tfmq_export.io import atomic_write_text
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.sampling import sample_images
from tfmq_export.temporal import build_table_unet


def corrected_images(net: torch.nn.Module, correction: torch.Tensor, model, count: int) -> np.ndarray:
    """``count`` images (DDIM, noise seed 0) through ``net`` minus ``correction[step]`` at every step."""
    def denoise(x: torch.Tensor, step: torch.Tensor, _cond: object) -> torch.Tensor:
        return net(x, step) - correction[step.long()]

    with torch.no_grad():
        return sample_images(denoise, model.scheduler_config, correction.shape[0], count, tuple(model.sample_shape),
                             seed=0, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    shape = tuple(model.sample_shape)
    rows = []
    for path in args.artifacts:
        artifact = load_artifact(path)
        artifact.check_model(model.fingerprint(), model.name)
        steps = len(artifact.timesteps)
        fp = build_table_unet(model.unet, list(artifact.timesteps)).eval()
        sim = simulation_from_artifact(model.unet, artifact).eval()
        data = collect_calibration_data(lambda x, s, _c, fp=fp: fp(x, s), model.scheduler_config, fp.timesteps,
                                        shape, 64, 7, 64, progress=False)
        sums = torch.zeros(steps, *shape, dtype=torch.float64)
        counts = torch.zeros(steps, dtype=torch.float64)
        cross, fp_energy, error_energy = (torch.zeros(steps, dtype=torch.float64) for _ in range(3))
        with torch.no_grad():
            for x, step, _ in data.batches(256):
                reference = fp(x, step).double()
                error = sim(x, step).double() - reference
                sums.index_add_(0, step, error)
                counts.index_add_(0, step, torch.ones(len(step), dtype=torch.float64))
                cross.index_add_(0, step, (error * reference).flatten(1).sum(dim=1))
                fp_energy.index_add_(0, step, reference.pow(2).flatten(1).sum(dim=1))
                error_energy.index_add_(0, step, error.pow(2).flatten(1).sum(dim=1))
        # PTQD's correlated part: error = k * FP output + the rest; the share of the error energy k explains
        k_total = float(cross.sum() / fp_energy.sum())
        ptqd = {"k": k_total, "explained_share": float(cross.sum() ** 2 / fp_energy.sum() / error_energy.sum()),
                "k_first_step": float(cross[0] / fp_energy[0]),
                "explained_share_first_step": float(cross[0] ** 2 / fp_energy[0] / error_energy[0])}
        bias_energy = (sums / counts.view(-1, 1, 1, 1)).pow(2).flatten(1).sum(dim=1) * counts
        mean_share = {"all_steps": float(bias_energy.sum() / error_energy.sum()),
                      "first_step": float(bias_energy[0] / error_energy[0]),
                      "second_step": float(bias_energy[1] / error_energy[1])}
        per_pixel = (sums / counts.view(-1, 1, 1, 1)).float()
        per_channel = per_pixel.mean(dim=(2, 3), keepdim=True).expand_as(per_pixel)
        first3 = torch.where(torch.arange(steps).view(-1, 1, 1, 1) < 3, per_pixel, torch.zeros_like(per_pixel))
        corrections = {"none": torch.zeros_like(per_pixel), "per-channel": per_channel, "per-pixel": per_pixel,
                       "per-pixel-first-3-steps": first3}

        reference = corrected_images(fp, torch.zeros_like(per_pixel), model, args.num_images)
        row = {"artifact": str(path), "calib_seed": artifact.settings.get("seed"), "ptqd_correlated": ptqd,
               "per_pixel_mean_share_of_error_energy": mean_share}
        for name, correction in corrections.items():
            images = corrected_images(sim, correction, model, args.num_images)
            row[name] = float(np.sqrt(np.mean((images - reference) ** 2)))
        rows.append(row)
        print(path, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)}, ptqd, mean_share, flush=True)
    if args.json is not None:
        command = ("python benchmarks/output_bias_correction.py " + " ".join(str(p) for p in args.artifacts)
                   + f" --num-images {args.num_images}")
        atomic_write_text(args.json, json.dumps({"command": command, "rows": rows,
                                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                indent=2))


if __name__ == "__main__":
    main()
