"""``tfmq-export lint``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options
from tfmq_export.errors import TfmqError


@click.command("lint")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@output_options
@friendly
def lint(onnx_path) -> None:
    """Check an exported graph against TensorRT's explicit-quantization rules; exit 1 on violations."""
    from tfmq_export.export.lint import format_violations, lint_onnx_file

    violations = lint_onnx_file(onnx_path)
    if violations:
        click.echo(format_violations(violations))
        raise TfmqError(f"{len(violations)} TensorRT rule violation(s) in {onnx_path}")
    click.echo(f"{onnx_path}: no violations")
