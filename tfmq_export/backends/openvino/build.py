"""OpenVINO IR engines: our Q/DQ graph converted as is, and NNCF's own INT8 quantization (the peer).

``build_openvino_engine`` converts the exported Q/DQ ONNX to IR (.xml + .bin). OpenVINO reads
QuantizeLinear/DequantizeLinear as FakeQuantize and its CPU plugin runs the quantized
convolutions and fully-connected layers in int8, so the IR computes what the calibration chose.
Weights are saved without FP16 compression (``compress_to_fp16=False``): the float parts must stay
what onnxruntime and the torch simulation compute.

``quantize_with_nncf`` is what a CPU user would do instead of TFMQ: hand the *full-precision*
ONNX and some calibration inputs to NNCF's post-training quantization. It is the baseline the
benchmarks call ``nncf-int8``.

Both convert with ``openvino.convert_model`` and compile the model on the CPU before anything is
written (``validate=True``): OpenVINO can convert graphs that its CPU plugin then refuses to
compile (with 2026.4, ``Core.read_model`` of our onnxruntime-target graph fails this way, while
``convert_model``'s output compiles), and a build should fail then, not the first benchmark.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.manifest import load_source_onnx, manifest_path, provenance
from tfmq_export.backends.openvino.runner import contract_input_name
from tfmq_export.errors import TfmqError
from tfmq_export.io import commit_staged, sha256_file, staged_dir

__all__ = ["build_openvino_engine", "quantize_with_nncf"]

#: compiled-graph layer types that carry the network's weights
_WEIGHT_LAYER_TYPES = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")


def _ov_message(exc: BaseException) -> str:
    """The specific line of an OpenVINO error message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # OpenVINO messages start with "Exception from src/...": the last line is the specific one
    return lines[-1] if lines else type(exc).__name__


def _compile_report(model: Any, source: Path) -> dict[str, Any]:
    """Compile ``model`` on the CPU (f32 inference precision) and count layer precisions.

    Counting the runtime precisions of Convolution/FullyConnected layers is the check that the
    quantized layers really run in int8 (ARCHITECTURE.md: NNCF's model ran all of them in int8).
    """
    import openvino as ov

    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as exc:
        raise TfmqError(f"OpenVINO's CPU plugin could not compile {source}: {_ov_message(exc)}") from exc
    precisions: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        layer = info["layerType"].astype(str)
        if layer in _WEIGHT_LAYER_TYPES:
            precisions[f"{layer}:{info['runtimePrecision'].astype(str)}"] += 1
    return {"compiled_cpu_layer_precisions": dict(sorted(precisions.items()))}


def _ir_manifest(stage: Path, out: Path, model: Any) -> dict[str, Any]:
    import openvino as ov

    xml, bin_ = stage / out.name, stage / out.with_suffix(".bin").name
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return {
        "engine": out.name,
        "engine_files": [xml.name, bin_.name],
        "engine_bytes": xml.stat().st_size + bin_.stat().st_size,
        "engine_sha256": {xml.name: sha256_file(xml), bin_.name: sha256_file(bin_)},
        "openvino_version": ov.get_version(),
        "compress_to_fp16": False,
        "inputs": {contract_input_name(i): str(i.get_partial_shape()) for i in model.inputs},
        "op_counts": dict(sorted(ops.items())),
        "FakeQuantize": ops["FakeQuantize"],
    }


def _check_out(out_path: str | os.PathLike[str]) -> Path:
    out = Path(out_path)
    if out.suffix != ".xml":
        raise TfmqError(f"--out {out} must end in .xml (OpenVINO IR is an .xml with a .bin beside it)")
    return out


def build_openvino_engine(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, validate: bool = True
) -> dict[str, Any]:
    """Convert the exported ONNX to OpenVINO IR at ``out_path`` (.xml, .bin beside it) + manifest."""
    import openvino as ov

    out = _check_out(out_path)
    src, source_model = load_source_onnx(onnx_path)
    start = time.perf_counter()
    with staged_dir(out) as stage:
        try:
            model = ov.convert_model(str(src))
        except Exception as exc:  # OpenVINO raises OpConversionFailure / RuntimeError
            raise TfmqError(f"OpenVINO could not convert {src}: {_ov_message(exc)}") from exc
        report = _compile_report(model, src) if validate else {}
        ov.save_model(model, str(stage / out.name), compress_to_fp16=False)
        manifest: dict[str, Any] = {
            "backend": "openvino",
            **_ir_manifest(stage, out, model),
            **report,
            **provenance(src, source_model, start),
        }
        commit_staged(stage, out.parent, manifest["engine_files"], manifest, manifest_path(out).name)
    return manifest


def quantize_with_nncf(
    fp32_onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_inputs: Sequence[dict[str, np.ndarray]],
    *,
    preset: str | None = None,
    subset_size: int | None = None,
    fast_bias_correction: bool = True,
    validate: bool = True,
) -> dict[str, Any]:
    """INT8-quantize the full-precision ONNX with NNCF (OpenVINO backend) and save the IR.

    Settings for a diffusion UNet: ``model_type=nncf.ModelType.TRANSFORMER`` so that NNCF applies
    its attention patterns (the SD UNet has self- and cross-attention in every CrossAttn block;
    NNCF's docs ask for it on transformer-like models), target device CPU, and NNCF's default
    preset for that model type (``mixed``: symmetric weights, asymmetric activations; pass
    ``preset="performance"`` for symmetric activations). ``calibration_inputs`` are feed dicts
    (``sample``, ``step_index``, ``encoder_hidden_states``), e.g. (x_t, t, cond) along sampler
    trajectories; only the inputs the model declares are fed. ``subset_size`` defaults to all of
    them. Returns the manifest.
    """
    import nncf
    import openvino as ov

    out = _check_out(out_path)
    src, source_model = load_source_onnx(fp32_onnx_path)
    if not calibration_inputs:
        raise TfmqError("NNCF needs calibration inputs; pass at least one feed dict (sample, step_index, ...)")
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if preset is not None and preset not in presets:
        raise TfmqError(f"NNCF preset {preset!r} is not one of {', '.join(presets)}")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in source_model.graph.node):
        raise TfmqError(f"{src} already holds Q/DQ nodes; NNCF quantizes the full-precision export (--wbits 16)")

    start = time.perf_counter()
    with staged_dir(out) as stage:
        try:
            model = ov.convert_model(str(src))
        except Exception as exc:
            raise TfmqError(f"OpenVINO could not convert {src}: {_ov_message(exc)}") from exc
        first = calibration_inputs[0]
        # a port may carry several tensor names: feed it under the one the caller used
        names = [next((n for n in sorted(i.get_names()) if n in first), i.get_any_name()) for i in model.inputs]
        missing = [n for n in names if n not in first]
        if missing:
            raise TfmqError(f"calibration inputs lack {', '.join(missing)}, which {src.name} declares")

        def feed(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {n: item[n] for n in names}

        n_items = len(calibration_inputs)
        subset = n_items if subset_size is None else subset_size
        try:
            quantized = nncf.quantize(
                model,
                nncf.Dataset(list(calibration_inputs), feed),
                preset=None if preset is None else presets[preset],
                target_device=nncf.TargetDevice.CPU,
                subset_size=subset,
                fast_bias_correction=fast_bias_correction,
                model_type=nncf.ModelType.TRANSFORMER,
            )
        except Exception as exc:  # nncf raises its own error types (ValidationError, ...)
            raise TfmqError(f"NNCF could not quantize {src}: {_ov_message(exc)}") from exc
        report = _compile_report(quantized, src) if validate else {}
        ov.save_model(quantized, str(stage / out.name), compress_to_fp16=False)
        manifest: dict[str, Any] = {
            "backend": "openvino",
            "precision": "nncf-int8",
            **_ir_manifest(stage, out, quantized),
            **report,
            "nncf_version": nncf.__version__,
            "nncf_settings": {
                "preset": preset or "mixed (NNCF default for model_type=transformer)",
                "model_type": "transformer",
                "target_device": "CPU",
                "subset_size": subset,
                "calibration_items": n_items,
                "fast_bias_correction": fast_bias_correction,
            },
            **provenance(src, source_model, start),
        }
        commit_staged(stage, out.parent, manifest["engine_files"], manifest, manifest_path(out).name)
    return manifest
