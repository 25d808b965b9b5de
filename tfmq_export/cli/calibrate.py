"""``tfmq-export calibrate``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import ABITS, WBITS, is_verbose, output_options
from tfmq_export.config import ACT_GRIDS, DEFAULT_ITERS, CalibrationSettings

_BUILT_IN = CalibrationSettings()


def _default(field: str) -> str:
    """The built-in value shown as the default: a recipe's value wins over it, a given option over both."""
    return f"{getattr(_BUILT_IN, field)} without --recipe"


@click.command("calibrate")
@click.argument("model")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Artifact folder to write.")
@click.option("--recipe", default=None, metavar="NAME|FILE.json", show_default="none: built-in defaults",
              help="A shipped recipe name (e.g. digits-tfmq-w4a8) or a JSON file of settings; the options below "
                   "that are given override it.")
@click.option("--method", type=click.Choice(["minmax", "qdiff", "tfmq"]), default=None,
              show_default=_default("method"),
              help="Calibration method: minmax (observed ranges), qdiff (Q-Diffusion) or tfmq (TFMQ-DM).")
@click.option("--wbits", type=WBITS, default=None, show_default=_default("wbits"),
              help="Weight bits (16 = float weights).")
@click.option("--abits", type=ABITS, default=None, show_default=_default("abits"),
              help="Activation bits (16 = float activations).")
@click.option("--steps", type=int, default=None, show_default=_default("steps"),
              help="Sampler steps of the calibration pass = rows of the temporal table.")
@click.option("--num-samples", type=int, default=None, show_default=_default("num_samples"),
              help="Calibration trajectories (full precision); every step of each is kept, so the data holds "
                   "num-samples x steps inputs. Not images: see --num-images of sample/evaluate.")
@click.option("--iters", type=int, default=None, show_default=f"0 = {DEFAULT_ITERS} without --recipe",
              help="Reconstruction iterations per block (qdiff, tfmq; minmax has none).")
@click.option("--seed", type=int, default=None, show_default=_default("seed"),
              help="Random seed of the calibration trajectories and the reconstruction.")
@click.option("--batch-size", type=int, default=None, show_default=_default("batch_size"),
              help="Inputs per UNet call while the trajectories and activation ranges are collected.")
@click.option("--static-scale-rule", type=click.Choice(["max", "mse"]), default=None,
              show_default=_default("static_scale_rule"),
              help="Engine activation scale from the per-step ranges: max over steps or the least error summed "
                   "over the steps.")
@click.option("--temporal-table", type=click.Choice(["fp", "quantized"]), default=None,
              show_default=_default("temporal_table"),
              help="Build the table from the full-precision or the TIAR-quantized temporal block (tfmq).")
@click.option("--conditions", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              show_default="none", help="encoder_hidden_states [N, S, D] (.npy) for a conditional UNet.")
@click.option("--prompts", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              show_default="none",
              help="Prompts (one per line) for a text-to-image pipeline folder: calibrates on both guidance halves.")
@click.option("--negative-prompt", default=None, show_default="empty",
              help="With --prompts: the negative prompt.")
@click.option("--guidance-scale", type=float, default=None, show_default="7.5",
              help="With --prompts: classifier-free guidance scale, at least 1 (1 = no guidance).")
@click.option("--scheduler", type=click.Choice(["ddim", "pndm", "euler", "dpm++"]), default=None,
              show_default="the model's own; DDIM for DDPM",
              help="Sampler of the calibration pass = the table's rows.")
@click.option("--cache-budget", type=float, default=None, metavar="GB", show_default="1 GB in RAM, chunked",
              help="Memory for cached block inputs + targets during reconstruction; a block that needs more is "
                   "captured into memory-mapped files under --out/.work instead (sets extra cache_mb and "
                   "disk_cache).")
@click.option("--offload", is_flag=True, default=False,
              help="With --device cuda: keep the UNets in CPU memory and move each top-level block to the GPU only "
                   "while it runs; the block being learned stays on the GPU (sets extra offload; docs/SCALING.md).")
@click.option("--linear-act-grid", type=click.Choice(list(ACT_GRIDS)), default=None,
              show_default="int8 without --recipe",
              help="Input grid of the Linear (MatMul/Gemm) layers: int8 ([-128, 127], every target) or uint8-127 "
                   "([-127, 128], uint8 zero point 127: OpenVINO runs those layers as u8 FullyConnected kernels; "
                   "export with --target openvino or onnxruntime, not tensorrt). Sets extra linear_act_grid.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine, started with torch's elastic launcher (torchrun); "
                   "gloo on cpu, NCCL with --device cuda (one GPU per process). See docs/SCALING.md.")
@output_options
@device_option
@friendly
def calibrate(model, out_dir, method, wbits, abits, steps, num_samples, iters, seed, batch_size, static_scale_rule,
              temporal_table, recipe, conditions, prompts, negative_prompt, guidance_scale, scheduler, cache_budget,
              offload, linear_act_grid, workers, quiet, device) -> None:
    """Calibrate MODEL (`digits` or a local diffusers folder) and write an artifact to --out.

    Settings come from three places, in this order of precedence: the options given here, then the
    --recipe (it may set method, wbits, abits, steps, num_samples, iters, seed, batch_size,
    weight_init, static_scale_rule, temporal_table, scheduler, negative_prompt, guidance_scale and
    the method options in "extra"), then the built-in defaults shown below. The built-in defaults are
    not the shipped recipes': `--method tfmq --wbits 4 --abits 8` alone uses the max static-scale
    rule, `--recipe digits-tfmq-w4a8` the mse rule (each recipe's notes explain its values).
    --verbose prints the resolved settings before calibrating.

    \b
    Examples:
      tfmq-export calibrate digits --recipe digits-tfmq-w4a8 --out calib/out/tfmq-w4a8
      tfmq-export calibrate digits --recipe digits-tfmq-w8a8 --seed 1 --out calib/out/tfmq-w8a8-s1
      tfmq-export calibrate ./my-sd15 --recipe sd-v1-4-w8a8 --prompts prompts.txt --guidance-scale 7.5 \\
          --out calib/out/sd-w8a8
      tfmq-export calibrate digits --recipe digits-tfmq-w4a8 --workers 2 --out calib/out/tfmq-w4a8
      tfmq-export calibrate digits --recipe digits-w8a8 --linear-act-grid uint8-127 --out calib/out/w8a8-ov
      torchrun --nproc-per-node 2 -m tfmq_export.cli calibrate digits --method tfmq --wbits 4 --abits 8 \\
          --out calib/out/tfmq-w4a8-2ranks
    """
    if workers > 1:
        from tfmq_export.cli.launch import launch_workers

        launch_workers(click.get_current_context(), workers)
        return
    from tfmq_export.distributed import is_writer
    from tfmq_export.workflows.calibrate import calibrate_model

    overrides = {"method": method, "wbits": wbits, "abits": abits, "steps": steps, "num_samples": num_samples,
                 "iters": iters, "seed": seed, "batch_size": batch_size, "static_scale_rule": static_scale_rule,
                 "temporal_table": temporal_table, "negative_prompt": negative_prompt,
                 "guidance_scale": guidance_scale, "scheduler": scheduler}
    if is_verbose():
        from tfmq_export.config import load_recipe, settings_from

        resolved = settings_from(load_recipe(recipe) if recipe is not None else None, overrides)
        click.echo(f"settings: {resolved.record()}", err=True)
        # the options the method runs with, its own defaults filled in (config.METHOD_DEFAULTS, W4_METHOD_DEFAULTS)
        click.echo(f"method options: {vars(resolved.options)}", err=True)
    artifact = calibrate_model(model, out_dir, overrides, recipe=recipe, conditions=conditions, prompts=prompts,
                               progress=not quiet, device=device, cache_budget_gb=cache_budget,
                               offload=offload, linear_act_grid=linear_act_grid)
    if not is_writer():
        return
    click.echo(
        f"wrote {out_dir} ({artifact.method} W{artifact.wbits}A{artifact.abits}, {len(artifact.layers)} quantized "
        f"layers, {len(artifact.timesteps)} steps, {artifact.timings['calib_seconds']:.1f} s)"
    )
