"""``--weight-storage int4``: 4-bit weights as ONNX INT4 initializers (opset 21) holding the artifact's
integers, computing what the INT8-stored graph computes; TensorRT keeps INT8 convolutions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import pack_4bit
from tfmq_export.export.onnx_export import build_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def w4a8(loaded_unet2d):
    torch.set_num_threads(1)
    settings = CalibrationSettings(method="minmax", wbits=4, abits=8, steps=4, num_samples=4, batch_size=4,
                                   extra={"keep_fp": ["downsamplers"]})
    artifact = calibrate(loaded_unet2d, settings, progress=False)
    graphs = {s: build_onnx(loaded_unet2d, artifact, "onnxruntime", weight_storage=s) for s in ("int8", "int4")}
    return loaded_unet2d, artifact, graphs


def _opset(graph) -> int:
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def test_int4_initializers_hold_the_4bit_integers(w4a8):
    _, artifact, graphs = w4a8
    graph = graphs["int4"]
    assert _opset(graph) == 21 and _opset(graphs["int8"]) == 17
    inits = {t.name: t for t in graph.graph.initializer}
    four = [n for n, r in artifact.layers.items() if r.wbits == 4]
    assert four
    for name in four:
        tensor = inits[f"{name}.weight_int"]
        assert tensor.data_type == TensorProto.INT4
        expected = artifact.layer_tensor(name, "weight_int").numpy()
        stored = numpy_helper.to_array(tensor).astype(np.int8)
        if artifact.layers[name].kind == "linear":  # MatMul B is [K, N]
            stored = stored.T
        np.testing.assert_array_equal(stored, expected)
        assert len(tensor.raw_data) == (expected.size + 1) // 2  # two values a byte
    int8 = {t.name: t for t in graphs["int8"].graph.initializer}
    assert all(int8[f"{n}.weight_int"].data_type == TensorProto.INT8 for n in four)
    assert sum(len(t.raw_data) for t in graph.graph.initializer) < sum(len(t.raw_data) for t in int8.values())


def test_int4_graph_computes_the_int8_graph(w4a8):
    """Same dequantized weights: the graphs' literal meaning (no onnxruntime fusion) is the same function."""
    model, _, graphs = w4a8
    gen = torch.Generator().manual_seed(3)
    feed = {"sample": torch.randn(3, *model.sample_shape, generator=gen).numpy(),
            "step_index": np.array([0, 1, 3], dtype=np.int64)}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    outs = {s: ort.InferenceSession(g.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        ["noise_pred"], feed)[0] for s, g in graphs.items()}
    np.testing.assert_allclose(outs["int4"], outs["int8"], rtol=0, atol=1e-5)
    assert np.abs(outs["int8"]).max() > 0.1  # a graph that computes something


def test_tensorrt_refuses_int4_convolutions(w4a8):
    model, artifact, _ = w4a8
    with pytest.raises(TfmqError, match="TensorRT has no INT4 convolution") as info:
        build_onnx(model, artifact, "tensorrt", weight_storage="int4")
    assert "\n" not in str(info.value)
    with pytest.raises(TfmqError, match="weight-storage"):
        build_onnx(model, artifact, "onnxruntime", weight_storage="int2")


def test_pack_4bit_low_nibble_first():
    assert pack_4bit(np.array([1, -1, -8], dtype=np.int8)) == bytes([0xF1, 0x08])


def test_tensorrt_lint_flags_int4_convolution_weights(w4a8):
    """The lint is the second line: an INT4 conv weight (say, an onnxruntime-target file handed to
    TensorRT) is named; the INT8-stored graph has no INT4 finding."""
    from tfmq_export.export.lint import lint_tensorrt

    _, _, graphs = w4a8
    int4 = [v for v in lint_tensorrt(graphs["int4"]) if v.rule == "int4"]
    assert any("feeds Conv" in v.message for v in int4)
    assert not [v for v in lint_tensorrt(graphs["int8"]) if v.rule == "int4"]


def test_cli_refuses_int4_for_tensorrt_in_one_line(tmp_path):
    """Refused before the artifact is read (the folder here does not even exist)."""
    from click.testing import CliRunner

    from tfmq_export.cli import cli

    result = CliRunner().invoke(cli, ["export-onnx", str(tmp_path / "none"), "--out", str(tmp_path / "x.onnx"),
                                      "--target", "tensorrt", "--weight-storage", "int4"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "TensorRT has no INT4 convolution" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
