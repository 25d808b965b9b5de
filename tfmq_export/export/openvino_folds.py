"""Folds of the ``openvino`` target's Q/DQ graph that change its layout, not what it computes.

OpenVINO's CPU plugin measured two costs in our W8A8 graph that NNCF's IR does not have or shares
(benchmarks/cpu_profile.py, docs/BENCHMARKS.md "Per-op profile"):

- ``share_input_qdq``: attention's ``to_q`` / ``to_k`` / ``to_v`` (and cross-attention's ``to_k`` /
  ``to_v``) read one tensor, and each layer has its own Q/DQ pair on it. When their scales and zero
  points are equal (min-max calibration gives equal ranges for one tensor), the pairs are the same
  function, so one pair serves every reader. (OpenVINO turned out to merge such identical
  FakeQuantize nodes itself: the fold changes the ONNX graph, not what OpenVINO runs.)
- ``split_gated_projections``: a GEGLU's projection ``x @ W + b`` is cut into its hidden and gate
  halves by two Slices (``chunk(2, dim=-1)``), which OpenVINO runs as a reference (unvectorised)
  VariadicSplit copying the whole activation. Two MatMuls over the weight's column halves compute
  exactly those halves (each output column is the same dot product with the same per-channel weight
  scale), so the Slices go.

Both are exact: the folded graph computes, element for element, what the unfolded graph computes
(tests/export/test_openvino_folds.py), so the graph = simulation rule holds unchanged. End to end on
SD-1.5 they were not measurably faster (docs/BENCHMARKS.md, "Order-fair OpenVINO timing").
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tfmq_export.export.graph import GraphIndex

__all__ = ["fold_for_openvino", "share_input_qdq", "split_gated_projections"]


def _value_key(g: GraphIndex, name: str) -> tuple | None:
    value = g.const_value(name) if name else None
    return None if value is None else (value.dtype.str, value.shape, value.tobytes())


def _rebuild(model: onnx.ModelProto, drop: list[onnx.NodeProto], add_after: dict[int, list[onnx.NodeProto]]) -> None:
    """Take ``drop`` out of the graph and place ``add_after[id(node)]`` right after ``node``."""
    dropped = {id(n) for n in drop}
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) not in dropped:
            ordered.append(node)
        ordered += add_after.get(id(node), [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    kept = [t for t in model.graph.initializer if t.name in used]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def share_input_qdq(model: onnx.ModelProto) -> int:
    """Merge ``QuantizeLinear -> DequantizeLinear`` pairs that quantize one tensor with equal scale and
    zero point into the first of them (in place); returns how many pairs were removed."""
    g = GraphIndex(model)
    first: dict[tuple, onnx.NodeProto] = {}
    drop: list[onnx.NodeProto] = []
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear"]:
        users = g.consumer_nodes(q.output[0])
        if len(users) != 1 or users[0].op_type != "DequantizeLinear" or q.output[0] in g.graph_outputs:
            continue
        dq = users[0]
        if list(dq.input[1:]) != list(q.input[1:]) or any(a.name != "axis" for a in (*q.attribute, *dq.attribute)):
            continue
        if any(_value_key(g, name) is None for name in q.input[1:]):
            continue
        axes = tuple(sorted((a.name, a.i) for a in q.attribute))
        key = (q.input[0], axes, *(_value_key(g, name) for name in q.input[1:]))
        if key not in first:
            first[key] = dq
            continue
        if dq.output[0] in g.graph_outputs:
            continue
        for user, index in g.consumers(dq.output[0]):
            g.set_input(user, index, first[key].output[0])
        drop += [q, dq]
    if drop:
        _rebuild(model, drop, {})
        _drop_unused_initializers(model)
    return len(drop) // 2


def _scalar(g: GraphIndex, tensor: str, last_dim: int, source: str, depth: int = 0) -> int | None:
    """Value of a scalar int64 computed from ``Shape(source)``'s last entry and constants (the trace of
    ``chunk``'s bounds), or None when it is anything else."""
    value = g.const_value(tensor)
    if value is not None:
        return int(value.reshape(-1)[0]) if value.size == 1 else None
    node = g.producer.get(tensor)
    if node is None or depth > 8:
        return None
    if node.op_type == "Gather":
        shape = g.producer.get(node.input[0])
        index = g.const_value(node.input[1])
        rank_ok = shape is not None and shape.op_type == "Shape" and shape.input[0] == source and not shape.attribute
        return last_dim if rank_ok and index is not None and index.size == 1 and int(index.reshape(-1)[0]) == -1 \
            else None
    ops = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
           "Div": lambda a, b: int(a / b) if b else None}
    if node.op_type not in ops:
        return None
    a, b = (_scalar(g, name, last_dim, source, depth + 1) for name in node.input[:2])
    return None if a is None or b is None else ops[node.op_type](a, b)


def _gated_halves(g: GraphIndex, add: onnx.NodeProto, columns: int) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """The two Slices that cut ``add``'s output into ``[:half]`` and ``[half:]`` on the last axis, or None."""
    out = add.output[0]
    slices = [n for n in g.consumer_nodes(out) if n.op_type == "Slice"]
    others = [n for n in g.consumer_nodes(out) if n.op_type != "Slice"]
    if len(slices) != 2 or any(n.op_type != "Shape" for n in others) or columns % 2:
        return None
    half, bounds = columns // 2, []
    for s in slices:
        if s.input[0] != out or len(s.input) < 4 or (len(s.input) > 4 and s.input[4]):
            return None
        axis = g.const_value(s.input[3])
        if axis is None or axis.size != 1 or int(axis.reshape(-1)[0]) != -1:
            return None
        bounds.append(tuple(_scalar(g, name, columns, out) for name in s.input[1:3]))
    ordered = sorted(zip(bounds, slices), key=lambda pair: -1 if pair[0][0] is None else pair[0][0])
    (lo_a, hi_a), (lo_b, hi_b) = ordered[0][0], ordered[1][0]
    if (lo_a, hi_a, lo_b) != (0, half, half) or hi_b is None or hi_b < columns:
        return None
    return ordered[0][1], ordered[1][1]


def split_gated_projections(model: onnx.ModelProto) -> int:
    """Rewrite ``MatMul(x, DQ(W)) + b -> Slice[:half], Slice[half:]`` as two MatMuls over W's column
    halves (in place); returns how many projections were split."""
    g = GraphIndex(model)
    drop: list[onnx.NodeProto] = []
    add_after: dict[int, list[onnx.NodeProto]] = {}
    for matmul in [n for n in model.graph.node if n.op_type == "MatMul"]:
        wdq = g.producer.get(matmul.input[1])
        users = g.consumer_nodes(matmul.output[0])
        if wdq is None or wdq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "Add":
            continue
        if len(g.consumer_nodes(wdq.output[0])) != 1:  # the weight DQ is removed with the MatMul
            continue
        add = users[0]
        bias_name = next((name for name in add.input if name != matmul.output[0]), None)
        weight = g.const_value(wdq.input[0])
        bias = g.const_value(bias_name) if bias_name else None
        params = [g.const_value(name) for name in wdq.input[1:]]
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        if weight is None or bias is None or weight.ndim != 2 or axis not in (1, -1) or any(p is None for p in params):
            continue
        columns = weight.shape[1]
        if bias.shape != (columns,) or any(p.shape != (columns,) for p in params):
            continue
        halves = _gated_halves(g, add, columns)
        if halves is None:
            continue
        new: list[onnx.NodeProto] = []
        for part, cols, target in (("hidden", slice(0, columns // 2), halves[0]),
                                   ("gate", slice(columns // 2, columns), halves[1])):
            names = [g.add_init(f"{name}_{part}", np.ascontiguousarray(array[..., cols]))
                     for name, array in zip(wdq.input, [weight, *params])]
            b_name = g.add_init(f"{bias_name}_{part}", np.ascontiguousarray(bias[cols]))
            w_dq = helper.make_node("DequantizeLinear", names, [f"{wdq.output[0]}_{part}"],
                                    name=f"{wdq.name or wdq.output[0]}_{part}", axis=axis)
            mm = helper.make_node("MatMul", [matmul.input[0], w_dq.output[0]], [f"{matmul.output[0]}_{part}"],
                                  name=f"{matmul.name or matmul.output[0]}_{part}")
            out_add = helper.make_node("Add", [mm.output[0], b_name], [target.output[0]],
                                       name=f"{add.name or add.output[0]}_{part}")
            new += [w_dq, mm, out_add]
        drop += [wdq, matmul, add, *halves]
        add_after[id(add)] = new
    if drop:
        _rebuild(model, drop, add_after)
        _drop_dead_nodes(model)
        _drop_unused_initializers(model)
    return len(add_after)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is read (the Shape arithmetic the split Slices used)."""
    while True:
        used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(out in used for out in n.output)]
        if not dead:
            return
        _rebuild(model, dead, {})


def fold_for_openvino(model: onnx.ModelProto) -> dict[str, int]:
    """Both folds (in place); how many of each were made (written to the graph's metadata by the caller)."""
    return {"shared_input_qdq": share_input_qdq(model), "split_gated_projections": split_gated_projections(model)}

