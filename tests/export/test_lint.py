"""TensorRT lint: a clean Conv + MatMul Q/DQ graph passes; each planted violation is caught by its
rule and names the node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tfmq_export.errors import TfmqError
from tfmq_export.export.lint import (
    TENSORRT_SUPPORTED_OPS,
    LintViolation,
    format_violations,
    lint_onnx_file,
    lint_tensorrt,
)

RNG = np.random.default_rng(0)


def _qdq(nodes: list, inits: list, x: str, tag: str, scale=0.02, zp=0, zp_type=TP.INT8) -> str:
    inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), f"{tag}_scale"))
    inits.append(helper.make_tensor(f"{tag}_zp", zp_type, [], [zp]))
    nodes.append(helper.make_node("QuantizeLinear", [x, f"{tag}_scale", f"{tag}_zp"], [f"{tag}_q"], name=f"{tag}_Q"))
    nodes.append(
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_scale", f"{tag}_zp"], [f"{tag}_dq"], name=f"{tag}_DQ")
    )
    return f"{tag}_dq"


def _weight_dq(nodes: list, inits: list, shape: tuple[int, ...], axis: int, tag: str) -> str:
    q = RNG.integers(-127, 128, size=shape).astype(np.int8)
    n = shape[axis]
    inits.append(numpy_helper.from_array(q, f"{tag}_w"))
    inits.append(numpy_helper.from_array(np.full(n, 0.01, np.float32), f"{tag}_w_scale"))
    inits.append(numpy_helper.from_array(np.zeros(n, np.int8), f"{tag}_w_zp"))
    nodes.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{tag}_w", f"{tag}_w_scale", f"{tag}_w_zp"],
            [f"{tag}_wdq"],
            axis=axis,
            name=f"{tag}_wDQ",
        )
    )
    return f"{tag}_wdq"


def build_clean(opset: int = 21) -> onnx.ModelProto:
    """sample -> Q/DQ -> Conv(int8 weight) -> Relu -> tokens -> Q/DQ -> MatMul(int8 weight)."""
    nodes: list = []
    inits: list = []
    x = _qdq(nodes, inits, "sample", "conv_in")
    w = _weight_dq(nodes, inits, (8, 4, 3, 3), 0, "conv")
    nodes.append(helper.make_node("Conv", [x, w], ["c"], pads=[1, 1, 1, 1], name="conv"))
    nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    inits.append(numpy_helper.from_array(np.array([0, 8, -1], np.int64), "flat"))
    nodes.append(helper.make_node("Reshape", ["r", "flat"], ["f"], name="flatten"))
    nodes.append(helper.make_node("Transpose", ["f"], ["t"], perm=[0, 2, 1], name="tokens"))
    t = _qdq(nodes, inits, "t", "mm_in")
    w2 = _weight_dq(nodes, inits, (8, 16), 1, "mm")
    nodes.append(helper.make_node("MatMul", [t, w2], ["noise_pred"], name="mm"))
    graph = helper.make_graph(
        nodes,
        "lint_test",
        [helper.make_tensor_value_info("sample", TP.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("noise_pred", TP.FLOAT, ["batch", 64, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def replace_init(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == tensor.name:
            model.graph.initializer[i].CopyFrom(tensor)
            return
    model.graph.initializer.append(tensor)


def rules_for(violations: list[LintViolation], rule: str) -> set[str]:
    return {v.node for v in violations if v.rule == rule}


def test_clean_graph_passes():
    model = build_clean()
    onnx.checker.check_model(model, full_check=True)
    assert lint_tensorrt(model) == []
    assert format_violations([]) == "TensorRT lint: no violations."


def test_supported_list_reflects_onnx_tensorrt_doc():
    for op in (
        "Conv",
        "MatMul",
        "Gemm",
        "QuantizeLinear",
        "DequantizeLinear",
        "GroupNormalization",
        "Gather",
    ):
        assert op in TENSORRT_SUPPORTED_OPS
    for op in (
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "Unique",
    ):
        assert op not in TENSORRT_SUPPORTED_OPS


def test_nonzero_zero_point():
    model = build_clean()
    replace_init(model, helper.make_tensor("mm_in_zp", TP.INT8, [], [3]))
    v = lint_tensorrt(model)
    assert rules_for(v, "zero-point") == {"mm_in_Q", "mm_in_DQ"}
    assert all(x.rule == "zero-point" for x in v)


def test_computed_scale():
    model = build_clean()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "half"))
    model.graph.node.insert(0, helper.make_node("Mul", ["half", "half"], ["computed_scale"], name="scale_mul"))
    node(model, "conv_in_Q").input[1] = "computed_scale"
    v = lint_tensorrt(model)
    assert rules_for(v, "scale-constant") == {"conv_in_Q"}
    assert "scale_mul" in next(x.message for x in v if x.rule == "scale-constant")


def test_zero_and_nan_scale():
    model = build_clean()
    replace_init(model, numpy_helper.from_array(np.array(0.0, np.float32), "conv_in_scale"))
    replace_init(model, numpy_helper.from_array(np.array([0.01] * 15 + [np.nan], np.float32), "mm_w_scale"))
    v = lint_tensorrt(model)
    assert rules_for(v, "scale-value") == {"conv_in_Q", "conv_in_DQ", "mm_wDQ"}


def test_per_channel_activation_scale():
    model = build_clean()
    replace_init(model, numpy_helper.from_array(np.full(4, 0.02, np.float32), "conv_in_scale"))
    replace_init(model, numpy_helper.from_array(np.zeros(4, np.int8), "conv_in_zp"))
    for name in ("conv_in_Q", "conv_in_DQ"):
        node(model, name).attribute.append(helper.make_attribute("axis", 1))
    v = lint_tensorrt(model)
    assert rules_for(v, "per-channel-activation") == {"conv_in_Q", "conv_in_DQ"}


def test_weight_axis_not_output_channel():
    model = build_clean()
    wdq = node(model, "mm_wDQ")
    del wdq.attribute[:]
    wdq.attribute.append(helper.make_attribute("axis", 0))
    replace_init(model, numpy_helper.from_array(np.full(8, 0.01, np.float32), "mm_w_scale"))
    replace_init(model, numpy_helper.from_array(np.zeros(8, np.int8), "mm_w_zp"))
    assert rules_for(lint_tensorrt(model), "weight-axis") == {"mm_wDQ"}


def _int4_blocked(model: onnx.ModelProto, tag: str, shape: tuple[int, ...], block_axis: int) -> None:
    """Turn ``{tag}_wDQ`` into an INT4 blocked DQ (one block over the whole ``block_axis``)."""
    q = RNG.integers(-7, 8, size=shape)
    scale_shape = list(shape)
    scale_shape[block_axis] = 1
    replace_init(model, helper.make_tensor(f"{tag}_w", TP.INT4, list(shape), q.flatten().tolist()))
    replace_init(model, numpy_helper.from_array(np.full(scale_shape, 0.1, np.float32), f"{tag}_w_scale"))
    n = int(np.prod(scale_shape))
    replace_init(model, helper.make_tensor(f"{tag}_w_zp", TP.INT4, scale_shape, [0] * n))
    dq = node(model, f"{tag}_wDQ")
    del dq.attribute[:]
    dq.attribute.extend(
        [helper.make_attribute("axis", block_axis), helper.make_attribute("block_size", shape[block_axis])]
    )


def test_int4_blocked_matmul_weight_only_passes():
    model = build_clean(opset=21)
    _int4_blocked(model, "mm", (8, 16), 0)
    # W4A16: float activations into the INT4 MatMul are TensorRT's weight-only path
    node(model, "mm").input[0] = "t"
    onnx.checker.check_model(model, full_check=True)
    assert lint_tensorrt(model) == []


def test_int4_on_conv():
    model = build_clean(opset=21)
    _int4_blocked(model, "conv", (8, 4, 3, 3), 1)
    v = lint_tensorrt(model)
    assert rules_for(v, "int4") == {"conv_wDQ"}
    assert "Conv" in next(x.message for x in v if x.rule == "int4")


def test_int4_needs_opset_21():
    model = build_clean(opset=19)
    _int4_blocked(model, "mm", (8, 16), 0)
    v = lint_tensorrt(model)
    assert rules_for(v, "int4-opset") == {"mm_wDQ"}


def test_qlinearconv_is_integer_op():
    model = build_clean()
    model.graph.node.append(
        helper.make_node(
            "QLinearConv",
            [
                "conv_in_q",
                "conv_in_scale",
                "conv_in_zp",
                "conv_w",
                "conv_w_scale",
                "conv_w_zp",
                "conv_in_scale",
                "conv_in_zp",
            ],
            ["qconv_out"],
            name="qlinear_conv",
        )
    )
    v = lint_tensorrt(model)
    assert rules_for(v, "integer-op") == {"qlinear_conv"}
    assert rules_for(v, "unsupported-op") == set()


def test_unsupported_ops():
    model = build_clean()
    model.graph.node.append(helper.make_node("Unique", ["noise_pred"], ["uniq"], name="unique"))
    model.graph.node.append(
        helper.make_node("FusedGemm", ["t", "mm_wdq"], ["fg"], name="fused", domain="com.microsoft")
    )
    v = lint_tensorrt(model)
    assert rules_for(v, "unsupported-op") == {"unique", "fused"}


def test_weight_dq_not_feeding_input_1():
    model = build_clean()
    model.graph.node.append(helper.make_node("Transpose", ["mm_wdq"], ["wt"], name="w_transpose"))
    node(model, "mm").input[1] = "wt"
    v = lint_tensorrt(model)
    assert rules_for(v, "weight-dq-placement") == {"mm_wDQ"}


def test_weight_dq_on_wrong_input():
    model = build_clean()
    mm = node(model, "mm")
    mm.input[0], mm.input[1] = "mm_wdq", "mm_in_dq"
    assert "mm_wDQ" in rules_for(lint_tensorrt(model), "weight-dq-placement")


def test_uint8_activations():
    model = build_clean()
    for tag in ("conv_in", "mm_in"):
        replace_init(model, helper.make_tensor(f"{tag}_zp", TP.UINT8, [], [128]))
    v = lint_tensorrt(model)
    assert rules_for(v, "uint8") == {"conv_in_Q", "conv_in_DQ", "mm_in_Q", "mm_in_DQ"}
    assert rules_for(v, "zero-point") == set()  # one clear message per node, not two


def test_q_without_zero_point_is_uint8():
    model = build_clean()
    del node(model, "mm_in_Q").input[2]
    assert rules_for(lint_tensorrt(model), "uint8") == {"mm_in_Q"}


def test_activation_without_dq():
    model = build_clean()
    node(model, "conv").input[0] = "sample"
    v = lint_tensorrt(model)
    assert rules_for(v, "activation-dq") == {"conv"}
    # a weight-only export says so in its metadata, and then float activations are expected
    model.metadata_props.append(onnx.StringStringEntryProto(key="tfmq.abits", value="16"))
    assert rules_for(lint_tensorrt(model), "activation-dq") == set()


def test_q_without_dq_and_dq_source():
    model = build_clean()
    node(model, "relu").input[0] = "conv_in_q"  # a Q consumed by Relu
    model.graph.input.append(helper.make_tensor_value_info("int8_in", TP.INT8, ["batch", 4, 8, 8]))
    node(model, "conv_in_DQ").input[0] = "int8_in"
    v = lint_tensorrt(model)
    assert rules_for(v, "q-without-dq") == {"conv_in_Q"}
    assert rules_for(v, "dq-source") == {"conv_in_DQ"}


def test_time_embedding_mlp():
    # the path of diffusers' Timesteps -> TimestepEmbedding in a torch.onnx export (flip_sin_to_cos)
    model = build_clean()
    g = model.graph
    g.input.append(helper.make_tensor_value_info("t_freq", TP.FLOAT, ["batch", 4]))
    g.initializer.extend(
        [
            numpy_helper.from_array(np.ones((8, 8), np.float32), "lin1_w"),
            numpy_helper.from_array(np.array([4], np.int64), "half"),
            numpy_helper.from_array(np.array([8], np.int64), "full"),
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Sin", ["t_freq"], ["s"], name="time_sin"),
            helper.make_node("Cos", ["t_freq"], ["co"], name="time_cos"),
            helper.make_node("Concat", ["s", "co"], ["emb"], axis=-1, name="time_concat"),
            helper.make_node("Slice", ["emb", "half", "full", "one"], ["e_cos"], name="flip_cos"),
            helper.make_node("Slice", ["emb", "zero", "half", "one"], ["e_sin"], name="flip_sin"),
            helper.make_node("Concat", ["e_cos", "e_sin"], ["flipped"], axis=-1, name="flip_concat"),
            helper.make_node("Cast", ["flipped"], ["emb32"], to=TP.FLOAT, name="time_cast"),
            helper.make_node("Gemm", ["emb32", "lin1_w"], ["temb"], name="time_linear_1"),
        ]
    )
    v = lint_tensorrt(model)
    assert rules_for(v, "time-mlp") == {"time_sin", "time_cos"}


def test_opset_too_old():
    v = lint_tensorrt(build_clean(opset=11))
    assert rules_for(v, "opset") == {"lint_test"}


def test_format_violations_names_rule_and_node():
    model = build_clean()
    replace_init(model, helper.make_tensor("mm_in_zp", TP.INT8, [], [3]))
    text = format_violations(lint_tensorrt(model))
    assert text.startswith("TensorRT lint: 2 violations")
    assert "zero-point" in text and "mm_in_Q" in text


def test_lint_onnx_file(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(build_clean(), str(path))
    assert lint_onnx_file(path) == []
    with pytest.raises(TfmqError, match="does not exist"):
        lint_onnx_file(tmp_path / "missing.onnx")
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf at all\xff\xff")
    with pytest.raises(TfmqError, match="not a readable ONNX model"):
        lint_onnx_file(bad)
