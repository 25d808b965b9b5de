"""``tfmq-export export-pipeline``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import OPENVINO_TARGET_HELP, TARGET_HELP, output_options, precision_option
from tfmq_export.contract import EXPORT_TARGETS


@click.command("export-pipeline")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Pipeline folder to write.")
@click.option("--target", type=click.Choice(list(EXPORT_TARGETS)), default="onnxruntime", show_default=True,
              help=TARGET_HELP + OPENVINO_TARGET_HELP + " Text encoder and VAE decoder stay float.")
@click.option("--timesteps", type=click.Choice(["sampler", "all"]), default="sampler", show_default=True,
              help="UNet table rows: the calibrated schedule, or every training timestep (sample --steps N).")
@click.option("--model", default=None, show_default="recorded in the artifact",
              help="The model (pipeline folder) the artifact was calibrated on.")
@precision_option("the float parts of every stage (an SDXL VAE decoder stays fp32, as in diffusers)")
@output_options
@friendly
def export_pipeline_cmd(artifact_dir, out_dir, target, timesteps, model, precision) -> None:
    """Export every stage of a calibrated text-to-image pipeline: unet.onnx, text_encoder.onnx,
    vae_decoder.onnx, tokenizer/, scheduler/ and pipeline.json.

    \b
    Example:
      tfmq-export export-pipeline calib/out/sd-w8a8 --out engines/sd-w8a8 --target onnxruntime
    """
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    described = export_pipeline_folder(artifact_dir, out_dir, target, model, timesteps, precision)
    click.echo(f"wrote {out_dir} ({described['pipeline_class']}, {', '.join(described['stages'])}, "
               f"{described['precision']}, {target})")
