"""OpenVINO IR engines: our Q/DQ graph converted as is (NNCF's own INT8 peer is in ``nncf.py``).

``build_openvino_engine`` converts the exported Q/DQ ONNX to IR (.xml + .bin). OpenVINO reads
QuantizeLinear/DequantizeLinear as FakeQuantize and its CPU plugin runs the quantized
convolutions and fully-connected layers in int8, so the IR computes what the calibration chose.
Weights are saved without FP16 compression (``compress_to_fp16=False``): the float parts must stay
what onnxruntime and the torch simulation compute. The model is compiled on the CPU before
anything is written (``validate=True``, see ``ir.py``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from tfmq_export.backends.manifest import load_source_onnx, manifest_path, provenance
from tfmq_export.backends.openvino.ir import check_ir_path, compile_report, fp16_hint, ir_manifest, ov_message
from tfmq_export.errors import TfmqError
from tfmq_export.io import commit_staged, staged_dir

__all__ = ["build_openvino_engine"]


def build_openvino_engine(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, validate: bool = True
) -> dict[str, Any]:
    """Convert the exported ONNX to OpenVINO IR at ``out_path`` (.xml, .bin beside it) + manifest."""
    import openvino as ov

    out = check_ir_path(out_path)
    src, source_model = load_source_onnx(onnx_path)
    start = time.perf_counter()
    with staged_dir(out) as stage:
        try:
            model = ov.convert_model(str(src))
        except Exception as exc:  # OpenVINO raises OpConversionFailure / RuntimeError
            raise TfmqError(f"OpenVINO could not convert {src}: {ov_message(exc)}{fp16_hint(src)}") from exc
        report = compile_report(model, src) if validate else {}
        ov.save_model(model, str(stage / out.name), compress_to_fp16=False)
        manifest: dict[str, Any] = {
            "backend": "openvino",
            **ir_manifest(stage, out, model),
            **report,
            **provenance(src, source_model, start),
        }
        commit_staged(stage, out.parent, manifest["engine_files"], manifest, manifest_path(out).name)
    return manifest
