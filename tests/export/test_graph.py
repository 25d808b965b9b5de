"""export.graph.GraphIndex: producers, consumers and constants of a graph, kept in step with edits."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tfmq_export.export.graph import GraphIndex


def _model() -> onnx.ModelProto:
    """x -> Mul(x, x) -> m -> Conv(m, w, b) -> y; a Constant c; an Add(y, c) -> out."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["m"], name="square"),
        helper.make_node("Conv", ["m", "w", "b"], ["y"], name="conv"),
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0], name="const"),
        helper.make_node("Add", ["y", "c"], ["out"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("out", TP.FLOAT, None)], inits)
    return helper.make_model(graph)


def _maps(g: GraphIndex) -> tuple[dict, dict]:
    names = {t: [(n.name, i) for n, i in g.consumers(t)] for t in ("x", "m", "w", "b", "y", "c", "m2", "out")}
    return {t: c for t, c in names.items() if c}, {t: n.name for t, n in g.producer.items()}


def test_index_reads_the_graph():
    g = GraphIndex(_model())
    consumers, producers = _maps(g)
    assert consumers["x"] == [("square", 0), ("square", 1)]  # a node reading a tensor twice is listed twice
    assert [n.name for n in g.consumer_nodes("x")] == ["square"]
    assert producers == {"m": "square", "y": "conv", "c": "const", "out": "add"}
    assert g.graph_outputs == {"out"}
    assert g.is_constant("w") and g.is_constant("c") and not g.is_constant("m")
    assert g.const_dtype("c") == TP.FLOAT and g.const_shape("c") == [2] and g.const_shape("w") == [2, 1, 1, 1]
    np.testing.assert_array_equal(g.const_value("c"), np.array([1.0, 2.0], np.float32))
    assert g.const_value("m") is None and g.const_dtype("m") is None


def test_edits_keep_the_index_equal_to_a_fresh_one():
    model = _model()
    g = GraphIndex(model)
    conv = g.nodes_named("conv")[0]
    g.set_input(conv, 0, "m2")
    g.drop_last_input(conv)
    g.set_output(conv, 0, "y2")
    add = g.nodes_named("add")[0]
    g.set_input(add, 0, "y2")
    g.drop_init_if_unused("b")
    g.drop_init_if_unused("w")  # still read by the Conv: kept
    square = g.nodes_named("square")[0]
    g.remove_node(square)
    model.graph.node.remove(square)
    new = helper.make_node("Mul", ["x", "x"], ["m2"], name="square2")
    model.graph.node.insert(0, new)
    g.add_node(model.graph.node[0])
    assert [t.name for t in model.graph.initializer] == ["w"]
    assert list(conv.input) == ["m2", "w"] and list(conv.output) == ["y2"]
    assert _maps(g) == _maps(GraphIndex(model))
    assert set(g.inits) == {"w"}


def test_add_init_writes_int4():
    g = GraphIndex(_model())
    g.add_init("q4", np.array([[-8, 7], [0, 1]], np.int8), TP.INT4)
    tensor = g.inits["q4"]
    assert tensor.data_type == TP.INT4 and list(tensor.dims) == [2, 2]
    np.testing.assert_array_equal(numpy_helper.to_array(tensor), [[-8, 7], [0, 1]])
    assert g.model.graph.initializer[-1].name == "q4"
