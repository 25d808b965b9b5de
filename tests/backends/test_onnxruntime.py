"""onnxruntime: the optimised-graph "engine" (int8 fusion counted in its manifest) and the runner."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from tests.backends.tiny_graph import make_inputs, reference
from tfmq_export.backends.manifest import manifest_path
from tfmq_export.backends.onnxruntime.build import build_onnxruntime_engine
from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
from tfmq_export.errors import TfmqError
from tfmq_export.export.lint import lint_tensorrt
from tfmq_export.metrics.error import rel_l2

# The fusion counts below are the same on every x86-64 CPU: onnxruntime's QDQ transformer decides
# by platform (x86 vs ARM), not by ISA extension; only the kernels it then runs differ.


def test_tiny_graph_lint(models):
    assert lint_tensorrt(onnx.load(models["trt"])) == []
    rules = {v.rule for v in lint_tensorrt(onnx.load(models["ort"]))}
    assert rules == {"uint8"}  # the onnxruntime target is a different graph, by design


@pytest.mark.int8_exact
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


@pytest.mark.int8_exact
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


def test_failed_builds_leave_no_file(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 this is not an ONNX model \xff\xfe")
    out_dir = tmp_path / "engines"
    with pytest.raises(TfmqError, match="not a readable ONNX model"):
        build_onnxruntime_engine(bad, out_dir / "a.onnx")
    with pytest.raises(TfmqError, match="does not exist"):
        build_onnxruntime_engine(tmp_path / "missing.onnx", out_dir / "c.onnx")
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
