"""TensorRT: a one-line error without it, the profile shapes (no TensorRT needed), and on a GPU
machine the plan against onnxruntime."""

from __future__ import annotations

import onnx
import pytest

from tests.backends.tiny_graph import C, D, H, S, W, make_inputs, make_tiny_unet, reference
from tfmq_export.backends.compare import compare_runners
from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
from tfmq_export.backends.tensorrt.availability import check_tensorrt_available
from tfmq_export.backends.tensorrt.build import build_tensorrt_engine, profile_shapes
from tfmq_export.backends.tensorrt.runner import TensorRTRunner
from tfmq_export.errors import TfmqError
from tfmq_export.metrics.error import rel_l2


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
