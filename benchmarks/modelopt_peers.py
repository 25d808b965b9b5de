"""ModelOpt peers vs full precision: paired RMSE / MSE from the same noise, FID, calibration time.

Every image (full precision and each peer) is sampled in torch through the same table-UNet loop
(``workflows.evaluate_peers``), so the paired error measures quantization only. ``digits``:
``--num-images`` images of the unconditional model, pixels in [-1, 1]. ``digits-text``:
``--per-digit`` images of each digit prompt with guidance ``--guidance`` (calibrated at the same
scale), pixels in [0, 1], plus prompt accuracy. Prints JSON (also to ``--json``).

    python benchmarks/modelopt_peers.py --model digits --num-images 500 --threads 1
    python benchmarks/modelopt_peers.py --model digits-text --steps 50 --per-digit 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from typing import Any

import numpy as np
import torch

from tfmq_export.calibration.modelopt_peer import (
    MODELOPT_VERSION,
    PEER_METHODS,
    enabled_quantizers,
    peer_config,
)
from tfmq_export.metrics.fid import digits_fid
from tfmq_export.models.loading import load_model
from tfmq_export.sampling import resolve_scheduler_name, sampler_timesteps
from tfmq_export.temporal import build_table_unet
from tfmq_export.workflows.evaluate import paired_rmse
from tfmq_export.workflows.evaluate_peers import peer_unet, table_images, table_prompt_images

#: ``--w4-per-channel``: modelopt-w4a16 with one 4-bit scale per output channel (our grain), not a peer row
PER_CHANNEL = "modelopt-w4a16-per-channel"


def per_channel_config() -> dict[str, Any]:
    """INT4 AWQ with the weight quantizers per output channel (axis 0) instead of blocks of 128 along
    the last axis, which for a Conv2d is the kernel width: one scale per kw weights."""
    config = peer_config("modelopt-w4a16")
    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer" and "cfg" in entry:
            entry["cfg"] = {"num_bits": 4, "axis": 0}
    return config


def _text_images(model: Any, unet: torch.nn.Module, timesteps: list, scheduler: str, args: argparse.Namespace):
    """Digit-major images of the ten prompts (noise seeded by (seed, digit), as ``evaluate_text``)."""
    from tfmq_export.models.digits_text import digit_prompt

    return np.concatenate([table_prompt_images(model, unet, timesteps, scheduler, digit_prompt(d), args.guidance,
                                               args.per_digit, args.seed * 1000 + d, args.steps, args.batch_size)
                           for d in range(10)])


def _metrics(images: np.ndarray, reference: np.ndarray, text: bool) -> dict[str, Any]:
    rmse = paired_rmse(images, reference)
    out: dict[str, Any] = {"rmse_vs_fp": round(rmse, 5), "mse_vs_fp": round(rmse**2, 6)}
    if text:
        from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy

        digits = pipeline_to_digits(images)
        out["prompt_accuracy"] = prompt_accuracy(digits, np.repeat(np.arange(10), len(images) // 10))
        out["digits_fid"] = round(digits_fid(digits), 3)
    else:
        out["digits_fid"] = round(digits_fid(images), 3)
    return out


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (every option spelled out)."""
    parts = ["python", "benchmarks/modelopt_peers.py"]
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", choices=("digits", "digits-text"))
    parser.add_argument("--methods", default=",".join(PEER_METHODS))
    parser.add_argument("--num-images", type=int, default=500, help="digits: images per row")
    parser.add_argument("--per-digit", type=int, default=20, help="digits-text: images per digit prompt")
    parser.add_argument("--guidance", type=float, default=2.0, help="digits-text: sampling and calibration scale")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--w4-per-channel", action="store_true",
                        help=f"also measure {PER_CHANNEL} (per-output-channel 4-bit weights; informational)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = args.model == "digits-text"
    model = load_model(args.model)
    scheduler = resolve_scheduler_name(None, model.scheduler_config)
    timesteps = sampler_timesteps(model.scheduler_config, args.steps, scheduler)
    fp_sim = build_table_unet(model.unet, timesteps).eval()

    def sample(unet: torch.nn.Module, label: str) -> np.ndarray:
        if text:
            return _text_images(model, unet, timesteps, scheduler, args)
        return table_images(model, unet, timesteps, scheduler, args.num_images, args.seed, args.steps,
                            args.batch_size, label=label)

    start = time.perf_counter()
    reference = sample(fp_sim, "fp")
    rows: list[dict[str, Any]] = [{"method": "fp", "sample_seconds": round(time.perf_counter() - start, 1),
                                   **_metrics(reference, reference, text)}]
    for method in [m for m in args.methods.split(",") if m] + ([PER_CHANNEL] if args.w4_per_channel else []):
        variant = method == PER_CHANNEL
        peer = peer_unet(model, "modelopt-w4a16" if variant else method, calib_seed=args.calib_seed,
                         steps=args.steps, calib_guidance=args.guidance if text else None,
                         config=per_channel_config() if variant else None)
        start = time.perf_counter()
        images = sample(peer.unet, method)
        bits = enabled_quantizers(peer.unet)
        wbits, abits = PEER_METHODS.get(method, (4, 16))
        rows.append({"method": method, "wbits": wbits, "abits": abits,
                     "calibration_seconds": round(peer.calibration_seconds, 1),
                     "sample_seconds": round(time.perf_counter() - start, 1),
                     "enabled_quantizers": len(bits), **_metrics(images, reference, text)})
    result = {"command": _command(args),
              "model": args.model, "modelopt": MODELOPT_VERSION, "steps": args.steps, "seed": args.seed,
              "calib_seed": args.calib_seed, "num_images": len(reference), "threads": args.threads,
              "pixel_range": "[0, 1]" if text else "[-1, 1]", "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        from pathlib import Path

        from tfmq_export.io import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
