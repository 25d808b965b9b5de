"""``tfmq-export sample``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfmq_export.cli.errors import friendly


@click.command("sample")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="PNG grid to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "torch"]), default="onnxruntime",
              show_default=True, help="torch runs the simulation of an artifact folder.")
@click.option("--num-images", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=250, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write a JSON summary (and digits-FID for the digits model).")
@click.option("--model", default=None,
              help="The model (torch backend: the one the artifact folder was calibrated on; ONNX: checked "
                   "against the graph's recorded weight fingerprint).")
@click.option("--scheduler", type=click.Choice(["ddim", "pndm", "euler", "dpm++"]), default=None,
              help="Sampler (default: the one calibrated on); the table needs a row for each of its timesteps.")
@click.option("--steps", type=int, default=None,
              help="Sampler steps (default: the calibrated count); other counts need an --timesteps all export.")
@friendly
def sample(source, out_path, backend, num_images, seed, batch_size, json_path, model, scheduler, steps) -> None:
    """Sample images with the shared sampling loop from an exported ONNX file or an artifact folder.

    \b
    Example:
      tfmq-export sample engines/digits-w8a8.onnx --out samples.png --num-images 64
      tfmq-export sample engines/digits-all.onnx --scheduler euler --steps 25 --out samples.png
    """
    from tfmq_export.workflows.sample import sample_to_files

    summary = sample_to_files(source, out_path, backend, num_images, seed, batch_size, json_path, model,
                              scheduler, steps)
    click.echo(json.dumps(summary))
