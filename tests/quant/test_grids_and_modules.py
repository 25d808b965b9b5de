"""Quantizers: integer grids, clamping, rounding like ONNX, per-step statistics, MSE scale search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfmq_export.quant import grids
from tfmq_export.quant.modules import ActMode, ActQuantizer, QuantConv2d, WeightQuantizer
from tfmq_export.quant.steps import observing_steps


def test_weight_grid_ranges():
    assert grids.weight_range(8) == (-127, 127)
    assert grids.weight_range(4) == (-8, 7)
    assert grids.act_range(8) == (-128, 127)
    with pytest.raises(ValueError):
        grids.weight_range(3)


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0])
    q = grids.quantize(x, torch.tensor(1.0), -128, 127)
    assert q.tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]


def test_fake_quantize_lands_on_grid_and_ste_is_exact():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    scale = torch.tensor(0.05)
    y = grids.fake_quantize(x, scale, -128, 127)
    assert torch.allclose(y / scale, torch.round(y / scale), atol=1e-4)
    x_grad = x.clone().requires_grad_(True)
    y_grad = grids.fake_quantize(x_grad, scale, -128, 127)
    assert torch.equal(y_grad.detach(), y)  # the straight-through form gives the same values
    y_grad.sum().backward()
    inside = ((x / scale >= -128) & (x / scale <= 127)).float()  # the clamp is at -128 and 127
    assert torch.equal(x_grad.grad, inside)


def test_weight_quantizer_round_trip_and_frozen_integers():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    wq = WeightQuantizer(4, 8)
    wq.set_scale(grids.mse_weight_scale(w, 4))
    ints = wq.integer_weight(w)
    assert ints.dtype == torch.int8 and ints.min() >= -8 and ints.max() <= 7
    deq = wq(w)
    assert torch.allclose(deq, ints.float() * wq.scale.view(-1, 1, 1, 1))
    shifted = torch.clamp(ints + 1, -8, 7)
    wq.freeze_integers(shifted)
    assert torch.equal(wq.integer_weight(w), shifted.to(torch.int8))
    with pytest.raises(ValueError):
        wq.freeze_integers(torch.full_like(ints, 9))
    with pytest.raises(ValueError):
        wq.set_scale(torch.ones(3))


def test_mse_scale_never_wider_than_max_and_lowers_error():
    torch.manual_seed(1)
    w = torch.randn(16, 64) * torch.linspace(0.1, 2, 16)[:, None]
    max_scale = grids.absmax_scale(w.abs().amax(dim=1), 7)
    mse_scale = grids.mse_weight_scale(w, 4)
    assert torch.all(mse_scale <= max_scale + 1e-7)
    assert (mse_scale < max_scale).sum() >= 8  # gaussian channels: clipping the tails pays off

    def err(s):
        return ((w - grids.quantize(w, s[:, None], -8, 7) * s[:, None]).abs() ** 2.4).sum()

    assert err(mse_scale) <= err(max_scale)


def test_act_quantizer_per_step_statistics():
    aq = ActQuantizer(8, num_steps=4)
    aq.mode = ActMode.OBSERVING
    x = torch.zeros(3, 2, 5)
    x[0] += 1.0
    x[1] -= 2.0
    x[2, 0, 0] = 7.0
    with observing_steps(torch.tensor([0, 2, 2])):
        out = aq(x)
    assert torch.equal(out, x)  # observing passes values through
    absmax = aq.step_absmax()
    assert absmax.shape == (4,)
    assert absmax[0] == 1.0 and absmax[2] == 7.0
    assert torch.isnan(absmax[1]) and torch.isnan(absmax[3])


def test_quant_conv_matches_manual_qdq():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    qconv = QuantConv2d(conv, wbits=8, abits=8, num_steps=1)
    qconv.weight_quantizer.set_scale(grids.absmax_scale(conv.weight.abs().amax(dim=(1, 2, 3)), 127))
    qconv.input_quantizer.set_scale(0.02)
    qconv.input_quantizer.mode = ActMode.QUANTIZING
    x = torch.randn(2, 3, 6, 6)
    x_q = torch.clamp(torch.round(x / 0.02), -128, 127) * 0.02
    w_q = torch.round(conv.weight / qconv.weight_quantizer.scale.view(-1, 1, 1, 1)) * qconv.weight_quantizer.scale.view(
        -1, 1, 1, 1
    )
    expected = torch.nn.functional.conv2d(x_q, w_q, conv.bias, padding=1)
    with torch.no_grad():
        assert np.allclose(qconv(x).numpy(), expected.detach().numpy(), atol=1e-6)
