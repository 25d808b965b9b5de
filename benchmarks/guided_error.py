"""How classifier-free guidance turns a quantized UNet's errors on its two halves into the guided error.

Usage: python benchmarks/guided_error.py ARTIFACT_DIR [ARTIFACT_DIR ...] [--model digits-text]
       [--guidance-scale 7.5] [--num-images 40] [--json benchmarks/results/guided_error.json]

Along full-precision guided trajectories (the artifact's scheduler and steps, the model's prompts
cycled, noise seed 7) every UNet call runs in full precision and in the artifact's torch simulation;
e_u and e_c are the noise-prediction errors of the unconditional and the conditional half, and the
guided error is e_u + s (e_c - e_u), what the sampler steps with. Reported per phase of the schedule:
the mean squared e_u, e_c, their difference, the guided error, and the share s^2 |e_c - e_u|^2 of it.
A share near 1 means the guided error is the halves' difference, amplified by s: the part the plain
reconstruction loss (each half alone) does not weigh, and the guided loss (``guided_loss``) does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tfmq_export.artifact import load_artifact
from tfmq_export.contract import INPUT_CONDITIONS
from tfmq_export.io import atomic_write_text
from tfmq_export.models.digits_text import digits_text_prompts
from tfmq_export.models.guidance import guided_sample, scheduler_rows
from tfmq_export.models.loading import load_model
from tfmq_export.models.prompts import encode_guided
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.sampling import initial_noise, make_scheduler
from tfmq_export.temporal import build_table_unet


def phases(steps: int) -> list[tuple[int, int]]:
    """First tenth, the rest of the first third, the last two thirds of the schedule (step ranges)."""
    first = max(1, steps // 10)
    third = max(first + 1, steps // 3)
    return [(0, first), (first, third), (third, steps)]


def guided_error_terms(model, artifact_dir: Path, scale: float, num_images: int) -> dict:
    """The per-phase mean squared errors of one artifact (see the module docstring)."""
    artifact = load_artifact(artifact_dir)
    quantized = simulation_from_artifact(model.unet, artifact)
    fp = build_table_unet(model.unet, artifact.timesteps).eval()
    conditions = encode_guided(model.pipeline, digits_text_prompts(), None, scale, model.sample_shape[-1])
    scheduler = make_scheduler(artifact.settings.get("scheduler"), model.scheduler_config, len(artifact.timesteps))
    rows = scheduler_rows(artifact.timesteps, scheduler)
    terms: list[tuple[float, float, float, float]] = []

    def denoise(x: torch.Tensor, row: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        reference = fp(x, row, feed[INPUT_CONDITIONS])
        e_u, e_c = (quantized(x, row, feed[INPUT_CONDITIONS]) - reference).chunk(2)
        guided = e_u + scale * (e_c - e_u)
        terms.append(tuple(float(t.pow(2).mean()) for t in (e_u, e_c, e_c - e_u, guided)))
        return reference

    with torch.no_grad():
        guided_sample(denoise, scheduler, initial_noise(num_images, model.sample_shape, 7),
                      conditions.cycled(0, num_images), rows)
    table = np.array(terms)
    out = []
    for lo, hi in phases(len(table)):
        e_u, e_c, diff, guided = table[lo:hi].mean(axis=0)
        out.append({"steps": [lo, hi], "e_uncond": e_u, "e_cond": e_c, "difference": diff, "guided": guided,
                    "difference_share": scale**2 * diff / guided,
                    "halves_correlation": (e_u + e_c - diff) / (2 * np.sqrt(e_u * e_c))})
    return {"artifact": str(artifact_dir), "settings": artifact.settings.get("extra", {}), "phases": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--model", default="digits-text", choices=["digits-text"])
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--num-images", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    results = [guided_error_terms(model, a, args.guidance_scale, args.num_images) for a in args.artifacts]
    for r in results:
        print(r["artifact"], json.dumps(r["settings"]))
        for p in r["phases"]:
            print(f"  steps {p['steps'][0]}-{p['steps'][1]}: e_u^2 {p['e_uncond']:.3e} e_c^2 {p['e_cond']:.3e} "
                  f"(e_c-e_u)^2 {p['difference']:.3e} guided^2 {p['guided']:.3e}; s^2 (e_c-e_u)^2 / guided "
                  f"{p['difference_share']:.2f}, correlation of the halves {p['halves_correlation']:.2f}")
    if args.json:
        payload = {"model": args.model, "guidance_scale": args.guidance_scale, "num_images": args.num_images,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "command": "python benchmarks/guided_error.py " + " ".join(str(a) for a in args.artifacts)
                   + f" --guidance-scale {args.guidance_scale} --num-images {args.num_images}",
                   "results": results}
        atomic_write_text(args.json, json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
