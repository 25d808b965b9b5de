"""compare_runners: per-table-row error between two runners, directly or through Polygraphy."""

from __future__ import annotations

import pytest

from tests.backends.tiny_graph import make_inputs
from tfmq_export.backends.compare import compare_runners
from tfmq_export.backends.onnxruntime.build import build_onnxruntime_engine
from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
from tfmq_export.backends.openvino.runner import OpenVINORunner
from tfmq_export.errors import TfmqError


@pytest.mark.int8_exact
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
