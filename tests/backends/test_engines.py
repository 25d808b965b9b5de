"""Engines and runners on a tiny UNet-contract graph built by hand with Q/DQ.

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
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tfmq_export.backends.compare import compare_runners
from tfmq_export.backends.manifest import manifest_path
from tfmq_export.backends.onnxruntime.build import build_onnxruntime_engine
from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
from tfmq_export.backends.openvino.build import build_openvino_engine, quantize_with_nncf
from tfmq_export.backends.openvino.runner import OpenVINORunner
from tfmq_export.backends.tensorrt.build import build_tensorrt_engine, check_tensorrt_available, profile_shapes
from tfmq_export.backends.tensorrt.runner import TensorRTRunner
from tfmq_export.errors import TfmqError
from tfmq_export.export.lint import lint_tensorrt
from tfmq_export.models.sd15 import SD15_UNET_CONFIG, SD15_UNET_PARAMETERS, load_sd15_config

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


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, target, cond in [
        ("trt", "tensorrt", True),
        ("ort", "onnxruntime", True),
        ("fp32", "fp32", True),
        ("uncond", "tensorrt", False),
    ]:
        paths[name] = str(root / f"{name}.onnx")
        onnx.save(make_tiny_unet(target, cond), paths[name])
    return paths


# --- the test graph itself -----------------------------------------------------------------------


def test_tiny_graph_lint(models):
    assert lint_tensorrt(onnx.load(models["trt"])) == []
    rules = {v.rule for v in lint_tensorrt(onnx.load(models["ort"]))}
    assert rules == {"uint8"}  # the onnxruntime target is a different graph, by design


# --- onnxruntime ---------------------------------------------------------------------------------


def test_onnxruntime_engine_fuses_weights_and_matches(models, tmp_path):
    out = tmp_path / "unet.ort.onnx"
    manifest = build_onnxruntime_engine(models["ort"], out, threads=2)
    assert out.is_file() and manifest_path(out).is_file()
    assert json.loads(manifest_path(out).read_text()) == manifest
    for key in (
        "source_onnx_sha256",
        "onnxruntime_version",
        "providers",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "DequantizeLinear",
        "machine",
        "unfused_weight_dequantize",
        "engine_sha256",
    ):
        assert key in manifest, key
    assert manifest["providers"] == ["CPUExecutionProvider"]
    assert manifest["weight_dequantize_in_source"] == 4
    # uint8 activations: conv1 (output Q/DQ) -> QLinearConv, both MatMuls -> MatMulIntegerToFloat;
    # conv_out writes the graph output, has no output Q, so its weight DQ stays: the manifest says so
    assert manifest["QLinearConv"] == 1 and manifest["MatMulIntegerToFloat"] == 2
    assert manifest["unfused_weight_dequantize_nodes"] == ["conv_out_wDQ"]
    assert manifest["unfused_weight_dequantize"] == 1
    assert manifest["source_metadata"]["tfmq.target"] == "onnxruntime"
    assert manifest["machine"]["cpu_count"] == os.cpu_count()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # stage folder removed

    with OnnxRuntimeRunner(out, "w8a8", threads=2) as runner:
        assert runner.model_bytes() == out.stat().st_size
        for feed in make_inputs():
            got = runner.infer(**feed)
            ref = reference(models["ort"], feed)
            # QLinearConv requantizes conv1's output in fixed point where the literal graph rounds
            # in float: a value near a rounding tie moves by one step (6/127 ~ 0.047), which the
            # later layers (weights ~0.3) shrink. Measured: max 0.026, rel L2 7e-4 over 20 samples.
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert rel_l2(got, ref) < 5e-3
            assert np.abs(got - ref).max() < 0.1
            assert runner.last_inference_ms > 0


def test_onnxruntime_engine_reports_unfused_int8_weights(models, tmp_path):
    # the TensorRT graph (int8 activations) on onnxruntime: MatMuls fuse, the Convs do not
    manifest = build_onnxruntime_engine(models["trt"], tmp_path / "trt_on_ort.onnx")
    assert manifest["unfused_weight_dequantize"] == 2
    assert set(manifest["unfused_weight_dequantize_nodes"]) == {"conv1_wDQ", "conv_out_wDQ"}
    assert manifest["QLinearConv"] == 0


def test_onnxruntime_runner_feeds_only_declared_inputs(models):
    feed = make_inputs(1)[0]
    with OnnxRuntimeRunner(models["uncond"], "w8a8") as runner:
        assert runner.input_names == ["sample", "step_index"]
        got = runner.infer(**feed)  # encoder_hidden_states given but not declared: skipped
    np.testing.assert_allclose(got, reference(models["uncond"], feed), rtol=1e-4, atol=1e-4)
    with (
        OnnxRuntimeRunner(models["trt"], "w8a8") as runner,
        pytest.raises(TfmqError, match="encoder_hidden_states"),
    ):
        runner.infer(feed["sample"], feed["step_index"])


# --- OpenVINO ------------------------------------------------------------------------------------


def test_openvino_engine_runs_int8_and_matches(models, tmp_path):
    out = tmp_path / "unet.xml"
    manifest = build_openvino_engine(models["trt"], out)
    assert out.is_file() and out.with_suffix(".bin").is_file() and manifest_path(out).is_file()
    for key in ("source_onnx_sha256", "openvino_version", "engine_sha256", "machine", "op_counts"):
        assert key in manifest, key
    assert manifest["compress_to_fp16"] is False
    assert manifest["FakeQuantize"] == 4  # one per activation Q/DQ pair
    layers = manifest["compiled_cpu_layer_precisions"]
    assert layers.get("Convolution:i8") == 2 and layers.get("FullyConnected:i8") == 2, layers

    # the IR, the ONNX read directly, and the onnxruntime-target graph (uint8, Conv-output Q/DQ:
    # OpenVINO reads both targets; core.read_model of that one would not compile, see the runner)
    for path, source in ((out, models["trt"]), (models["trt"], models["trt"]), (models["ort"], models["ort"])):
        with OpenVINORunner(path, "w8a8", threads=2) as runner:
            assert runner.input_names == ["sample", "step_index", "encoder_hidden_states"]
            for feed in make_inputs():
                got = runner.infer(**feed)
                ref = reference(source, feed)
                # int8 kernels vs float rounding, as for onnxruntime (measured: max 0.027, rel 4e-4)
                assert rel_l2(got, ref) < 5e-3 and np.abs(got - ref).max() < 0.1
    with OpenVINORunner(out, "w8a8") as runner:
        assert runner.model_bytes() == out.stat().st_size + out.with_suffix(".bin").stat().st_size


def test_nncf_peer_quantizes_fp32_graph(models, tmp_path):
    out = tmp_path / "nncf.xml"
    manifest = quantize_with_nncf(models["fp32"], out, make_inputs(n=8, batch=2, seed=3))
    assert manifest["precision"] == "nncf-int8"
    assert manifest["nncf_settings"]["model_type"] == "transformer"
    assert manifest["FakeQuantize"] > 0
    assert any(k.endswith(":i8") or k.endswith(":u8") for k in manifest["compiled_cpu_layer_precisions"])
    with OpenVINORunner(out, "nncf-int8") as runner:
        for feed in make_inputs(seed=4):
            # NNCF's INT8 against the float model: its quantization error on a tiny random net
            # calibrated with 16 samples (measured 0.11; our hand-set W8A8 grid gives 0.026)
            assert rel_l2(runner.infer(**feed), reference(models["fp32"], feed)) < 0.25
    with pytest.raises(TfmqError, match="already holds Q/DQ"):
        quantize_with_nncf(models["trt"], tmp_path / "x.xml", make_inputs(1))


# --- failures leave nothing behind ---------------------------------------------------------------


def test_failed_builds_leave_no_file(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 this is not an ONNX model \xff\xfe")
    out_dir = tmp_path / "engines"
    with pytest.raises(TfmqError, match="not a readable ONNX model"):
        build_onnxruntime_engine(bad, out_dir / "a.onnx")
    with pytest.raises(TfmqError, match="not a readable ONNX model"):
        build_openvino_engine(bad, out_dir / "b.xml")
    with pytest.raises(TfmqError, match="does not exist"):
        build_onnxruntime_engine(tmp_path / "missing.onnx", out_dir / "c.onnx")
    with pytest.raises(TfmqError, match=r"must end in \.xml"):
        build_openvino_engine(bad, out_dir / "d.bin")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_failed_onnxruntime_session_leaves_no_file(tmp_path):
    # a well-formed ONNX that onnxruntime refuses (an op it does not implement)
    x = helper.make_tensor_value_info("sample", TP.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["sample"], ["y"], domain="tfmq.test")],
        "g",
        [x],
        [helper.make_tensor_value_info("y", TP.FLOAT, [1])],
    )
    path = tmp_path / "unknown_op.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("tfmq.test", 1)]),
        str(path),
    )
    with pytest.raises(TfmqError, match="onnxruntime could not load"):
        build_onnxruntime_engine(path, tmp_path / "out" / "e.onnx")
    assert list((tmp_path / "out").iterdir()) == []


# --- comparison ----------------------------------------------------------------------------------


def test_compare_runners_per_table_row(models, tmp_path):
    engine = tmp_path / "cmp.onnx"
    build_onnxruntime_engine(models["ort"], engine)
    inputs = make_inputs(n=4, batch=2, seed=5)
    fused = OnnxRuntimeRunner(engine, "w8a8")
    literal = OnnxRuntimeRunner(models["ort"], "w8a8", optimization="disable")
    report = compare_runners(fused, literal, inputs, use_polygraphy=False)
    assert report["method"] == "direct"
    steps = sorted({int(s) for f in inputs for s in f["step_index"]})
    assert [r["step_index"] for r in report["rows"]] == steps
    assert sum(r["count"] for r in report["rows"]) == 8
    assert 0 < report["rel_l2"] < 5e-3

    # the same through Polygraphy's Comparator (what a TensorRT vs onnxruntime check uses)
    poly = compare_runners(fused, literal, inputs, use_polygraphy=True, atol=0.3, rtol=0.0)
    assert poly["method"] == "polygraphy-comparator" and poly["polygraphy_passed"] is True
    assert poly["rel_l2"] == pytest.approx(report["rel_l2"], rel=0.2)
    with pytest.raises(TfmqError, match="Polygraphy-capable"):
        compare_runners(OpenVINORunner(models["ort"], "w8a8"), literal, inputs, use_polygraphy=True)


# --- TensorRT ------------------------------------------------------------------------------------


def test_tensorrt_absent_is_a_clear_error(models, tmp_path):
    reason = check_tensorrt_available()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the missing-TensorRT error cannot happen here")
    with pytest.raises(TfmqError, match="cannot build a TensorRT engine") as err:
        build_tensorrt_engine(models["trt"], tmp_path / "unet.plan")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "unet.plan").exists()


def test_tensorrt_profile_shapes(models):
    # the part of the TensorRT build that needs no TensorRT: one profile over the batch range
    shapes = profile_shapes(onnx.load(models["trt"]), 1, 2, 4)
    assert shapes == {
        "sample": [[1, C, H, W], [2, C, H, W], [4, C, H, W]],
        "step_index": [[1], [2], [4]],
        "encoder_hidden_states": [[1, S, D], [2, S, D], [4, S, D]],
    }
    assert list(profile_shapes(onnx.load(models["uncond"]), 1, 1, 2)) == ["sample", "step_index"]
    dynamic = make_tiny_unet("tensorrt")
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    with pytest.raises(TfmqError, match="dynamic dimension 2"):
        profile_shapes(dynamic, 1, 1, 2)


@pytest.fixture(scope="module")
def tensorrt_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'tfmq-export[tensorrt]')")
    reason = check_tensorrt_available()
    if reason is not None:
        pytest.skip(reason)


def test_tensorrt_engine_matches_onnxruntime(tensorrt_gpu, models, tmp_path):
    out = tmp_path / "unet.plan"
    manifest = build_tensorrt_engine(
        models["trt"], out, min_batch=1, opt_batch=2, max_batch=4, timing_cache=tmp_path / "timing.cache"
    )
    for key in ("source_onnx_sha256", "tensorrt_version", "gpu", "profiles", "strongly_typed"):
        assert key in manifest, key
    assert manifest["profiles"][0]["sample"]["max"] == [4, C, H, W]
    inputs = make_inputs(n=3, batch=2)
    with TensorRTRunner(out, "w8a8") as trt_runner:
        got = trt_runner.infer(**inputs[0])
        assert trt_runner.last_inference_ms > 0
        assert rel_l2(got, reference(models["trt"], inputs[0])) < 2e-2
    report = compare_runners(TensorRTRunner(out, "w8a8"), OnnxRuntimeRunner(models["trt"], "w8a8"), inputs)
    assert report["method"] == "polygraphy-comparator"
    assert report["rel_l2"] < 2e-2


# --- the shipped SD-1.5 architecture (for speed runs) --------------------------------------------


def test_sd15_architecture_config():
    import torch
    from diffusers import UNet2DConditionModel

    config = load_sd15_config()
    assert config == SD15_UNET_CONFIG
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights in a unit test
        unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS
    assert unet.config.cross_attention_dim == 768 and unet.config.sample_size == 64
