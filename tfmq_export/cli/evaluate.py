"""``tfmq-export evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly


@click.command("evaluate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--methods", default="minmax,qdiff,tfmq", show_default=True)
@click.option("--bits", default="w8a8,w4a8,w4a16", show_default=True)
@click.option("--num-images", type=int, default=5000, show_default=True,
              help="Samples per setting (at least 1,000; FID with 1,000 moved 13.8-33.1 between seeds).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True)
@click.option("--doc", "doc_path", type=click.Path(path_type=Path), default=None,
              help="Also write the Markdown table here (e.g. docs/RESULTS.md).")
@click.option("--quiet", is_flag=True)
@friendly
def evaluate(out_dir, methods, bits, num_images, seed, target, doc_path, quiet) -> None:
    """Calibrate (or reuse), export, sample and score every method x bits on the digits model.

    \b
    Example:
      tfmq-export evaluate --out runs/eval --doc docs/RESULTS.md
    """
    from tfmq_export.workflows.evaluate import results_markdown, run_evaluate

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bit_list = [b.strip() for b in bits.split(",") if b.strip()]
    results = run_evaluate(out_dir, method_list, bit_list, num_images, seed, target, doc_path, progress=not quiet)
    click.echo(results_markdown(results))
