"""``export.openvino_folds``: the openvino target's layout folds are exact and do what they say
(one Q/DQ per shared tensor, no Slice after a GEGLU projection), and leave other graphs alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.export.layer_probe import run_graph
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.export.openvino_folds import fold_for_openvino, share_input_qdq, split_gated_projections

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def u8fc_artifact(loaded_unet_cond):
    settings = CalibrationSettings(method="minmax", wbits=8, abits=8, steps=5, num_samples=8, batch_size=8,
                                   extra={"linear_act_grid": "uint8-127"})
    return calibrate(loaded_unet_cond, settings, progress=False)


def _literal(graph: onnx.ModelProto, feed: dict) -> np.ndarray:
    """The graph's first output, evaluated literally."""
    return next(iter(run_graph(graph, feed).values()))


def _ops(graph: onnx.ModelProto, op: str, scope: str = "") -> int:
    return sum(n.op_type == op and scope in n.name for n in graph.graph.node)


def test_folded_unet_computes_the_unfolded_graph(u8fc_artifact, loaded_unet_cond):
    plain = build_onnx(loaded_unet_cond, u8fc_artifact, "openvino", fold=False)
    folded = build_onnx(loaded_unet_cond, u8fc_artifact, "openvino")
    blocks = _ops(plain, "LayerNormalization", "/norm1/")  # one per transformer block
    assert blocks > 0
    # per block attn1's q/k/v share one pair (two fewer); every attn2's k/v read the encoder states, one
    # pair for all of them (min-max gives one tensor one range); each GEGLU projection's two Slices are
    # gone and its MatMul is two
    assert _ops(plain, "QuantizeLinear") - _ops(folded, "QuantizeLinear") == 2 * blocks + 2 * blocks - 1
    assert _ops(plain, "Slice", "/ff/") == 2 * blocks and _ops(folded, "Slice", "/ff/") == 0
    assert _ops(folded, "MatMul") - _ops(plain, "MatMul") == blocks
    onnx.checker.check_model(folded)
    gen = torch.Generator().manual_seed(3)
    feed = {"sample": torch.randn((2, *loaded_unet_cond.sample_shape), generator=gen).numpy(),
            "step_index": np.array([0, 3]), "encoder_hidden_states": torch.randn(2, 5, 16, generator=gen).numpy()}
    expected, got = _literal(plain, feed), _literal(folded, feed)
    # the same float operations per output element: equal up to the MatMul kernel's blocking
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_other_targets_are_not_folded(u8fc_artifact, loaded_unet_cond):
    graph = build_onnx(loaded_unet_cond, u8fc_artifact, "onnxruntime")
    assert _ops(graph, "Slice", "/ff/") > 0
    blocks = _ops(graph, "LayerNormalization", "/norm1/")
    assert fold_for_openvino(graph) == {"shared_input_qdq": 4 * blocks - 1, "split_gated_projections": blocks}


def _qdq_graph(scales: tuple[float, float]) -> onnx.ModelProto:
    """x -> two Q/DQ pairs (scales given) -> Relu each -> two outputs."""
    nodes, inits = [], []
    for i, scale in enumerate(scales):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"s{i}"),
                  numpy_helper.from_array(np.array(0, np.int8), f"z{i}")]
        nodes += [helper.make_node("QuantizeLinear", ["x", f"s{i}", f"z{i}"], [f"q{i}"]),
                  helper.make_node("DequantizeLinear", [f"q{i}", f"s{i}", f"z{i}"], [f"d{i}"]),
                  helper.make_node("Relu", [f"d{i}"], [f"y{i}"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [4]) for i in range(2)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_only_equal_pairs_are_shared():
    same, other = _qdq_graph((0.1, 0.1)), _qdq_graph((0.1, 0.2))
    assert share_input_qdq(same) == 1 and _ops(same, "QuantizeLinear") == 1
    assert {n.input[0] for n in same.graph.node if n.op_type == "Relu"} == {"d0"}
    assert share_input_qdq(other) == 0 and _ops(other, "QuantizeLinear") == 2
    x = {"x": np.array([-1.0, 0.26, 0.5, 3.0], np.float32)}
    assert np.array_equal(_literal(same, x), _literal(_qdq_graph((0.1, 0.1)), x))


def _projection_graph(columns: int, cut: int) -> onnx.ModelProto:
    """x @ DQ(W) + b, cut by two Slices at ``cut`` on the last axis (GEGLU's bounds: Shape arithmetic)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (3, columns)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.random(columns).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(columns, np.int8), "wz"),
             numpy_helper.from_array(rng.standard_normal(columns).astype(np.float32), "b")]
    const = {"last": [-1], "zero": [0], "one": [1], "two": [2], "cut": [cut]}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(np.array(v, np.int64)))
             for k, v in const.items()]
    nodes += [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
              helper.make_node("MatMul", ["x", "wd"], ["mm"]), helper.make_node("Add", ["b", "mm"], ["p"]),
              helper.make_node("Shape", ["p"], ["shape"]), helper.make_node("Gather", ["shape", "last"], ["n"]),
              helper.make_node("Add", ["n", "one"], ["n1"]), helper.make_node("Div", ["n1", "two"], ["half"]),
              helper.make_node("Mul", ["half", "two"], ["end"]),
              helper.make_node("Slice", ["p", "zero", "cut" if cut != columns // 2 else "half", "last"], ["h"]),
              helper.make_node("Slice", ["p", "cut" if cut != columns // 2 else "half", "end", "last"], ["gate"]),
              helper.make_node("Mul", ["h", "gate"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_projection_is_split_only_at_its_half():
    x = {"x": np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)}
    halves = _projection_graph(8, 4)
    expected = _literal(_projection_graph(8, 4), x)
    assert split_gated_projections(halves) == 1
    assert _ops(halves, "Slice") == 0 and _ops(halves, "Shape") == 0 and _ops(halves, "MatMul") == 2
    np.testing.assert_allclose(_literal(halves, x), expected, rtol=1e-6, atol=1e-6)
    uneven = _projection_graph(8, 3)  # not chunk(2): left as it is
    assert split_gated_projections(uneven) == 0 and _ops(uneven, "Slice") == 2
