"""Static checks of TensorRT's explicit-quantization rules on an exported Q/DQ ONNX graph.

TensorRT turns QuantizeLinear/DequantizeLinear pairs into INT8 (or INT4 weight-only) layers only
when the graph follows its rules; a graph that breaks them either fails to parse or silently runs
the layer in float. TensorRT is not available on most machines that export, so this lint checks
the rules on the ONNX graph itself, before any engine build, and names the offending node.

Rules (``LintViolation.rule``):

==========================  ====================================================================
zero-point                  Q/DQ zero points must be constant and all 0 (TensorRT is symmetric)
uint8                       unsigned Q/DQ types (uint8/uint4, or a Q without zero point, which
                            ONNX defines as uint8): TensorRT quantizes to signed INT8 only
quant-type                  a Q/DQ type TensorRT does not quantize to (int16, int32, ...)
scale-constant              a Q/DQ scale must be a build-time constant (initializer / Constant)
scale-value                 a Q/DQ scale must be positive and finite
per-channel-activation      a non-scalar scale on an activation (per-channel only for weights)
weight-axis                 per-channel weight scales must run along the output channel
blocked                     block quantization is only for INT4 weights
int4                        INT4 only as a blocked DQ of an initializer feeding MatMul/Gemm
int4-opset                  INT4 / blocked DequantizeLinear needs opset >= 21
integer-op                  QLinearConv / QLinearMatMul / ConvInteger / MatMulInteger /
                            DynamicQuantizeLinear (onnxruntime-style integer ops)
unsupported-op              an op missing from the onnx-tensorrt supported-operator list
opset                       an opset outside what TensorRT parses (or < 13 with Q/DQ)
weight-dq-placement         a weight DQ must feed input 1 of Conv/ConvTranspose/Gemm/MatMul
                            directly, or the layer is not fused with its weight
activation-dq               a layer with INT8 weights whose input 0 does not come from a DQ
                            (TensorRT then has no INT8 input and cannot run the layer in INT8)
q-without-dq                a QuantizeLinear output used by anything but a DequantizeLinear
dq-source                   a DequantizeLinear fed by neither a constant nor a QuantizeLinear
time-mlp                    a Sin/Cos feeding a Gemm/MatMul: the time-embedding MLP should be a
                            constant table gathered by step_index
qdq-dtype                   a QuantizeLinear whose scale type differs from its input's, or a Q/DQ
                            pair whose scales differ in type (the DQ output type follows its scale)
float-mix                   an op whose float inputs differ in type (a DQ output FP32 into an FP16
                            layer...): a strongly typed network does not cast implicitly
fp32-island                 (graphs with tfmq.float_precision = fp16) an FP32 tensor other than the
                            float32 I/O, its edge Casts and Resize's roi/scales
==========================  ====================================================================

Layout: ``common.py`` (the violation record, the op tables from the data module ``tensorrt_ops``, Q/DQ
facts), one module per group of rules (``graph_rules``, ``qdq_rules``, ``layer_rules``, ``precision_rules``), each rule
a plain function of the shared ``export.graph.GraphIndex``; this module runs them in order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import onnx

from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.common import (
    TENSORRT_MAX_OPSET,
    TENSORRT_MIN_OPSET,
    TENSORRT_SUPPORTED_OPS,
    LintViolation,
    is_weight_dq,
)
from tfmq_export.export.lint.graph_rules import check_ops, check_opset, check_time_mlp, default_opset
from tfmq_export.export.lint.layer_rules import check_activation_dq, check_weight_dq
from tfmq_export.export.lint.precision_rules import check_precision
from tfmq_export.export.lint.qdq_rules import check_dq_source, check_q_followed_by_dq, check_qdq_node

__all__ = [
    "TENSORRT_MAX_OPSET",
    "TENSORRT_MIN_OPSET",
    "TENSORRT_SUPPORTED_OPS",
    "LintViolation",
    "format_violations",
    "lint_onnx_file",
    "lint_tensorrt",
]


def _is_weight_only(model: onnx.ModelProto) -> bool:
    """``tfmq.abits`` >= 16 in the metadata: a weight-only export, whose layers read float inputs."""
    abits = {p.key: p.value for p in model.metadata_props}.get("tfmq.abits", "").strip()
    return abits.isdigit() and int(abits) >= 16


def _check_qdq_nodes(g: GraphIndex, opset: int) -> list[LintViolation]:
    out: list[LintViolation] = []
    for node in g.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "QuantizeLinear":
            out += check_qdq_node(g, node, opset)
            out += check_q_followed_by_dq(g, node)
        elif node.op_type == "DequantizeLinear":
            out += check_qdq_node(g, node, opset)
            out += check_dq_source(g, node)
            if is_weight_dq(g, node):
                out += check_weight_dq(g, node)
    return out


def lint_tensorrt(model: onnx.ModelProto, base_dir: str | os.PathLike[str] | None = None) -> list[LintViolation]:
    """Check ``model`` against TensorRT's explicit-quantization rules; ``[]`` means it passes.

    ``base_dir`` is where external tensor data lives (only needed when scales or zero points are
    stored outside the model file). The metadata ``tfmq.abits`` >= 16 marks a weight-only export:
    then a quantized layer's float input is expected and ``activation-dq`` is not checked.
    """
    g = GraphIndex(model, base_dir)
    opset = default_opset(model)
    # 1. opset and operator support
    out = [*check_opset(model, opset), *check_ops(model)]
    # 2. every Q/DQ node, then their placement
    out += _check_qdq_nodes(g, opset)
    # 3. quantized layers take a quantized (DQ) activation, unless INT4 weight-only or weight-only export
    if not _is_weight_only(model):
        for node in model.graph.node:
            out += check_activation_dq(g, node)
    # 4. the time-embedding MLP must be gone
    out += check_time_mlp(g)
    # 5. float types: Q/DQ scale types, no mixed float inputs, no FP32 islands in an FP16 graph
    out += check_precision(g)
    return out


def format_violations(violations: Iterable[LintViolation]) -> str:
    """A readable report: one line per violation, grouped by rule order of appearance."""
    items = list(violations)
    if not items:
        return "TensorRT lint: no violations."
    width = max(len(v.rule) for v in items)
    lines = [f"TensorRT lint: {len(items)} violation{'s' if len(items) != 1 else ''}"]
    lines += [f"  {v.rule:<{width}}  {v.node}: {v.message}" for v in items]
    return "\n".join(lines)


def lint_onnx_file(path: str | os.PathLike[str]) -> list[LintViolation]:
    """Load an ONNX file (external weights are not read, only small scales if they live outside)."""
    p = Path(path)
    if not p.is_file():
        raise TfmqError(f"{p} does not exist; pass the .onnx file written by `tfmq-export export-onnx`")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for broken files
        raise TfmqError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return lint_tensorrt(model, base_dir=p.parent)
