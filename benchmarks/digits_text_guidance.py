"""Prompt accuracy and digits-FID of the shipped ``digits-text`` pipeline against the guidance scale.

Full precision through diffusers' own ``StableDiffusionPipeline`` (the shipped folder, DDIM 25 steps),
the same latents for every scale. Chooses the evaluation's guidance (docs/MODEL.md).

    python benchmarks/digits_text_guidance.py [--per-digit 100] [--scales 1,1.5,2,3,5,7.5] [--json F]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from tfmq_export.metrics.fid import digits_fid
from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy
from tfmq_export.models.digits_text import DIGITS_TEXT_DIR, digits_text_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--scales", default="1,1.5,2,3,5,7.5")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DIGITS_TEXT_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    n = 10 * args.per_digit
    latents = torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(args.seed))
    prompts = [p for p in digits_text_prompts() for _ in range(args.per_digit)]
    digits = np.repeat(np.arange(10), args.per_digit)
    rows = []
    print("| guidance | prompt accuracy | digits-FID | seconds |\n| --- | --- | --- | --- |")
    for scale in tqdm([float(s) for s in args.scales.split(",")], desc="guidance scales"):
        start = time.perf_counter()
        images = np.concatenate([pipe(prompts[i : i + 250], num_inference_steps=args.steps, guidance_scale=scale,
                                      latents=latents[i : i + 250], output_type="np").images
                                 for i in range(0, n, 250)])
        x = pipeline_to_digits(images)
        row = {"guidance": scale, "accuracy": prompt_accuracy(x, digits), "fid": digits_fid(x),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"| {scale} | {row['accuracy']:.3f} | {row['fid']:.2f} | {row['seconds']} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"per_digit": args.per_digit, "steps": args.steps, "seed": args.seed, "rows": rows}, handle,
                      indent=2)


if __name__ == "__main__":
    main()
