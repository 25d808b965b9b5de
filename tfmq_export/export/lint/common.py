"""What every lint rule shares: the violation record, the op tables (data in ``tensorrt_ops``),
and the Q/DQ facts the rules ask of a node (its integer type, whether it dequantizes a weight)."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.tensorrt_ops import (
    INTEGER_OPS,
    TENSORRT_MAX_OPSET,
    TENSORRT_MIN_OPSET,
    TENSORRT_SUPPORTED_OPS,
    TIME_MLP_PATH_OPS,
)

__all__ = [
    "FLOAT8_TYPES",
    "INT4_LAYERS",
    "INTEGER_OPS",
    "SIGNED_TYPES",
    "TENSORRT_MAX_OPSET",
    "TENSORRT_MIN_OPSET",
    "TENSORRT_SUPPORTED_OPS",
    "TIME_MLP_PATH_OPS",
    "UNSIGNED_TYPES",
    "WEIGHT_LAYERS",
    "LintViolation",
    "attr",
    "dtype_name",
    "is_weight_dq",
    "label",
    "quant_dtype",
]

WEIGHT_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
INT4_LAYERS = frozenset({"Gemm", "MatMul"})
SIGNED_TYPES = frozenset({TensorProto.INT8, TensorProto.INT4})
UNSIGNED_TYPES = frozenset({TensorProto.UINT8, TensorProto.UINT4})
FLOAT8_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
    if hasattr(TensorProto, name)
)


@dataclass(frozen=True)
class LintViolation:
    """One broken rule: the node (its name, or ``OpType:first_output`` when unnamed), the rule id
    from the ``lint`` package docstring, and one sentence saying what is wrong."""

    node: str
    rule: str
    message: str


def label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def dtype_name(dtype: int | None) -> str:
    return "unknown" if dtype is None else TensorProto.DataType.Name(dtype)


def quant_dtype(g: GraphIndex, node: onnx.NodeProto, depth: int = 0) -> int | None:
    """The integer type a Q produces or a DQ consumes (None when it cannot be told)."""
    if len(node.input) > 2 and node.input[2]:
        return g.const_dtype(node.input[2])
    if node.op_type == "QuantizeLinear":
        out_dtype = attr(node, "output_dtype", 0)
        # ONNX: without zero point and output_dtype, QuantizeLinear produces uint8
        return out_dtype if out_dtype else TensorProto.UINT8
    src = node.input[0]
    if g.is_constant(src):
        return g.const_dtype(src)
    producer = g.producer.get(src)
    if producer is not None and producer.op_type == "QuantizeLinear" and depth < 2:
        return quant_dtype(g, producer, depth + 1)
    return None


def is_weight_dq(g: GraphIndex, dq: onnx.NodeProto) -> bool:
    """A DQ of a constant, or of a Q whose input is a constant (float weights quantized at build)."""
    src = dq.input[0]
    if g.is_constant(src):
        return True
    producer = g.producer.get(src)
    return producer is not None and producer.op_type == "QuantizeLinear" and g.is_constant(producer.input[0])
