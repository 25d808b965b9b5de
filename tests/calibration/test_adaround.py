"""AdaRound on the symmetric grids: the math, the schedule, and that the export carries exactly the
learned (hard) rounding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from diffusers import UNet2DModel
from onnx import numpy_helper

from tfmq_export.calibration import reconstruction
from tfmq_export.calibration.adaround import (
    AdaRound,
    AdaRoundSettings,
    RegularizerSchedule,
    attach_adaround,
    freeze_adaround,
    lp_loss,
    rectified_sigmoid,
)
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.models.loading import DEFAULT_SCHEDULER_CONFIG, LoadedModel
from tfmq_export.quant import grids
from tfmq_export.quant.modules import QuantLinear

#: one intra-op thread for every test here (fixture in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def micro_model() -> LoadedModel:
    """A UNet2DModel small enough to reconstruct in seconds (ResBlocks, attention, samplers)."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    ).eval()
    return LoadedModel("micro", unet, dict(DEFAULT_SCHEDULER_CONFIG), "test")


def _layer(wbits: int = 4, seed: int = 0) -> QuantLinear:
    gen = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(24, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 24, generator=gen) * 0.2)
    layer = QuantLinear(linear, wbits, 16, 1)
    layer.weight_quantizer.set_scale(grids.mse_weight_scale(layer.weight, wbits))
    return layer


def test_initial_soft_rounding_reproduces_the_weight():
    """V is initialised so that h(V) = frac(w / s): the soft-quantized weight is w itself (inside the grid)."""
    layer = _layer(8)
    ada = attach_adaround(layer)
    s = grids.channel_view(layer.weight_quantizer.scale, layer.weight)
    inside = (layer.weight / s).abs() < 126
    soft = layer.quantized_weight()
    assert torch.allclose(soft[inside], layer.weight[inside], atol=1e-5)
    assert float(rectified_sigmoid(torch.tensor(-100.0))) == 0.0
    assert float(rectified_sigmoid(torch.tensor(100.0))) == 1.0
    assert float(ada.regularizer(2.0).detach()) > 0


def test_hard_rounding_is_floor_plus_sign_of_v_on_the_grid():
    layer = _layer(4)
    ada = attach_adaround(layer)
    with torch.no_grad():
        ada.alpha.copy_(torch.randn_like(ada.alpha))
    s = grids.channel_view(layer.weight_quantizer.scale, layer.weight)
    expected = torch.clamp(torch.floor(layer.weight / s) + (ada.alpha >= 0).float(), -8, 7)
    q = freeze_adaround(layer, ada)
    assert q.dtype == torch.int8 and torch.equal(q.float(), expected)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    # frozen: the simulation now uses exactly these integers, and the soft rounding is gone
    assert layer.weight_quantizer.rounding is None
    assert torch.equal(layer.quantized_weight(), expected * s)
    assert torch.equal(layer.weight_quantizer.integer_weight(layer.weight), q)
    with pytest.raises(ValueError, match="already frozen"):
        attach_adaround(layer)


def test_regularizer_schedule():
    sched = RegularizerSchedule(100, AdaRoundSettings())
    assert [sched.weight(i) for i in (0, 19)] == [0.0, 0.0]  # off for the first 20%
    assert sched.weight(20) == 0.01
    assert sched.beta(0) == 20.0 and sched.beta(20) == 20.0
    assert sched.beta(99) == pytest.approx(2.0 + 18.0 / 80)
    assert sched.beta(60) == pytest.approx(11.0)
    ada = AdaRound(torch.zeros(3), torch.ones(3), -8, 7)
    with torch.no_grad():
        ada.alpha.copy_(torch.tensor([-50.0, 50.0, -50.0]))  # h(V) exactly 0 or 1: nothing to penalise
    assert float(ada.regularizer(2.0).detach()) == 0.0
    with pytest.raises(ValueError):
        AdaRoundSettings(warmup=1.0)


def test_adaround_beats_round_to_nearest_on_a_layer():
    """Learning the rounding against the layer output lowers the output error below round-to-nearest.

    The inputs are correlated (low rank + noise): with white inputs the output error is a sum of
    independent per-weight errors and round-to-nearest is already optimal; AdaRound's gain comes from
    the input correlations (the off-diagonal Hessian terms of the AdaRound paper)."""
    layer = _layer(4, seed=1)
    gen = torch.Generator().manual_seed(2)
    mixing = torch.randn(6, 24, generator=gen)
    x = torch.randn(256, 6, generator=gen) @ mixing + 0.1 * torch.randn(256, 24, generator=gen)
    with torch.no_grad():
        target = torch.nn.functional.linear(x, layer.weight, layer.bias)
        rtn_error = float(lp_loss(layer(x), target))
    ada = attach_adaround(layer)
    settings = AdaRoundSettings(lr=1e-2)
    sched = RegularizerSchedule(400, settings)
    opt = torch.optim.Adam([ada.alpha], lr=settings.lr)
    for it in range(400):
        loss = lp_loss(layer(x), target) + sched.weight(it) * ada.regularizer(sched.beta(it))
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze_adaround(layer, ada)
    with torch.no_grad():
        learned_error = float(lp_loss(layer(x), target))
    assert learned_error < 0.8 * rtn_error


@pytest.mark.parametrize("method", ["qdiff", "tfmq"])
def test_exported_integers_are_the_frozen_hard_rounding(monkeypatch, method):
    """Every integer the artifact and the ONNX DequantizeLinear carry is what AdaRound froze, and the
    learned rounding is not plain round-to-nearest."""
    model = micro_model()
    frozen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = reconstruction.freeze_adaround

    def spy(layer, ada):
        q = original(layer, ada)
        frozen.append((layer.weight.detach().clone(), q.clone()))
        return q

    monkeypatch.setattr(reconstruction, "freeze_adaround", spy)
    settings = CalibrationSettings(method=method, wbits=4, abits=8, steps=3, num_samples=4, batch_size=16,
                                   iters=60, extra={"act_iters": 5})
    artifact = calibrate(model, settings, progress=False)
    graph = build_onnx(model, artifact, "tensorrt")
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    # the output-channel axis of each weight DequantizeLinear (MatMul weights are stored [in, out])
    axes = {n.input[0]: next((a.i for a in n.attribute if a.name == "axis"), 1)
            for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    flipped = 0
    for name in artifact.layers:
        weight = model.unet.get_submodule(name).weight.detach()
        matches = [q for w, q in frozen if w.shape == weight.shape and torch.equal(w, weight)]
        assert len(matches) == 1, name
        q = matches[0]
        assert torch.equal(artifact.layer_tensor(name, "weight_int"), q), name
        if f"{name}.weight_int" in inits:
            onnx_q = inits[f"{name}.weight_int"]
            onnx_q = onnx_q.T if axes[f"{name}.weight_int"] == 1 else onnx_q
        else:  # qdiff's split skip input: two convolutions over the input-channel halves
            onnx_q = np.concatenate([inits[f"{name}.weight_int_a"], inits[f"{name}.weight_int_b"]], axis=1)
        assert np.array_equal(onnx_q, q.numpy()), name
        scale = grids.channel_view(artifact.layer_tensor(name, "weight_scale"), weight)
        flipped += int((torch.clamp(torch.round(weight / scale), -8, 7) != q.float()).sum())
    assert flipped > 0
    onnx.checker.check_model(graph)


def test_regulariser_shares_the_forward_h_and_matches_a_fresh_one():
    """The regulariser reuses h(V) of the iteration's soft forward: same value and gradient as
    computing it afresh, and an h from a no-grad pass is never used for a loss with gradients."""
    torch.manual_seed(0)
    weight, scale = torch.randn(8, 4), torch.full((8, 1), 0.1)
    shared, fresh = AdaRound(weight, scale, -8, 7), AdaRound(weight, scale, -8, 7)
    loss_shared = shared(weight, scale).sum() + shared.regularizer(5.0)
    soft = fresh(weight, scale)
    fresh._last_h = None  # force a fresh h(V) in the regulariser
    loss_fresh = soft.sum() + fresh.regularizer(5.0)
    loss_shared.backward()
    loss_fresh.backward()
    assert torch.allclose(loss_shared, loss_fresh)
    assert torch.allclose(shared.alpha.grad, fresh.alpha.grad, atol=1e-6)
    with torch.no_grad():
        shared(weight, scale)
    shared.alpha.grad = None
    shared.regularizer(5.0).backward()
    assert shared.alpha.grad is not None and float(shared.alpha.grad.abs().sum()) > 0
