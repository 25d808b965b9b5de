"""Whole-graph rules: opset, operator support (``opset``, ``integer-op``, ``unsupported-op``) and
the time-embedding MLP (``time-mlp``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import onnx

from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.common import (
    INTEGER_OPS,
    TENSORRT_MAX_OPSET,
    TENSORRT_MIN_OPSET,
    TENSORRT_SUPPORTED_OPS,
    TIME_MLP_PATH_OPS,
    LintViolation,
    label,
)

__all__ = ["check_ops", "check_opset", "check_time_mlp", "default_opset"]

#: how many edges after a Sin/Cos the time-embedding Gemm/MatMul may sit: diffusers' export is
#: Sin -> Concat -> Slice -> Concat (flip_sin_to_cos) -> Cast -> Gemm
_TIME_MLP_DEPTH = 8
_FunctionKey = tuple[str, str]


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def check_opset(model: onnx.ModelProto, opset: int) -> list[LintViolation]:
    """An opset TensorRT parses, and >= 13 when there are Q/DQ nodes (the per-channel ``axis``)."""
    graph_label = model.graph.name or "graph"
    if not TENSORRT_MIN_OPSET <= opset <= TENSORRT_MAX_OPSET:
        return [LintViolation(
            graph_label, "opset",
            f"opset {opset} is outside what TensorRT parses ({TENSORRT_MIN_OPSET}..{TENSORRT_MAX_OPSET})",
        )]
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if has_qdq and opset < 13:
        return [LintViolation(
            graph_label, "opset", f"opset {opset} < 13: per-channel Q/DQ (the axis attribute) needs opset 13",
        )]
    return []


def _nested_graphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _unsupported(nodes: Iterable[onnx.NodeProto], functions: dict[_FunctionKey, onnx.FunctionProto],
                 seen: frozenset[_FunctionKey]) -> list[str]:
    """Ops outside TensorRT's list, looking into local functions (once each) and nested bodies."""
    bad: list[str] = []
    for n in nodes:
        key = (n.domain, n.op_type)
        if n.domain in ("", "ai.onnx"):
            if n.op_type not in TENSORRT_SUPPORTED_OPS:
                bad.append(n.op_type)
        elif key in functions and key not in seen:
            bad += _unsupported(functions[key].node, functions, seen | {key})
        else:
            bad.append(f"{n.domain}::{n.op_type}")
        for g in _nested_graphs(n):
            bad += _unsupported(g.node, functions, seen)
    return bad


def check_ops(model: onnx.ModelProto) -> list[LintViolation]:
    """Every op (nested bodies and local functions included) must be in TensorRT's parser list."""
    functions = {(f.domain, f.name): f for f in model.functions}
    out: list[LintViolation] = []
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in INTEGER_OPS:
            out.append(LintViolation(
                label(node), "integer-op",
                f"{node.op_type} is an onnxruntime integer op that TensorRT does not parse; export with "
                "--target tensorrt (QuantizeLinear/DequantizeLinear around float Conv/MatMul/Gemm)",
            ))
            continue
        bad = _unsupported([node], functions, frozenset())
        if bad:
            names = ", ".join(sorted(set(bad)))
            out.append(LintViolation(
                label(node), "unsupported-op",
                f"{names} is not in TensorRT's ONNX parser supported-operator list (it would need a plugin)",
            ))
    return out


def _first_linear_after(g: GraphIndex, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The first Gemm/MatMul within ``_TIME_MLP_DEPTH`` edges of ``node`` along embedding-path ops."""
    queue: deque[tuple[str, int]] = deque((o, 0) for o in node.output)
    seen: set[str] = set()
    while queue:
        tensor, depth = queue.popleft()
        for user, _ in g.consumers(tensor):
            if user.op_type in ("Gemm", "MatMul"):
                return user
            if (
                user.op_type in TIME_MLP_PATH_OPS
                and depth + 1 < _TIME_MLP_DEPTH
                and user.output
                and user.output[0] not in seen
            ):
                seen.update(user.output)
                queue.extend((o, depth + 1) for o in user.output)
    return None


def check_time_mlp(g: GraphIndex) -> list[LintViolation]:
    """Sin/Cos reaching a Gemm/MatMul within a few edges: the sinusoidal time embedding's MLP."""
    out: list[LintViolation] = []
    for node in g.graph.node:
        if node.op_type not in ("Sin", "Cos"):
            continue
        hit = _first_linear_after(g, node)
        if hit is not None:
            out.append(LintViolation(
                label(node), "time-mlp",
                f"{node.op_type} feeds {hit.op_type} {label(hit)!r}: the time-embedding MLP is "
                "still in the graph; it should be a constant table gathered by step_index",
            ))
    return out
