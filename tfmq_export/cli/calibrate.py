"""``tfmq-export calibrate``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly


@click.command("calibrate")
@click.argument("model")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Artifact folder to write.")
@click.option("--method", type=click.Choice(["minmax", "qdiff", "tfmq"]), default=None, help="Calibration method.")
@click.option("--wbits", type=int, default=None, help="Weight bits: 4, 8 or 16 (16 = float).")
@click.option("--abits", type=int, default=None, help="Activation bits: 8 or 16 (16 = float).")
@click.option("--steps", type=int, default=None, help="DDIM sampler steps = rows of the temporal table.")
@click.option("--num-samples", type=int, default=None, help="Full-precision trajectories; every step of each is kept.")
@click.option("--iters", type=int, default=None, help="Reconstruction iterations per block (qdiff, tfmq).")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--static-scale-rule", type=click.Choice(["max", "mse"]), default=None,
              help="Engine activation scale from the per-step ranges: max over steps (default) or the least "
                   "error summed over the steps.")
@click.option("--temporal-table", type=click.Choice(["fp", "quantized"]), default=None,
              help="Build the table from the full-precision or the TIAR-quantized temporal block (tfmq).")
@click.option("--recipe", default=None, metavar="NAME|FILE.json",
              help="A shipped recipe name (e.g. digits-tfmq-w4a8) or a JSON file; command-line options override it.")
@click.option("--conditions", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="encoder_hidden_states [N, S, D] (.npy) for a conditional UNet.")
@click.option("--prompts", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Prompts (one per line) for a text-to-image pipeline folder: calibrates on both guidance halves.")
@click.option("--negative-prompt", default=None, help="With --prompts: the negative prompt (default: empty).")
@click.option("--guidance-scale", type=float, default=None,
              help="With --prompts: classifier-free guidance scale, at least 1 (default 7.5).")
@click.option("--scheduler", type=click.Choice(["ddim", "pndm", "euler", "dpm++"]), default=None,
              help="Sampler of the calibration pass = the table's rows (default: the model's own; DDIM for DDPM).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@device_option
@friendly
def calibrate(model, out_dir, method, wbits, abits, steps, num_samples, iters, seed, batch_size, static_scale_rule,
              temporal_table, recipe, conditions, prompts, negative_prompt, guidance_scale, scheduler, quiet,
              device) -> None:
    """Calibrate MODEL (`digits` or a local diffusers folder) and write an artifact to --out.

    \b
    Example:
      tfmq-export calibrate digits --out calib/out/tfmq-w4a8 --method tfmq --wbits 4 --abits 8
      tfmq-export calibrate ./my-sd15 --prompts prompts.txt --guidance-scale 7.5 --out calib/out/sd-w8a8
    """
    from tfmq_export.workflows.calibrate import calibrate_model

    overrides = {"method": method, "wbits": wbits, "abits": abits, "steps": steps, "num_samples": num_samples,
                 "iters": iters, "seed": seed, "batch_size": batch_size, "static_scale_rule": static_scale_rule,
                 "temporal_table": temporal_table, "negative_prompt": negative_prompt,
                 "guidance_scale": guidance_scale, "scheduler": scheduler}
    artifact = calibrate_model(model, out_dir, overrides, recipe=recipe, conditions=conditions, prompts=prompts,
                               progress=not quiet, device=device)
    click.echo(
        f"wrote {out_dir} ({artifact.method} W{artifact.wbits}A{artifact.abits}, {len(artifact.layers)} quantized "
        f"layers, {len(artifact.timesteps)} steps, {artifact.timings['calib_seconds']:.1f} s)"
    )
