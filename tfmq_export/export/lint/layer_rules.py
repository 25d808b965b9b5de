"""Rules for quantized layers: where a weight DQ goes and along which axis its scales run
(``weight-dq-placement``, ``weight-axis``), and that an INT8 layer reads a dequantized activation
(``activation-dq``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.lint.common import WEIGHT_LAYERS, LintViolation, attr, is_weight_dq, label, quant_dtype

__all__ = ["check_activation_dq", "check_weight_dq"]


def _check_placement(g: GraphIndex, dq: onnx.NodeProto) -> list[LintViolation]:
    """A weight DQ feeds input 1 of a weighted layer directly and is no graph output."""
    out: list[LintViolation] = []
    if dq.output[0] in g.graph_outputs:
        out.append(LintViolation(label(dq), "weight-dq-placement", "weight DequantizeLinear is a graph output"))
    for user, idx in g.consumers(dq.output[0]):
        if user.op_type not in WEIGHT_LAYERS or idx != 1:
            out.append(LintViolation(
                label(dq), "weight-dq-placement",
                f"weight DequantizeLinear feeds input {idx} of {user.op_type} {label(user)!r}; "
                "it must feed input 1 of Conv/ConvTranspose/Gemm/MatMul directly so TensorRT fuses it",
            ))
    return out


def _output_channel_axis(user: onnx.NodeProto, rank: int) -> int | None:
    """The axis of a layer's weight (input 1) that runs along its output channels."""
    if user.op_type == "Conv":
        return 0
    if user.op_type == "ConvTranspose":
        return 1
    if user.op_type == "Gemm":
        return 0 if attr(user, "transB", 0) else 1
    if user.op_type == "MatMul":
        return rank - 1
    return None


def _check_axis(g: GraphIndex, dq: onnx.NodeProto) -> list[LintViolation]:
    """Per-channel (not blocked) scales of a constant weight run along the output channel."""
    if attr(dq, "block_size", 0) or not g.is_constant(dq.input[0]):
        return []
    scale_shape = g.const_shape(dq.input[1]) if g.is_constant(dq.input[1]) else None
    w_shape = g.const_shape(dq.input[0])
    if scale_shape is None or w_shape is None or int(np.prod(scale_shape or [1])) <= 1:
        return []
    rank = len(w_shape)
    axis = attr(dq, "axis", 1)
    axis = axis + rank if axis is not None and axis < 0 else axis
    n_scales = int(np.prod(scale_shape))
    out: list[LintViolation] = []
    for user, idx in g.consumers(dq.output[0]):
        want = _output_channel_axis(user, rank) if idx == 1 else None
        if want is not None and (axis != want or w_shape[want] != n_scales):
            out.append(LintViolation(
                label(dq), "weight-axis",
                f"per-channel weight scale for {user.op_type} {label(user)!r} runs along axis {axis} "
                f"({n_scales} scales, weight {w_shape}); TensorRT needs the output-channel axis {want}",
            ))
    return out


def check_weight_dq(g: GraphIndex, dq: onnx.NodeProto) -> list[LintViolation]:
    """A weight DQ feeds input 1 of a weighted layer directly, with scales along output channels."""
    return [*_check_placement(g, dq), *_check_axis(g, dq)]


def check_activation_dq(g: GraphIndex, node: onnx.NodeProto) -> list[LintViolation]:
    """A layer with INT8 weights reads its input 0 from a DequantizeLinear (INT4 blocked weights
    with float activations are TensorRT's weight-only path and pass)."""
    if node.op_type not in WEIGHT_LAYERS or len(node.input) < 2:
        return []
    wdq = g.producer.get(node.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear" or not is_weight_dq(g, wdq):
        return []
    if quant_dtype(g, wdq) == TensorProto.INT4 or attr(wdq, "block_size", 0):
        return []
    src = g.producer.get(node.input[0])
    if src is not None and src.op_type == "DequantizeLinear":
        return []
    where = "a graph input" if src is None else f"{src.op_type} {label(src)!r}"
    return [LintViolation(
        label(node), "activation-dq",
        f"{node.op_type} has INT8 weights but its input 0 comes from {where}, not a "
        "DequantizeLinear; TensorRT cannot run it as an INT8 layer",
    )]
