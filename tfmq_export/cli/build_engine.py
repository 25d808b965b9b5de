"""``tfmq-export build-engine``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options
from tfmq_export.contract import FLOAT_STAGES


@click.command("build-engine")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              show_default="DIR/engines/BACKEND for a pipeline folder",
              help="The engine file to write (required for FILE.onnx); for a pipeline folder, the engines' folder.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True, help="Runtime the engine is built for.")
@click.option("--min-batch", type=int, default=1, show_default=True,
              help="TensorRT profile: the smallest UNet batch size.")
@click.option("--opt-batch", type=int, default=1, show_default=True,
              help="TensorRT profile: the UNet batch size tuned for.")
@click.option("--max-batch", type=int, default=2, show_default=True,
              help="TensorRT profile: the largest UNet batch size (classifier-free guidance doubles it).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, show_default="none",
              help="TensorRT timing cache file (read and updated).")
@click.option("--float-stages", type=click.Choice(FLOAT_STAGES), default=None, show_default="default",
              help="Pipeline folder: text encoder(s) and VAE decoder at the backend's default precision (OpenVINO: "
                   "its own, bf16 on AMX CPUs; TensorRT: FP16) or fp32; recorded in pipeline.json.")
@output_options
@friendly
def build_engine(onnx_path, out_path, backend, min_batch, opt_batch, max_batch, timing_cache, float_stages) -> None:
    """Build an engine from an exported ONNX graph (or every stage of a pipeline folder), with manifests.

    \b
    Examples:
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.ort.onnx
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.xml --backend openvino
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.plan --backend tensorrt
      tfmq-export build-engine pipe-w8a8/ --backend openvino      # every stage; `sample pipe-w8a8/` uses them
      tfmq-export build-engine pipe-fp32/ --backend openvino --float-stages fp32   # FP32 text encoder and VAE
    """
    from tfmq_export.errors import TfmqError

    if onnx_path.is_dir():
        from tfmq_export.workflows.build_pipeline import build_pipeline_engines

        manifests = build_pipeline_engines(onnx_path, backend, out_path, batches=(min_batch, opt_batch, max_batch),
                                           timing_cache=timing_cache, float_stages=float_stages or "default")
        for stage, manifest in manifests.items():
            click.echo(f"{stage}: {manifest['engine']} ({backend}, {manifest['stage_precision']}, "
                       f"{manifest['engine_bytes'] / 1e6:.1f} MB, {manifest.get('build_seconds', 0):.1f} s)")
        click.echo(f"engines recorded in {onnx_path / 'pipeline.json'} under engines.{backend}")
        return
    if float_stages is not None:
        raise TfmqError("--float-stages applies to pipeline folders (export-pipeline); one .onnx file has no float "
                        "stages")
    if out_path is None:
        raise TfmqError("--out is required when building one .onnx file (the engine's path)")
    from tfmq_export.backends.builders import build_engine as build

    options = ({"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch, "timing_cache": timing_cache}
               if backend == "tensorrt" else {})
    manifest = build(backend, onnx_path, out_path, **options)
    click.echo(f"wrote {out_path} ({backend}); manifest: {json.dumps(manifest.get('summary', {}))}")
