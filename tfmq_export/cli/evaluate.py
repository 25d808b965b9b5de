"""``tfmq-export evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import TARGET_HELP, output_options


@click.command("evaluate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Run folder to write (artifacts, graphs, samples, results.json); finished rows are reused.")
@click.option("--model", type=click.Choice(["digits", "digits-text"]), default="digits", show_default=True,
              help="The bundled model to evaluate. digits: the unconditional UNet; digits-text: the text-to-image "
                   "pipeline, sampled through its exported stages with and without guidance (adds prompt accuracy).")
@click.option("--methods", default="minmax,qdiff,tfmq", show_default=True,
              help="Comma-separated calibration methods: minmax, qdiff, tfmq, and the ModelOpt peers modelopt-int8 "
                   "(INT8 SmoothQuant, a W8A8 row) and modelopt-w4a16 (INT4 weight-only, a W4A16 row), each shown "
                   "only at its own bit setting when --bits lists it (peers need nvidia-modelopt).")
@click.option("--bits", default="w8a8,w4a8,w4a16", show_default=True,
              help="Comma-separated bit settings (W8A8: 8-bit weights, 8-bit activations).")
@click.option("--num-images", type=int, default=None, show_default="5000 for digits, 2000 for digits-text",
              help="Images generated per setting (digits-text: per guidance setting). digits takes at least 2 (FID "
                   "needs a covariance), but FID is only stable from 5,000 (with 1,000 it moved 13.8-33.1 between "
                   "seeds); digits-text takes a multiple of 10 (one share per digit), at least 20.")
@click.option("--guidance-scale", type=float, default=None, show_default="2",
              help="digits-text: classifier-free guidance scale of calibration and the guided rows, above 1.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed of the generated images, the same for every row so each is paired with the FP "
                   "images (calibration seeds: --calib-seeds).")
@click.option("--calib-seeds", default=None, show_default="0,1,2 for 4-bit weights, 0 for 8-bit",
              help="Comma-separated calibration seeds (trajectories and minibatch order) every quantized row runs; "
                   "the report gives each method x bits the mean and spread (max - min) over them.")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help=TARGET_HELP)
@click.option("--skip", default="", show_default="none",
              help="Comma-separated rows of --methods x --bits to leave out, as METHOD-BITS (e.g. qdiff-w4a8); the "
                   "report names them.")
@click.option("--doc", "doc_path", type=click.Path(path_type=Path), default=None,
              show_default="not written", help="Also write the Markdown table here (e.g. docs/RESULTS.md).")
@output_options
@device_option
@friendly
def evaluate(out_dir, model, methods, bits, num_images, guidance_scale, seed, calib_seeds, target, skip, doc_path,
             quiet, device) -> None:
    """Calibrate (or reuse), export, sample and score every method x bits on a bundled model.

    \b
    Examples:
      tfmq-export evaluate --out runs/eval --doc docs/RESULTS.md
      tfmq-export evaluate --out runs/eval --methods tfmq,qdiff --bits w4a8 --calib-seeds 0,1,2,3,4
      tfmq-export evaluate --model digits-text --out runs/eval-text --bits w8a8,w4a8 --doc docs/RESULTS-text.md
    """
    from tfmq_export.distributed import init_from_env, is_writer
    from tfmq_export.workflows.evaluate_text import evaluate_model

    init_from_env(device)  # torchrun: calibration data-parallel, sampling sharded (docs/SCALING.md)

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bit_list = [b.strip() for b in bits.split(",") if b.strip()]
    _results, markdown = evaluate_model(model, out_dir, method_list, bit_list, num_images=num_images, seed=seed,
                                        target=target, guidance_scale=guidance_scale, doc_path=doc_path,
                                        progress=not quiet, device=device,
                                        skip=[r.strip() for r in skip.split(",") if r.strip()], calib_seeds=calib_seeds)
    if is_writer():
        click.echo(markdown)
