"""A tiny UNet-contract graph built by hand with Q/DQ, for the backend tests.

The graph has the exported contract (``sample``, ``step_index``, optional
``encoder_hidden_states`` -> ``noise_pred``, dynamic batch, ``tfmq.*`` metadata), a Conv and
MatMul layers with INT8 weights (DequantizeLinear per output channel) and per-tensor activation
Q/DQ, and the temporal table gathered by ``step_index``. Reference: onnxruntime with every graph
optimisation off, i.e. the Q/DQ graph evaluated literally in float.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

__all__ = ["C", "D", "F", "H", "S", "T", "W", "make_inputs", "make_tiny_unet", "reference"]

T, C, H, W, F, S, D = 5, 4, 8, 8, 8, 6, 8  # table rows, channels, latent size, features, tokens, ctx dim


def make_tiny_unet(target: str, cond: bool = True, seed: int = 0) -> onnx.ModelProto:
    """``target``: "tensorrt" (int8, zero point 0), "onnxruntime" (uint8 / 128, Q/DQ on Conv
    outputs so onnxruntime fuses QLinearConv) or "fp32" (no quantization)."""
    rng = np.random.default_rng(seed)
    quant = target != "fp32"
    unsigned = target == "onnxruntime"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def act_qdq(x: str, absmax: float, tag: str) -> str:
        if not quant:
            return x
        s = init(f"{tag}_scale", np.array(absmax / 127, np.float32))
        zp = helper.make_tensor(f"{tag}_zp", TP.UINT8 if unsigned else TP.INT8, [], [128 if unsigned else 0])
        inits.append(zp)
        nodes.append(helper.make_node("QuantizeLinear", [x, s, zp.name], [f"{tag}_q"], name=f"{tag}_Q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, zp.name], [f"{tag}_dq"], name=f"{tag}_DQ"))
        return f"{tag}_dq"

    def weight(w: np.ndarray, axis: int, tag: str) -> str:
        if not quant:
            return init(f"{tag}_w", w)
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        names = [
            init(f"{tag}_wq", q),
            init(f"{tag}_ws", scale),
            init(f"{tag}_wzp", np.zeros(scale.size, np.int8)),
        ]
        nodes.append(helper.make_node("DequantizeLinear", names, [f"{tag}_w"], axis=axis, name=f"{tag}_wDQ"))
        return f"{tag}_w"

    # 1. conv_in (+ temporal table row, SiLU)
    x = act_qdq("sample", 3.5, "conv1_in")
    w1 = weight(rng.standard_normal((F, C, 3, 3)).astype(np.float32) * 0.3, 0, "conv1")
    init("conv1_b", rng.standard_normal(F).astype(np.float32) * 0.1)
    nodes.append(helper.make_node("Conv", [x, w1, "conv1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"))
    c1 = act_qdq("c1", 6.0, "conv1_out") if unsigned else "c1"
    init("temb_table", rng.standard_normal((T, F)).astype(np.float32) * 0.5)
    init("temb_axes", np.array([2, 3], np.int64))
    nodes += [
        helper.make_node("Gather", ["temb_table", "step_index"], ["temb"], axis=0, name="temb_gather"),
        helper.make_node("Unsqueeze", ["temb", "temb_axes"], ["temb4"], name="temb_unsqueeze"),
        helper.make_node("Add", [c1, "temb4"], ["h1"], name="add_temb"),
        helper.make_node("Sigmoid", ["h1"], ["h1s"], name="silu_sigmoid"),
        helper.make_node("Mul", ["h1", "h1s"], ["h2"], name="silu_mul"),
    ]
    # 2. tokens -> MatMul projection (+ context projection)
    init("flat_shape", np.array([0, F, -1], np.int64))
    nodes += [
        helper.make_node("Reshape", ["h2", "flat_shape"], ["h3"], name="flatten"),
        helper.make_node("Transpose", ["h3"], ["tok"], perm=[0, 2, 1], name="to_tokens"),
    ]
    t = act_qdq("tok", 6.0, "proj_in")
    w2 = weight(rng.standard_normal((F, F)).astype(np.float32) * 0.3, 1, "proj")
    nodes.append(helper.make_node("MatMul", [t, w2], ["p"], name="proj"))
    tokens_out = "p"
    if cond:
        init("ctx_axes", np.array([1], np.int64))
        nodes.append(helper.make_node("ReduceMean", ["encoder_hidden_states", "ctx_axes"], ["ctx"], name="ctx_mean"))
        c = act_qdq("ctx", 2.0, "ctx_in")
        w3 = weight(rng.standard_normal((D, F)).astype(np.float32) * 0.3, 1, "ctx_proj")
        nodes += [
            helper.make_node("MatMul", [c, w3], ["cp"], name="ctx_proj"),
            helper.make_node("Add", ["p", "cp"], ["pc"], name="add_ctx"),
        ]
        tokens_out = "pc"
    # 3. back to [B, F, H, W] -> conv_out
    nodes += [
        helper.make_node("Transpose", [tokens_out], ["back"], perm=[0, 2, 1], name="from_tokens"),
        helper.make_node("Shape", ["h2"], ["h2_shape"], name="h2_shape"),
        helper.make_node("Reshape", ["back", "h2_shape"], ["h4"], name="unflatten"),
    ]
    y = act_qdq("h4", 8.0, "conv_out_in")
    w4 = weight(rng.standard_normal((C, F, 1, 1)).astype(np.float32) * 0.3, 0, "conv_out")
    nodes.append(helper.make_node("Conv", [y, w4], ["noise_pred"], name="conv_out"))

    inputs = [
        helper.make_tensor_value_info("sample", TP.FLOAT, ["batch", C, H, W]),
        helper.make_tensor_value_info("step_index", TP.INT64, ["batch"]),
    ]
    if cond:
        inputs.append(helper.make_tensor_value_info("encoder_hidden_states", TP.FLOAT, ["batch", S, D]))
    graph = helper.make_graph(
        nodes,
        "tiny_unet",
        inputs,
        [helper.make_tensor_value_info("noise_pred", TP.FLOAT, ["batch", C, H, W])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="tfmq-export-test")
    model.ir_version = 10
    meta = {
        "tfmq.timesteps": json.dumps([999, 749, 499, 249, 1]),
        "tfmq.wbits": "8" if quant else "16",
        "tfmq.abits": "8" if quant else "16",
        "tfmq.method": "minmax",
        "tfmq.version": "0.1.0",
        "tfmq.target": "onnxruntime" if unsigned else "tensorrt",
    }
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model, full_check=True)
    return model


def make_inputs(n: int = 3, batch: int = 2, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "sample": rng.standard_normal((batch, C, H, W)).astype(np.float32),
            "step_index": rng.integers(0, T, size=batch).astype(np.int64),
            "encoder_hidden_states": rng.standard_normal((batch, S, D)).astype(np.float32),
        }
        for _ in range(n)
    ]


def reference(path: os.PathLike[str] | str, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The Q/DQ graph evaluated literally: onnxruntime with no graph optimisation (no int8 fusion)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["noise_pred"], {k: v for k, v in feed.items() if k in names})[0]
