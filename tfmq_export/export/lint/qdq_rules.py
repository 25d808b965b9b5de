"""Rules for one QuantizeLinear / DequantizeLinear node: its type (``uint8``, ``quant-type``), zero
point (``zero-point``), scale (``scale-constant``, ``scale-value``, ``per-channel-activation``),
INT4 and blocks (``blocked``, ``int4-opset``, ``int4``), and its neighbours (``q-without-dq``,
``dq-source``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.common import (
    FLOAT8_TYPES,
    INT4_LAYERS,
    SIGNED_TYPES,
    UNSIGNED_TYPES,
    LintViolation,
    attr,
    dtype_name,
    is_weight_dq,
    label,
    quant_dtype,
)

__all__ = ["check_dq_source", "check_q_followed_by_dq", "check_qdq_node"]


def _check_type(node: onnx.NodeProto, dtype: int | None) -> list[LintViolation]:
    """Signed INT8 / INT4 (FP8/FP4 are TensorRT types too, not used here but legal)."""
    if dtype in UNSIGNED_TYPES:
        return [LintViolation(
            label(node), "uint8",
            f"{node.op_type} uses {dtype_name(dtype)}: TensorRT quantizes to signed INT8 only "
            "(export with --target tensorrt: int8 with zero point 0)",
        )]
    if dtype is not None and dtype not in SIGNED_TYPES and dtype not in FLOAT8_TYPES:
        return [LintViolation(
            label(node), "quant-type", f"{node.op_type} uses {dtype_name(dtype)}, which TensorRT cannot quantize to",
        )]
    return []


def _check_zero_point(g: GraphIndex, node: onnx.NodeProto, dtype: int | None) -> list[LintViolation]:
    """Constant and 0 (skipped for unsigned types, already reported by ``uint8``)."""
    if len(node.input) <= 2 or not node.input[2] or dtype in UNSIGNED_TYPES:
        return []
    zp_name = node.input[2]
    if not g.is_constant(zp_name):
        return [LintViolation(label(node), "zero-point", f"zero point {zp_name!r} is not a constant")]
    zp = g.const_value(zp_name)
    if zp is None or not np.any(zp.astype(np.int32) != 0):
        return []
    return [LintViolation(
        label(node), "zero-point",
        f"zero point {zp_name!r} is nonzero (max |zp| = {int(np.abs(zp.astype(np.int32)).max())}); "
        "TensorRT quantization is symmetric",
    )]


def _check_scale(g: GraphIndex, node: onnx.NodeProto) -> list[LintViolation]:
    """A build-time constant, positive and finite."""
    scale_name = node.input[1] if len(node.input) > 1 else ""
    if not scale_name:
        return [LintViolation(label(node), "scale-constant", f"{node.op_type} has no scale input")]
    if not g.is_constant(scale_name):
        producer = g.producer.get(scale_name)
        source = f"computed by {label(producer)}" if producer is not None else "a graph input"
        return [LintViolation(
            label(node), "scale-constant",
            f"scale {scale_name!r} is {source}; TensorRT needs scales that are build-time constants",
        )]
    scale = g.const_value(scale_name)
    if scale is None:
        return []
    values = scale.astype(np.float64)
    if np.all(np.isfinite(values)) and not np.any(values <= 0):
        return []
    return [LintViolation(
        label(node), "scale-value",
        f"scale {scale_name!r} has non-positive or non-finite entries (min {values.min():.3g})",
    )]


def _scale_size(g: GraphIndex, node: onnx.NodeProto) -> int:
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.const_value(scale_name) if scale_name and g.is_constant(scale_name) else None
    return 1 if scale is None else int(scale.size)


def _check_per_channel(g: GraphIndex, node: onnx.NodeProto) -> list[LintViolation]:
    """Per-channel scales only for weights."""
    scale_size = _scale_size(g, node)
    if scale_size <= 1:
        return []
    weight_side = is_weight_dq(g, node) if node.op_type == "DequantizeLinear" else g.is_constant(node.input[0])
    if weight_side:
        return []
    return [LintViolation(
        label(node), "per-channel-activation",
        f"{node.op_type} on activation {node.input[0]!r} has {scale_size} scales; TensorRT takes "
        "per-channel scales only for weights (activations need one scalar scale)",
    )]


def _check_int4_dq(g: GraphIndex, node: onnx.NodeProto, block_size: int) -> list[LintViolation]:
    """An INT4 DQ: of a constant, blocked, feeding input 1 of MatMul/Gemm only."""
    out: list[LintViolation] = []
    if not g.is_constant(node.input[0]):
        out.append(LintViolation(label(node), "int4", "INT4 DequantizeLinear of a non-constant: INT4 is weight-only"))
    if not block_size:
        out.append(LintViolation(
            label(node), "int4", "INT4 DequantizeLinear without block_size: TensorRT needs blocked INT4",
        ))
    bad = [u for u, i in g.consumers(node.output[0]) if u.op_type not in INT4_LAYERS or i != 1]
    if bad:
        out.append(LintViolation(
            label(node), "int4",
            f"INT4 weight feeds {', '.join(sorted({u.op_type for u in bad}))}; "
            "TensorRT takes INT4 only as input 1 of MatMul/Gemm (4-bit conv weights must travel as INT8 values)",
        ))
    return out


def _check_int4_and_blocks(g: GraphIndex, node: onnx.NodeProto, dtype: int | None,
                           opset: int) -> list[LintViolation]:
    """Blocks only for INT4; INT4 / blocks need opset 21; INT4 is weight-only."""
    out: list[LintViolation] = []
    block_size = attr(node, "block_size", 0) or 0
    is_int4 = dtype == TensorProto.INT4
    if block_size and not is_int4:
        out.append(LintViolation(
            label(node), "blocked", f"block quantization with {dtype_name(dtype)}: TensorRT blocks only INT4 weights",
        ))
    if (is_int4 or block_size) and opset < 21:
        out.append(LintViolation(
            label(node), "int4-opset", f"INT4 / blocked {node.op_type} needs opset >= 21 (the model has opset {opset})",
        ))
    if is_int4 and node.op_type != "DequantizeLinear":
        out.append(LintViolation(
            label(node), "int4", "INT4 QuantizeLinear: TensorRT's INT4 is weight-only (a DQ of an initializer)",
        ))
    elif is_int4:
        out += _check_int4_dq(g, node, block_size)
    return out


def check_qdq_node(g: GraphIndex, node: onnx.NodeProto, opset: int) -> list[LintViolation]:
    """Type, zero point, scale and INT4 rules for one QuantizeLinear / DequantizeLinear."""
    dtype = quant_dtype(g, node)
    return [
        *_check_type(node, dtype),
        *_check_zero_point(g, node, dtype),
        *_check_scale(g, node),
        *_check_per_channel(g, node),
        *_check_int4_and_blocks(g, node, dtype, opset),
    ]


def check_q_followed_by_dq(g: GraphIndex, q: onnx.NodeProto) -> list[LintViolation]:
    """Every QuantizeLinear output goes to DequantizeLinear nodes only."""
    users = g.consumers(q.output[0])
    bad = [u for u, _ in users if u.op_type != "DequantizeLinear"]
    if not bad and q.output[0] not in g.graph_outputs and users:
        return []
    what = ", ".join(sorted({u.op_type for u in bad})) or "nothing / a graph output"
    return [LintViolation(
        label(q), "q-without-dq",
        f"QuantizeLinear output goes to {what}; TensorRT needs every Q followed by a DequantizeLinear",
    )]


def check_dq_source(g: GraphIndex, dq: onnx.NodeProto) -> list[LintViolation]:
    """A DequantizeLinear reads a constant or a QuantizeLinear output."""
    src = dq.input[0]
    producer = g.producer.get(src)
    if g.is_constant(src) or (producer is not None and producer.op_type == "QuantizeLinear"):
        return []
    where = f"{producer.op_type} {label(producer)!r}" if producer is not None else "graph input"
    return [LintViolation(
        label(dq), "dq-source",
        f"DequantizeLinear reads {src!r} from {where}; TensorRT only dequantizes "
        "constants or the output of a QuantizeLinear (INT8 network inputs are not allowed)",
    )]
