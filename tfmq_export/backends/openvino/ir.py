"""What the OpenVINO builders and the runner share: contract names of ports, error lines, the IR manifest.

Both OpenVINO builders (our Q/DQ graph converted as is, and NNCF's peer) convert with
``openvino.convert_model`` and compile the model on the CPU before anything is written: OpenVINO
can convert graphs that its CPU plugin then refuses to compile (with 2026.4, ``Core.read_model``
of our onnxruntime-target graph fails this way, while ``convert_model``'s output compiles), and a
build should fail then, not the first benchmark.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from tfmq_export.contract import UNET_INPUTS
from tfmq_export.errors import TfmqError
from tfmq_export.io import sha256_file

__all__ = ["check_ir_path", "compile_report", "contract_input_name", "fp16_hint", "ir_manifest", "ov_message"]

#: compiled-graph layer types that carry the network's weights
WEIGHT_LAYER_TYPES = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")


def fp16_hint(path: str | os.PathLike[str]) -> str:
    """The advice to append when OpenVINO fails on an FP16 Q/DQ export ("" for any other file).

    OpenVINO 2026.4's ONNX frontend refuses our FP16 Q/DQ graphs ("Arguments do not have the same
    element type (arg0 element type: f32, arg1 element type: f16)"); it reads the FP16 float graph.
    """
    import onnx

    from tfmq_export.contract import META_FLOAT_PRECISION

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file: no advice
        return ""
    fp16 = {p.key: p.value for p in model.metadata_props}.get(META_FLOAT_PRECISION) == "fp16"
    if not fp16 or not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return ""
    return (" (an FP16 Q/DQ graph, which OpenVINO does not read: export-onnx --precision fp16 is the tensorrt "
            "target's default; export with --precision fp32 for the CPU backends)")


def contract_input_name(port: Any) -> str:
    """The ONNX input name of an OpenVINO input port.

    A port can carry several tensor names (the frontend merges e.g. ``timestep`` with the
    ``Expand`` output that consumes it) and ``get_any_name`` may return the internal one: prefer
    a UNet-contract name when the port has it.
    """
    names = port.get_names()
    for name in UNET_INPUTS:
        if name in names:
            return name
    return port.get_any_name()


def ov_message(exc: BaseException) -> str:
    """The specific line of an OpenVINO error message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # OpenVINO messages start with "Exception from src/...": the last line is the specific one
    return lines[-1] if lines else type(exc).__name__


def check_ir_path(out_path: str | os.PathLike[str]) -> Path:
    """``out_path`` as a Path, refused unless it names an IR ``.xml``."""
    out = Path(out_path)
    if out.suffix != ".xml":
        raise TfmqError(f"--out {out} must end in .xml (OpenVINO IR is an .xml with a .bin beside it)")
    return out


def compile_report(model: Any, source: Path) -> dict[str, Any]:
    """Compile ``model`` on the CPU (f32 inference precision) and count layer precisions.

    Counting the runtime precisions of Convolution/FullyConnected layers is the check that the
    quantized layers really run in int8 (docs/BENCHMARKS.md: NNCF's model ran all of them in int8).
    Whether a layer runs as ``i8`` or ``u8`` is the CPU plugin's choice for the CPU at hand. Fused
    subgraphs are counted when they run in int8: ``Subgraph:i8`` is an attention whose score MatMul
    runs on int8 query and key (``export-onnx --attention int8``); float ones are elementwise fusions.
    """
    import openvino as ov

    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as exc:
        raise TfmqError(f"OpenVINO's CPU plugin could not compile {source}: {ov_message(exc)}") from exc
    precisions: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
        if layer in WEIGHT_LAYER_TYPES or (layer == "Subgraph" and precision in ("i8", "u8")):
            precisions[f"{layer}:{precision}"] += 1
    return {"compiled_cpu_layer_precisions": dict(sorted(precisions.items()))}


def ir_manifest(stage: Path, out: Path, model: Any) -> dict[str, Any]:
    """Manifest fields of an IR saved in ``stage`` under ``out``'s name: files, hashes, ops."""
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
