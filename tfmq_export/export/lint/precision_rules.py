"""Float-type rules of a strongly typed TensorRT network (``qdq-dtype``, ``float-mix``, ``fp32-island``).

A strongly typed network runs every tensor in the type the ONNX declares and refuses an op whose
float inputs disagree (no implicit casts). ONNX opset 19+ types ``QuantizeLinear``'s input like its
scale and ``DequantizeLinear``'s output like its scale, so an FP32 scale left in an FP16 graph either
breaks the graph or quietly makes an FP32 island. The element types come from a forward pass over
the graph (declared inputs, initializers, Constants, op rules): no shape inference, so it works on
graphs above protobuf's 2 GB limit and on graphs whose types are broken (which inference rejects).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from tfmq_export.contract import META_FLOAT_PRECISION
from tfmq_export.export.fp16 import FP32_SLOTS
from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.common import LintViolation, attr, dtype_name, label

__all__ = ["check_precision", "tensor_types"]

FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})
_INT64_OPS = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})
_BOOL_OPS = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                       "IsNaN", "IsInf"})
#: ops whose float inputs need not agree: casts, Q/DQ (``qdq-dtype``), and shape/index inputs
_MIXED_OK = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", *_INT64_OPS})


def _output_type(g: GraphIndex, node: onnx.NodeProto, types: dict[str, int]) -> int | None:
    op = node.op_type
    known = [types.get(name) for name in node.input]
    if op == "Constant":
        return g.const_dtype(node.output[0])
    if op == "Cast":
        return attr(node, "to")
    if op == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return TensorProto.FLOAT if value is None else int(value.data_type)
    if op == "DequantizeLinear" or op == "CastLike":
        return known[1] if len(known) > 1 else None
    if op == "QuantizeLinear":
        return known[2] if len(known) > 2 and known[2] else (attr(node, "output_dtype", 0) or TensorProto.UINT8)
    if op in _INT64_OPS:
        return TensorProto.INT64
    if op in _BOOL_OPS:
        return TensorProto.BOOL
    if op == "Where":
        return known[1] if len(known) > 1 else None
    floats = [t for t in known if t in FLOAT_TYPES]
    return floats[0] if floats else (known[0] if known else None)


def tensor_types(g: GraphIndex) -> dict[str, int]:
    """Element type of every tensor the forward pass can tell (graph order is topological)."""
    types = {v.name: int(v.type.tensor_type.elem_type) for v in g.graph.input}
    types.update({name: int(t.data_type) for name, t in g.inits.items()})
    for node in g.graph.node:
        out = _output_type(g, node, types)
        if out is not None:
            types.update({name: out for name in node.output if name})
    return types


def _check_qdq(g: GraphIndex, node: onnx.NodeProto, types: dict[str, int]) -> list[LintViolation]:
    """A Q quantizes a tensor of its scale's type; a DQ of a Q uses a scale of the Q's scale type."""
    if len(node.input) < 2:
        return []
    scale = types.get(node.input[1])
    if node.op_type == "QuantizeLinear":
        x = types.get(node.input[0])
        if x in FLOAT_TYPES and scale in FLOAT_TYPES and x != scale:
            return [LintViolation(label(node), "qdq-dtype",
                                  f"QuantizeLinear quantizes a {dtype_name(x)} tensor with a {dtype_name(scale)} "
                                  "scale; the scale must have the input's type (ONNX opset 19+)")]
        return []
    q = g.producer.get(node.input[0])
    if q is None or q.op_type != "QuantizeLinear" or len(q.input) < 2:
        return []
    q_scale = types.get(q.input[1])
    if scale != q_scale:
        return [LintViolation(label(node), "qdq-dtype",
                              f"Q/DQ pair mixes scale types ({dtype_name(q_scale)} in {label(q)!r}, "
                              f"{dtype_name(scale)} here); the DequantizeLinear output type follows its scale")]
    return []


def _check_mix(g: GraphIndex, node: onnx.NodeProto, types: dict[str, int]) -> list[LintViolation]:
    """Every float input of an op has one type (a DQ's output type = its scale's type counts)."""
    if node.op_type in _MIXED_OK:
        return []
    seen = {(i, name, types[name]) for i, name in enumerate(node.input)
            if name and types.get(name) in FLOAT_TYPES and (node.op_type, i) not in FP32_SLOTS}
    if len({t for _, _, t in seen}) <= 1:
        return []
    parts = []
    for i, name, t in sorted(seen):
        producer = g.producer.get(name)
        where = f" from {producer.op_type} {label(producer)!r}" if producer is not None else ""
        parts.append(f"input {i} {dtype_name(t)}{where}")
    return [LintViolation(label(node), "float-mix",
                          f"{node.op_type} mixes float types ({'; '.join(parts)}); a strongly typed network "
                          "does not cast implicitly")]


def _allowed_fp32(g: GraphIndex, name: str) -> bool:
    """FP32 where the contract or ONNX needs it: graph I/O (and the Casts making it) and Resize's scales."""
    if name in g.graph_outputs:
        return True
    users = g.consumers(name)
    return bool(users) and all(
        (u.op_type, i) in FP32_SLOTS
        or (u.op_type == "Cast" and attr(u, "to") != TensorProto.FLOAT)
        or (u.op_type == "Gather" and i == 0 and _allowed_fp32(g, u.output[0]))  # an FP32 table, rows cast
        for u, i in users)


def _check_islands(g: GraphIndex, types: dict[str, int]) -> list[LintViolation]:
    out: list[LintViolation] = []
    inputs = {v.name for v in g.graph.input}
    for name, tensor in g.inits.items():
        if tensor.data_type == TensorProto.FLOAT and not _allowed_fp32(g, name):
            out.append(LintViolation(name, "fp32-island",
                                     "FP32 initializer in an FP16 graph: the layers reading it run in FP32"))
    for node in g.graph.node:
        bad = [o for o in node.output if o and types.get(o) == TensorProto.FLOAT and o not in inputs
               and not _allowed_fp32(g, o)]
        if bad:
            out.append(LintViolation(label(node), "fp32-island",
                                     f"{node.op_type} produces FP32 {bad[0]!r} in an FP16 graph "
                                     f"({META_FLOAT_PRECISION}); TensorRT runs it in FP32"))
    return out


def check_precision(g: GraphIndex) -> list[LintViolation]:
    """The float-type rules; ``fp32-island`` only where the metadata declares an FP16 graph."""
    types = tensor_types(g)
    out: list[LintViolation] = []
    for node in g.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out += _check_qdq(g, node, types)
        out += _check_mix(g, node, types)
    if {p.key: p.value for p in g.model.metadata_props}.get(META_FLOAT_PRECISION) == "fp16":
        out += _check_islands(g, types)
    return out
