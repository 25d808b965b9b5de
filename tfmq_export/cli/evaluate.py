"""``tfmq-export evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly


@click.command("evaluate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--model", type=click.Choice(["digits", "digits-text"]), default="digits", show_default=True,
              help="digits: the unconditional UNet; digits-text: the text-to-image pipeline, sampled through "
                   "its exported stages with and without guidance (adds prompt accuracy).")
@click.option("--methods", default="minmax,qdiff,tfmq", show_default=True)
@click.option("--bits", default="w8a8,w4a8,w4a16", show_default=True)
@click.option("--num-images", type=int, default=None,
              help="Samples per setting [default: 5000 for digits (FID with 1,000 moved 13.8-33.1 between seeds), "
                   "2000 for digits-text, per guidance setting].")
@click.option("--guidance-scale", type=float, default=None,
              help="digits-text: the classifier-free guidance scale of calibration and the guided rows [default: 3].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True)
@click.option("--doc", "doc_path", type=click.Path(path_type=Path), default=None,
              help="Also write the Markdown table here (e.g. docs/RESULTS.md).")
@click.option("--quiet", is_flag=True)
@device_option
@friendly
def evaluate(out_dir, model, methods, bits, num_images, guidance_scale, seed, target, doc_path, quiet, device) -> None:
    """Calibrate (or reuse), export, sample and score every method x bits on a bundled model.

    \b
    Examples:
      tfmq-export evaluate --out runs/eval --doc docs/RESULTS.md
      tfmq-export evaluate --model digits-text --out runs/eval-text --bits w8a8,w4a8 --doc docs/RESULTS-text.md
    """
    from tfmq_export.workflows.evaluate_text import evaluate_model

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bit_list = [b.strip() for b in bits.split(",") if b.strip()]
    _results, markdown = evaluate_model(model, out_dir, method_list, bit_list, num_images=num_images, seed=seed,
                                        target=target, guidance_scale=guidance_scale, doc_path=doc_path,
                                        progress=not quiet, device=device)
    click.echo(markdown)
