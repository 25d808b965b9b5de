"""The ``tfmq-export`` group: registers one command per module of this package."""

from __future__ import annotations

import click

from tfmq_export import __version__
from tfmq_export.cli.bench import bench
from tfmq_export.cli.build_engine import build_engine
from tfmq_export.cli.calibrate import calibrate
from tfmq_export.cli.demo import demo
from tfmq_export.cli.evaluate import evaluate
from tfmq_export.cli.export_onnx import export_onnx_cmd
from tfmq_export.cli.export_pipeline import export_pipeline_cmd
from tfmq_export.cli.lint import lint
from tfmq_export.cli.sample import sample
from tfmq_export.cli.train_digits import train_digits
from tfmq_export.cli.train_digits_text import train_digits_text

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfmq-export")
def cli() -> None:
    """TFMQ-DM quantization of diffusion UNets, exported as Q/DQ ONNX for TensorRT, OpenVINO and onnxruntime.

    Every command takes --quiet and --verbose; `tfmq-export COMMAND --help` shows each option's default.

    \b
    Typical flow on the bundled model:
      tfmq-export calibrate digits --recipe digits-tfmq-w8a8 --out calib/out/w8a8
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-w8a8.onnx --target onnxruntime
      tfmq-export sample engines/digits-w8a8.onnx --out grid.png
      tfmq-export bench digits --onnx engines/digits-w8a8.onnx --json bench.json
    """


for _command in (calibrate, export_onnx_cmd, export_pipeline_cmd, build_engine, lint, sample, bench, evaluate, demo,
                 train_digits, train_digits_text):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point (``tfmq-export``)."""
    cli()
