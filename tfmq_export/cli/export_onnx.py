"""``tfmq-export export-onnx``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import OPENVINO_TARGET_HELP, TARGET_HELP, output_options, precision_option
from tfmq_export.contract import ATTENTION_MODES, EXPORT_TARGETS


@click.command("export-onnx")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@click.option("--target", type=click.Choice(list(EXPORT_TARGETS)), default="tensorrt", show_default=True,
              help=TARGET_HELP + OPENVINO_TARGET_HELP)
@click.option("--model", default=None, show_default="recorded in the artifact",
              help="The model (folder or bundled name) the artifact was calibrated on.")
@click.option("--timesteps", "table", type=click.Choice(["sampler", "all"]), default="sampler", show_default=True,
              help="Temporal table rows: one per calibrated sampler step, or one per training timestep "
                   "(any step count of DDIM/PNDM/Euler/DPM++ with integer timesteps from one engine).")
@click.option("--weight-storage", type=click.Choice(["int8", "int4"]), default="int8", show_default=True,
              help="How 4-bit weights are stored: int8 values on the 4-bit grid, or ONNX INT4 (two a byte, opset "
                   "21; onnxruntime target only: TensorRT has no INT4 conv). INT4 buys file bytes, not speed "
                   "(docs/INT4.md).")
@click.option("--attention", type=click.Choice(list(ATTENTION_MODES)), default=None,
              show_default="int8 for openvino, float otherwise",
              help="int8: Q/DQ on the query and key of every attention score MatMul (scales from the artifact's "
                   "to_q/to_k output ranges), which OpenVINO runs as an int8 attention kernel (as NNCF's INT8 IR "
                   "does); float: leave attention in float (onnxruntime ran quantized attention matmuls slower).")
@precision_option("the graph's float parts (unquantized layers, activations between Q/DQ, scales, table)")
@output_options
@friendly
def export_onnx_cmd(artifact_dir, out_path, target, model, table, weight_storage, attention, precision) -> None:
    """Export the calibrated UNet of ARTIFACT_DIR as a Q/DQ ONNX graph with the temporal table.

    \b
    Example:
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-w8a8.onnx --target tensorrt
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-all.onnx --timesteps all
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-fp32.onnx --precision fp32
      tfmq-export export-onnx calib/out/w8a8-ov --out engines/digits-w8a8-ov.onnx --target openvino
    """
    from tfmq_export.workflows.export_onnx import export_onnx_file

    artifact, precision = export_onnx_file(artifact_dir, out_path, target, model, table, precision, weight_storage,
                                           attention)
    click.echo(f"wrote {out_path} ({target}, {artifact.method} W{artifact.wbits}A{artifact.abits}, {precision}, "
               f"{table} rows)")
