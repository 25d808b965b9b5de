"""``tfmq-export build-engine``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfmq_export.cli.errors import friendly


@click.command("build-engine")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile.")
@click.option("--opt-batch", type=int, default=1, show_default=True, help="TensorRT profile.")
@click.option("--max-batch", type=int, default=2, show_default=True,
              help="TensorRT profile (classifier-free guidance doubles the batch).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="TensorRT timing cache file.")
@friendly
def build_engine(onnx_path, out_path, backend, min_batch, opt_batch, max_batch, timing_cache) -> None:
    """Build an engine from an exported ONNX graph, with a JSON manifest beside it.

    \b
    Examples:
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.ort.onnx
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.xml --backend openvino
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.plan --backend tensorrt
    """
    from tfmq_export.backends.builders import build_engine as build

    options = ({"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch, "timing_cache": timing_cache}
               if backend == "tensorrt" else {})
    manifest = build(backend, onnx_path, out_path, **options)
    click.echo(f"wrote {out_path} ({backend}); manifest: {json.dumps(manifest.get('summary', {}))}")
