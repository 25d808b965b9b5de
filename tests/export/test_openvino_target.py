"""``--target openvino`` and the ``uint8-127`` Linear-input grid: the graph computes the simulation
(onnxruntime and OpenVINO), OpenVINO runs those layers as u8 FullyConnected kernels, TensorRT refuses."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.conftest import rel_l2
from tests.export.layer_probe import probe_layers, run_graph, worst_layer_error
from tfmq_export.artifact import load_artifact
from tfmq_export.calibration import pipeline
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.export.lint import lint_tensorrt
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.export.openvino_folds import fold_for_openvino
from tfmq_export.export.qdq import onnx_scope
from tfmq_export.quant.simulate import quant_layers
from tfmq_export.quant.state import simulation_from_artifact

#: the whole graph evaluated literally (onnxruntime, optimisations off) against the simulation: float
#: accumulation order only, but one activation within an ulp of a rounding boundary flips one step and a
#: random UNet amplifies it (tests/export/test_qdq.py: up to 3e-2 measured); a wrong scale gives O(0.3-1)
LITERAL_BOUND = 0.05
#: OpenVINO's int8 kernels against the simulation: measured 0.023 on this tiny random UNet (0.024 for the
#: tensorrt target's graph of an int8-grid artifact), 6.8e-4 on the bundled digits model
OPENVINO_BOUND = 0.05

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(method: str = "minmax", grid: str = "uint8-127", **kw) -> CalibrationSettings:
    extra = {"linear_act_grid": grid, **kw.pop("extra", {})}
    return CalibrationSettings(method=method, wbits=8, abits=8, steps=5, num_samples=8, batch_size=8, extra=extra,
                               **kw)


@pytest.fixture(scope="module")
def u8fc(loaded_unet_cond, tmp_path_factory):
    """A minmax W8A8 artifact with the shifted Linear grid, written and read back."""
    out = tmp_path_factory.mktemp("u8fc")
    calibrate(loaded_unet_cond, _settings(), out, progress=False)
    return load_artifact(out), out


def _feed(model):
    gen = torch.Generator().manual_seed(5)
    sample = torch.randn((3, *model.sample_shape), generator=gen)
    rows = torch.tensor([0, 2, 4])
    ehs = torch.randn(3, 5, 16, generator=gen)
    return (sample, rows, ehs), {"sample": sample.numpy(), "step_index": rows.numpy(),
                                 "encoder_hidden_states": ehs.numpy()}


def _simulated(model, artifact, target):
    args, feed = _feed(model)
    with torch.no_grad():
        return simulation_from_artifact(model.unet, artifact, target)(*args).numpy(), feed


def _literal(graph, feed):
    return run_graph(graph, feed, ["noise_pred"])["noise_pred"]


def _input_zero_points(graph, artifact):
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return {layer: inits[f"{onnx_scope(layer)}input_zero_point"] for layer in artifact.layers}


def test_the_artifact_records_the_grid(u8fc, loaded_unet_cond, tmp_path):
    artifact, folder = u8fc
    meta = json.loads((folder / "artifact.json").read_text())
    assert meta["linear_act_grid"] == "uint8-127" == artifact.linear_act_grid
    assert meta["settings"]["extra"]["linear_act_grid"] == "uint8-127"
    kinds = {r.kind for r in artifact.layers.values()}
    assert kinds == {"conv", "linear"}
    meta["linear_act_grid"] = "uint9"
    (tmp_path / "artifact.json").write_text(json.dumps(meta))
    (tmp_path / "tensors.safetensors").write_bytes((folder / "tensors.safetensors").read_bytes())
    with pytest.raises(TfmqError, match="linear_act_grid 'uint9' is not one of int8, uint8-127"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("target", ["openvino", "onnxruntime"])
def test_graph_computes_the_simulation(u8fc, loaded_unet_cond, target):
    """Zero points per layer kind, and layer by layer (test_qdq.py's method: both sides quantize the very
    same float tensor, so no rounding flip enters) the graph's Q/DQ + MatMul/Conv is the simulated layer,
    fed inputs 3x wider than calibration so that +128 steps (and clamps) occur."""
    artifact, _ = u8fc
    graph = build_onnx(loaded_unet_cond, artifact, target, fold=False)  # folds: test_openvino_folds.py
    conv_zp = (np.uint8, 128) if target == "onnxruntime" else (np.int8, 0)
    for layer, zp in _input_zero_points(graph, artifact).items():
        linear = artifact.layers[layer].kind == "linear"
        assert (zp.dtype, int(zp)) == ((np.uint8, 127) if linear else conv_zp), layer
    q_nodes = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    outputs = [n for n in q_nodes if "output_QuantizeLinear" in n.name]
    attention = [n for n in q_nodes if n.name.endswith(("/query_QuantizeLinear", "/key_QuantizeLinear"))]
    # Conv-output Q/DQ (QLinearConv fusion) on the onnxruntime target only, int8 attention on openvino only
    assert (len(outputs) > 0) == (target == "onnxruntime") and (len(attention) > 0) == (target == "openvino")
    assert len(q_nodes) - len(outputs) - len(attention) == len(artifact.layers)
    assert {p.key: p.value for p in graph.metadata_props}["tfmq.target"] == target

    _, feed = _feed(loaded_unet_cond)
    feed = {k: v * 3 if v.dtype == np.float32 else v for k, v in feed.items()}
    probes, values = probe_layers(graph, artifact, feed, literal=True)
    # the layer function; the onnxruntime target's extra Conv-output rounding comes after the probe, the
    # openvino target's query / key rounding after to_q / to_k (tests/export/test_attention_qdq.py)
    sim_layers = quant_layers(simulation_from_artifact(loaded_unet_cond.unet, artifact, "openvino", "float"))
    worst = worst_layer_error(probes, values, sim_layers)
    top_steps = sum(int((values[probes[layer][0]] / float(sim_layers[layer].input_quantizer.scale) >= 127.5).sum())
                    for layer in probes if artifact.layers[layer].kind == "linear")
    assert top_steps > 0  # inputs that only the shifted grid holds (q = +128) were exercised
    assert worst < 1e-5


def test_tensorrt_refuses_the_shifted_grid_in_one_line(u8fc, loaded_unet_cond):
    with pytest.raises(TfmqError) as info:
        build_onnx(loaded_unet_cond, u8fc[0], "tensorrt")
    message = str(info.value)
    assert "\n" not in message and "--target openvino" in message and "int8 cannot hold" in message


def test_tensorrt_lint_flags_only_the_unsigned_linear_inputs(u8fc, loaded_unet_cond):
    """The openvino graph keeps every TensorRT rule except the deliberate uint8 on the Linear inputs."""
    artifact, _ = u8fc
    violations = lint_tensorrt(build_onnx(loaded_unet_cond, artifact, "openvino"))
    linear_scopes = tuple(onnx_scope(n) for n, r in artifact.layers.items() if r.kind == "linear")
    assert violations and {v.rule for v in violations} == {"uint8"}
    assert all(v.node.split(" ")[0].startswith(linear_scopes) for v in violations)


@pytest.mark.int8_exact
def test_openvino_runs_the_linear_layers_unsigned(u8fc, loaded_unet_cond, tmp_path):
    """The contract of the target: every quantized Linear runs as a u8 FullyConnected, whatever the CPU
    (AMX or AVX512-VNNI only); an int8-grid artifact's graph runs them as i8."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'tfmq-export[openvino]')")
    from tfmq_export.backends.openvino.build import build_openvino_engine
    from tfmq_export.backends.openvino.runner import OpenVINORunner

    artifact, _ = u8fc
    linears = sum(r.kind == "linear" for r in artifact.layers.values())
    int8_grid = calibrate(loaded_unet_cond, _settings(grid="int8"), progress=False)
    # on the default grid the openvino graph is the tensorrt one in FP32 with the openvino folds and int8
    # attention (off here: tests/export/test_attention_qdq.py), but for the tfmq.target metadata
    graphs = [build_onnx(loaded_unet_cond, int8_grid, t, precision="fp32", attention="float")
              for t in ("tensorrt", "openvino")]
    splits = fold_for_openvino(graphs[0])["split_gated_projections"]
    assert splits > 0
    for graph in graphs:
        del graph.metadata_props[:]
    assert graphs[0].SerializeToString() == graphs[1].SerializeToString()
    for art, kernel in ((artifact, "u8"), (int8_grid, "i8")):
        onnx_path = tmp_path / f"{kernel}.onnx"
        onnx.save(build_onnx(loaded_unet_cond, art, "openvino"), onnx_path)
        manifest = build_openvino_engine(onnx_path, tmp_path / f"{kernel}.xml")
        fc = {k: n for k, n in manifest["compiled_cpu_layer_precisions"].items() if k.startswith("FullyConnected:")}
        assert fc == {f"FullyConnected:{kernel}": linears + splits}, fc  # a split GEGLU projection is two
    expected, feed = _simulated(loaded_unet_cond, artifact, "openvino")
    with OpenVINORunner(tmp_path / "u8.xml", "w8a8", threads=1) as runner:
        assert rel_l2(runner.infer(**feed), expected) < OPENVINO_BOUND


@pytest.mark.parametrize("method", ["qdiff", "tfmq"])
def test_every_method_calibrates_on_the_grid(loaded_unet_cond, monkeypatch, method):
    """qdiff (incl. its LSQ activation scales) and tfmq learn with the shifted grid in the loop, and the
    openvino graph of what they learned computes their simulation."""
    seen = {}

    def spy(*args, **kwargs):
        layers = quantize_model(*args, **kwargs)
        seen.update(layers)
        return layers

    quantize_model = pipeline.quantize_model
    monkeypatch.setattr(pipeline, "quantize_model", spy)
    settings = _settings(method, iters=3, extra={"act_iters": 2, "recon_batch_size": 8})
    artifact = calibrate(loaded_unet_cond, settings, progress=False)
    assert artifact.linear_act_grid == "uint8-127"
    assert {artifact.layers[name].kind for name in seen} == {"conv", "linear"}
    for name, layer in seen.items():  # the quantizers the method left (qdiff / tfmq swap some in)
        grid = "uint8-127" if artifact.layers[name].kind == "linear" else "int8"
        assert layer.input_quantizer.grid == grid, name
        assert torch.equal(layer.input_quantizer.scale.detach(), artifact.tensors[f"{name}.input_scale"])
    expected, feed = _simulated(loaded_unet_cond, artifact, "openvino")
    assert rel_l2(_literal(build_onnx(loaded_unet_cond, artifact, "openvino"), feed), expected) < LITERAL_BOUND
