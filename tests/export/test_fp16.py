"""``--precision fp16``: FP16 float parts with float32 I/O, the simulation's function within FP16
tolerance on onnxruntime, FP32 exports unchanged, the lint's precision rules, the option's parsing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from tests.conftest import rel_l2
from tests.export.test_lint import build_clean, node, replace_init
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.cli import cli
from tfmq_export.config import CalibrationSettings
from tfmq_export.contract import META_FLOAT_PRECISION, parse_metadata, precision_label
from tfmq_export.errors import TfmqError
from tfmq_export.export.fp16 import to_fp16
from tfmq_export.export.lint import lint_tensorrt
from tfmq_export.export.onnx_export import build_onnx, read_metadata
from tfmq_export.quant.state import simulation_from_artifact

#: FP16 graph vs the FP32 torch simulation (digits W8A8, --target tensorrt, rows 0/2/4). FP16 rounds
#: every op to 11 bits (4.9e-4 relative); the rounded activations then cross int8 rounding boundaries
#: the simulation does not cross (a one-step flip of 1/127 of a tensor's range), which propagates.
#: Measured 5.2e-3 here (FP32 graph: 2.5e-3); test_qdq's FP32 bound is 1e-2.
FP16_W8A8_BOUND = 2e-2
#: FP16 float graph (W16A16) vs the FP32 one on a tiny random UNet: measured 7.2e-4.
FP16_FLOAT_BOUND = 3e-3


def _run(graph: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.fixture(scope="module")
def digits_w8a8():
    from tfmq_export.models.loading import load_model

    model = load_model("digits")
    settings = CalibrationSettings(method="minmax", wbits=8, abits=8, steps=5, num_samples=8, batch_size=8)
    return model, calibrate(model, settings, progress=False)


@pytest.fixture(scope="module")
def digits_graphs(digits_w8a8):
    model, artifact = digits_w8a8
    return {p: build_onnx(model, artifact, "tensorrt", precision=p) for p in ("fp32", "fp16")}


def test_fp16_graph_equals_the_simulation(digits_w8a8, digits_graphs):
    model, artifact = digits_w8a8
    sim = simulation_from_artifact(model.unet, artifact, "tensorrt")
    gen = torch.Generator().manual_seed(5)
    sample, rows = torch.randn((3, *model.sample_shape), generator=gen), torch.tensor([0, 2, 4])
    with torch.no_grad():
        expected = sim(sample, rows).numpy()
    feed = {"sample": sample.numpy(), "step_index": rows.numpy()}
    out16, out32 = _run(digits_graphs["fp16"], feed), _run(digits_graphs["fp32"], feed)
    assert out16.dtype == np.float32 and out16.shape == expected.shape  # the contract's float32 output
    assert rel_l2(out16, expected) < FP16_W8A8_BOUND
    assert rel_l2(out16, out32) > 1e-5  # it did run in FP16


def test_fp16_graph_layout(digits_graphs):
    graph = digits_graphs["fp16"]
    assert {i.name: i.type.tensor_type.elem_type for i in graph.graph.input} == {"sample": TP.FLOAT,
                                                                                 "step_index": TP.INT64}
    assert graph.graph.output[0].type.tensor_type.elem_type == TP.FLOAT
    assert read_metadata(graph)[META_FLOAT_PRECISION] == "fp16"
    assert parse_metadata(read_metadata(graph), "g").precision == "w8a8-fp16"
    assert max(o.version for o in graph.opset_import if o.domain == "") >= 19  # FP16 Q/DQ
    fp32 = [t.name for t in graph.graph.initializer if t.data_type == TP.FLOAT]
    assert not fp32
    scales = {n.input[1] for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    inits = {t.name: t for t in graph.graph.initializer}
    assert scales and all(inits[s].data_type == TP.FLOAT16 for s in scales)
    assert lint_tensorrt(graph) == []
    # the FP32 graph is the one written before --precision: no precision key, same bytes as the default
    assert META_FLOAT_PRECISION not in read_metadata(digits_graphs["fp32"])


def test_fp32_is_the_library_default(digits_w8a8, digits_graphs):
    model, artifact = digits_w8a8
    assert build_onnx(model, artifact, "tensorrt").SerializeToString() == digits_graphs["fp32"].SerializeToString()


def test_fp16_float_export_halves_the_file_and_keeps_the_function(loaded_unet_cond):
    artifact = calibrate(loaded_unet_cond, CalibrationSettings(wbits=16, abits=16, steps=10), progress=False)
    graphs = {p: build_onnx(loaded_unet_cond, artifact, "tensorrt", precision=p) for p in ("fp32", "fp16")}
    table32 = build_onnx(loaded_unet_cond, artifact, "tensorrt", precision="fp16", table_fp32=True)
    gen = torch.Generator().manual_seed(3)
    feed = {"sample": torch.randn((3, *loaded_unet_cond.sample_shape), generator=gen).numpy(),
            "step_index": np.array([0, 4, 9]), "encoder_hidden_states": torch.randn(3, 7, 16, generator=gen).numpy()}
    out32, out16 = _run(graphs["fp32"], feed), _run(graphs["fp16"], feed)
    assert rel_l2(out16, out32) < FP16_FLOAT_BOUND
    sizes = {p: g.ByteSize() for p, g in graphs.items()}
    assert sizes["fp16"] < 0.6 * sizes["fp32"]
    # an FP32 table gathers the same values (Cast and Gather commute): the same output, a bigger file
    np.testing.assert_array_equal(_run(table32, feed), out16)
    assert table32.ByteSize() > sizes["fp16"] and lint_tensorrt(table32) == []


def _fp16_clean() -> onnx.ModelProto:
    model = build_clean()
    to_fp16(model)
    model.metadata_props.append(onnx.StringStringEntryProto(key=META_FLOAT_PRECISION, value="fp16"))
    return model


def _rules(model: onnx.ModelProto) -> set[tuple[str, str]]:
    return {(v.rule, v.node) for v in lint_tensorrt(model)}


def test_lint_precision_rules_pass_the_converted_graph_and_run():
    model = _fp16_clean()
    assert lint_tensorrt(model) == []
    assert node(model, "conv").input[0] == "conv_in_dq"
    out = _run(model, {"sample": np.ones((1, 4, 8, 8), np.float32)})
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_lint_catches_an_fp32_scale_in_an_fp16_graph():
    model = _fp16_clean()
    replace_init(model, numpy_helper.from_array(np.asarray(0.02, np.float32), "conv_in_scale"))
    rules = _rules(model)
    assert ("qdq-dtype", "conv_in_Q") in rules  # FP16 input, FP32 scale
    assert ("fp32-island", "conv_in_DQ") in rules  # the DQ output follows its scale: FP32
    assert ("float-mix", "conv") in rules  # FP32 activation with an FP16 weight


def test_lint_catches_a_mixed_pair_and_an_fp32_weight_scale():
    model = _fp16_clean()
    node(model, "mm_in_DQ").input[1] = "mm_in_scale32"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(0.02, np.float32), "mm_in_scale32"))
    assert {("qdq-dtype", "mm_in_DQ"), ("float-mix", "mm")} <= _rules(model)
    model = _fp16_clean()
    replace_init(model, numpy_helper.from_array(np.full(16, 0.01, np.float32), "mm_w_scale"))
    assert {("float-mix", "mm"), ("fp32-island", "mm_w_scale"), ("fp32-island", "mm_wDQ")} <= _rules(model)


def test_lint_catches_an_fp32_island_only_in_an_fp16_graph():
    model = _fp16_clean()
    relu = node(model, "relu")
    relu.input[0] = "c32"
    model.graph.node.insert(list(model.graph.node).index(relu), helper.make_node("Cast", ["c"], ["c32"], to=TP.FLOAT,
                                                                                  name="upcast"))
    assert ("fp32-island", "upcast") in _rules(model) and ("fp32-island", "relu") in _rules(model)
    del model.metadata_props[:]  # an FP32 export may hold FP32 tensors; a Q of the wrong type is still refused
    assert _rules(model) == {("qdq-dtype", "mm_in_Q")}


def test_a_scale_fp16_cannot_hold_is_refused():
    model = build_clean()
    replace_init(model, numpy_helper.from_array(np.asarray(1e-9, np.float32), "conv_in_scale"))
    with pytest.raises(TfmqError, match=r"conv_in_scale .* underflows FP16; export with --precision fp32"):
        to_fp16(model)


def test_precision_labels():
    assert [precision_label(8, 8), precision_label(8, 8, "fp16"), precision_label(16, 16, "fp16")] == [
        "w8a8", "w8a8-fp16", "fp16"]


@pytest.fixture(scope="module")
def w8a8_dir(loaded_unet2d, tmp_path_factory):
    from tfmq_export.artifact import save_artifact

    folder = tmp_path_factory.mktemp("fp16") / "art"
    settings = CalibrationSettings(method="minmax", wbits=8, abits=8, steps=3, num_samples=2, batch_size=2)
    save_artifact(calibrate(loaded_unet2d, settings, progress=False), folder)
    return folder


@pytest.mark.parametrize(("args", "expected"), [
    (["--target", "tensorrt"], "fp16"), (["--target", "onnxruntime"], "fp32"),
    (["--target", "onnxruntime", "--precision", "fp16"], "fp16"), (["--target", "tensorrt", "--precision", "fp32"],
                                                                   "fp32"),
])
def test_cli_precision_default_by_target(w8a8_dir, unet2d_dir, tmp_path, args, expected):
    out = tmp_path / "unet.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(w8a8_dir), "--out", str(out), "--model", str(unet2d_dir),
                                      *args])
    assert result.exit_code == 0, result.output
    assert f", {expected}, " in result.output
    meta = read_metadata(onnx.load(str(out)))
    assert meta.get(META_FLOAT_PRECISION, "fp32") == expected


@pytest.mark.parametrize("command", ["export-onnx", "export-pipeline"])
def test_cli_refuses_an_unknown_precision(command, tmp_path):
    result = CliRunner().invoke(cli, [command, str(tmp_path), "--out", str(tmp_path / "x"), "--precision", "bf16"])
    assert result.exit_code == 2 and "'bf16' is not one of 'fp16', 'fp32'" in result.output
    assert not (tmp_path / "x").exists()


def test_api_refuses_an_unknown_precision_in_one_line(tmp_path):
    import tfmq_export

    with pytest.raises(TfmqError, match=r"^unknown --precision 'bf16' \(choose fp16 or fp32\)$"):
        tfmq_export.export_onnx(tmp_path / "art", tmp_path / "x.onnx", precision="bf16")


def test_openvino_names_the_fp16_cause(tmp_path):
    pytest.importorskip("openvino")
    from tfmq_export.backends.openvino.build import build_openvino_engine

    path = tmp_path / "fp16.onnx"
    onnx.save(_fp16_clean(), str(path))
    try:
        build_openvino_engine(path, tmp_path / "fp16.xml")
    except TfmqError as exc:  # OpenVINO 2026.4: "Arguments do not have the same element type"
        assert "export with --precision fp32 for the CPU backends" in str(exc) and "\n" not in str(exc)
    else:  # an OpenVINO that reads FP16 Q/DQ: nothing to explain
        assert (tmp_path / "fp16.xml").is_file()
