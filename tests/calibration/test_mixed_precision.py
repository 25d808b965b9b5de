"""Per-layer bit widths: ``w8_layers`` keeps the most sensitive weight layers 8-bit (measured), ``keep_fp``
leaves named classes of layers float; both land in the artifact, the simulation and the graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from onnx import TensorProto, numpy_helper

from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.calibration.sensitivity import keep_fp_layers, layer_sensitivity
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.export.qdq import onnx_scope
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.quant.simulate import quant_layers
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.temporal import build_table_unet

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = {"w8_layers": 2, "keep_fp": ["shortcuts", "downsamplers"]}


@pytest.fixture(scope="module")
def mixed(loaded_unet2d):
    torch.set_num_threads(1)
    settings = CalibrationSettings(method="minmax", wbits=4, abits=8, steps=4, num_samples=4, batch_size=4,
                                   extra=dict(MIXED))
    return loaded_unet2d, calibrate(loaded_unet2d, settings, progress=False)


def test_w8_layers_are_the_most_sensitive_and_8_bit_everywhere(mixed):
    model, artifact = mixed
    sens = artifact.settings["layer_sensitivity"]
    chosen = artifact.settings["w8_layer_names"]
    assert len(chosen) == 2 and set(chosen) == set(list(sens)[:2])
    assert min(sens[n] for n in chosen) >= max(v for n, v in sens.items() if n not in chosen)
    for name, record in artifact.layers.items():
        expected = 8 if name in chosen else 16 if name in artifact.settings["keep_fp_layer_names"] else 4
        assert record.wbits == expected, name
    for name in chosen:  # integers on the 8-bit grid, beyond what 4 bits can hold
        q = artifact.layer_tensor(name, "weight_int")
        assert q.abs().max() > 7 and q.abs().max() <= 127
    sim = simulation_from_artifact(model.unet, artifact)
    assert {n: layer.weight_quantizer.bits for n, layer in quant_layers(sim).items()} == {
        n: r.wbits for n, r in artifact.layers.items()}
    graph = build_onnx(model, artifact, "onnxruntime", weight_storage="int4")
    inits = {t.name: t for t in graph.graph.initializer}
    for name in chosen:
        assert inits[f"{name}.weight_int"].data_type == TensorProto.INT8
        assert np.abs(numpy_helper.to_array(inits[f"{name}.weight_int"])).max() > 7


def test_keep_fp_layers_are_float_with_no_qdq(mixed):
    model, artifact = mixed
    kept = artifact.settings["keep_fp_layer_names"]
    assert any(n.endswith("conv_shortcut") for n in kept) and any("downsamplers" in n for n in kept)
    assert kept == keep_fp_layers(list(artifact.layers), ("shortcuts", "downsamplers"))
    for name in kept:
        assert (artifact.layers[name].wbits, artifact.layers[name].abits) == (16, 16)
        assert f"{name}.weight_int" not in artifact.tensors and f"{name}.input_scale" not in artifact.tensors
    graph = build_onnx(model, artifact, "tensorrt")  # also passes the TensorRT lint
    for name in kept:
        scope = onnx_scope(name)
        assert not [n for n in graph.graph.node if n.name.startswith(scope) and "Linear" in n.op_type]
        conv = next(n for n in graph.graph.node if n.name.startswith(scope) and n.op_type == "Conv")
        assert conv.input[1] in {t.name for t in graph.graph.initializer}  # a float weight, no DequantizeLinear
    quantized = next(n for n, r in artifact.layers.items() if r.wbits == 4)
    assert any(n.name.startswith(onnx_scope(quantized)) and n.op_type == "DequantizeLinear" for n in graph.graph.node)


def test_sensitivity_finds_the_layer_4_bits_hurt(loaded_unet2d):
    """A layer whose channels each hold one large outlier weight loses most at 4 bits: it ranks first."""
    unet = copy.deepcopy(loaded_unet2d.unet)
    names = list(UNetAdapter(unet).quantizable_layers())
    victim = "mid_block.resnets.0.conv1"
    with torch.no_grad():
        w = unet.get_submodule(victim).weight
        w.view(w.shape[0], -1)[:, 0] = 40 * w.abs().max()
    fp = build_table_unet(unet, [999, 500, 1]).eval()
    gen = torch.Generator().manual_seed(0)
    data = CalibrationData(torch.randn(6, 1, 16, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]), None,
                           [999, 500, 1])
    before = [p.clone() for p in fp.parameters()]
    sens = layer_sensitivity(fp, names, data, weight_init="max")
    assert next(iter(sens)) == victim and sens[victim] > 2 * list(sens.values())[1]
    assert all(torch.equal(a, b) for a, b in zip(before, fp.parameters(), strict=True))  # fp model restored


@pytest.mark.parametrize(("extra", "needle"), [
    ({"w8_layers": -1}, "w8_layers"),
    ({"w8_layers": 1.5}, "w8_layers"),
    ({"keep_fp": ["shortcuts", "attention"]}, "keep_fp"),
    ({"keep_fp": "shortcuts"}, "keep_fp"),
    ({"w8_classes": ["convs"]}, "w8_classes"),
])
def test_bad_values_are_one_line(extra, needle):
    with pytest.raises(TfmqError) as info:
        CalibrationSettings(method="minmax", wbits=4, abits=8, extra=extra)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_too_many_w8_layers_is_one_line(loaded_unet2d):
    settings = CalibrationSettings(method="minmax", wbits=4, abits=8, steps=2, num_samples=2, batch_size=2,
                                   extra={"w8_layers": 1000})
    with pytest.raises(TfmqError, match="w8_layers 1000") as info:
        calibrate(loaded_unet2d, settings, progress=False)
    assert "\n" not in str(info.value)


def test_tfmq_honours_the_layer_plan(loaded_unet2d):
    """The layer list is made before the method: tfmq (reconstruction, TIAR, FSC) calibrates it as given."""
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, steps=2, num_samples=2, batch_size=4, iters=2,
                                   extra={"w8_layers": 1, "keep_fp": ["downsamplers"], "tiar_iters": 2})
    artifact = calibrate(loaded_unet2d, settings, progress=False)
    bits = {n: r.wbits for n, r in artifact.layers.items()}
    assert bits[artifact.settings["w8_layer_names"][0]] == 8
    assert all(bits[n] == 16 for n in artifact.settings["keep_fp_layer_names"])
    assert sorted(set(bits.values())) == [4, 8, 16]


def test_w8_classes_keep_8_bit_weights_and_float_wins(loaded_unet2d):
    """``w8_classes``: every layer of the class has 8-bit weights (integers beyond the 4-bit grid) and quantized
    inputs; a class also in ``keep_fp`` stays float; the graph stores the 8-bit layers as INT8 under INT4 storage."""
    settings = CalibrationSettings(method="minmax", wbits=4, abits=8, steps=2, num_samples=2, batch_size=2,
                                   extra={"w8_classes": ["shortcuts", "downsamplers"], "keep_fp": ["downsamplers"]})
    artifact = calibrate(loaded_unet2d, settings, progress=False)
    names = list(artifact.layers)
    shortcuts = keep_fp_layers(names, ("shortcuts",))
    assert shortcuts and artifact.settings["w8_layer_names"] == sorted(shortcuts)
    assert artifact.settings["keep_fp_layer_names"] == keep_fp_layers(names, ("downsamplers",))
    for name, record in artifact.layers.items():
        expected = 8 if name in shortcuts else 16 if "downsamplers" in name else 4
        assert record.wbits == expected, name
    for name in shortcuts:
        assert artifact.layers[name].abits == 8 and f"{name}.input_scale" in artifact.tensors
        assert artifact.layer_tensor(name, "weight_int").abs().max() > 7
    graph = build_onnx(loaded_unet2d, artifact, "onnxruntime", weight_storage="int4")
    inits = {t.name: t.data_type for t in graph.graph.initializer}
    assert all(inits[f"{name}.weight_int"] == TensorProto.INT8 for name in shortcuts)
    assert TensorProto.INT4 in inits.values()
