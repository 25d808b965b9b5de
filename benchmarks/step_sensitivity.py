"""How much the quantized UNet at one sampling step moves the sampled images, step by step.

Usage: python benchmarks/step_sensitivity.py ARTIFACT_DIR [--model digits] [--num-images 200]
       [--json benchmarks/results/step_sensitivity_tfmq_w4a8.json]

For each step i the images are sampled with the artifact's torch simulation at step i only and the
full-precision UNet everywhere else (same noise, DDIM); the pixel RMSE to the FP images is that step's
share of the error. Beside it: the RMS of the noise-prediction error at step i on FP trajectories
(64 held-out trajectories, seed 1000) and the DDIM gain of step i (``calibration.step_weights``), whose
product predicts the image error to first order. This is the measurement behind ``step_weighting``.
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
from tfmq_export.calibration.step_weights import ddim_step_gains
from tfmq_export.io import atomic_write_text
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.sampling import sample_images
from tfmq_export.temporal import build_table_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--model", default="digits", choices=["digits"])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    artifact = load_artifact(args.artifact)
    timesteps = list(artifact.timesteps)
    fp = build_table_unet(model.unet, timesteps).eval()
    sim = simulation_from_artifact(model.unet, artifact).eval()

    def images(quantized_steps: set[int]) -> np.ndarray:
        def denoise(x: torch.Tensor, step: torch.Tensor, _cond: object) -> torch.Tensor:
            row = int(step.flatten()[0]) if torch.is_tensor(step) else int(step)
            return (sim if row in quantized_steps else fp)(x, step)

        with torch.no_grad():
            return sample_images(denoise, model.scheduler_config, len(timesteps), args.num_images,
                                 tuple(model.sample_shape), seed=0, progress=False)

    def rmse(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))

    reference = images(set())
    every = rmse(images(set(range(len(timesteps)))), reference)
    held_out = collect_calibration_data(lambda x, s, _c: fp(x, s), model.scheduler_config, timesteps,
                                        model.sample_shape, 64, 1000, 64, progress=False)
    squared, counts = torch.zeros(len(timesteps), dtype=torch.float64), torch.zeros(len(timesteps))
    with torch.no_grad():
        for x, step, _ in held_out.batches(256):
            err = (sim(x, step) - fp(x, step)).double().pow(2).mean(dim=(1, 2, 3))
            squared.index_add_(0, step, err)
            counts.index_add_(0, step, torch.ones_like(step, dtype=torch.float32))
    output_rms = (squared / counts.double()).sqrt().tolist()
    gains = ddim_step_gains(model.scheduler_config, timesteps)
    rows = []
    for i, t in enumerate(timesteps):
        alone = rmse(images({i}), reference)
        rows.append({"step": i, "timestep": t, "image_rmse_this_step_only": alone, "output_error_rms": output_rms[i],
                     "ddim_gain": gains[i], "predicted_image_rmse": gains[i] * output_rms[i]})
        print(f"step {i:2d} t={t:4}  image RMSE {alone:.5f}  output err RMS {output_rms[i]:.5f}  gain {gains[i]:.3f}  "
              f"predicted {gains[i] * output_rms[i]:.5f}", flush=True)
    result = {"command": f"python benchmarks/step_sensitivity.py {args.artifact} --model {args.model} "
                         f"--num-images {args.num_images}",
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "artifact_method": artifact.method, "artifact_bits": f"w{artifact.wbits}a{artifact.abits}",
              "image_rmse_every_step": every, "rows": rows}
    print(f"every step quantized: image RMSE {every:.5f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
