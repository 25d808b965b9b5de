"""``tfmq-export demo``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder to write (report.md, artifacts, graphs, grids).")
@click.option("--num-images", type=int, default=1000, show_default=True,
              help="Images generated per setting for digits-FID.")
@output_options
@device_option
@friendly
def demo(out_dir, num_images, quiet, device) -> None:
    """The main job on the bundled model: calibrate (TFMQ W8A8, W4A8), export, sample, bench, report."""
    from tfmq_export.workflows.demo import run_demo

    report = run_demo(out_dir, num_images=num_images, progress=not quiet, device=device)
    click.echo(report)
