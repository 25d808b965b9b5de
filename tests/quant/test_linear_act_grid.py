"""The Linear inputs' activation grid (``extra.linear_act_grid``): [-127, 128] next to the int8 [-128, 127]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tfmq_export.calibration.activations import mse_static_scale, static_scale
from tfmq_export.config import ExtraOptions
from tfmq_export.errors import TfmqError
from tfmq_export.quant import grids
from tfmq_export.quant.modules import (
    ActMode,
    ActQuantizer,
    PerStepActQuantizer,
    StepFactorActQuantizer,
    install_step_factor_quantizers,
    make_quant_layer,
    swap_input_quantizer,
)
from tfmq_export.quant.steps import observing_steps


def test_grids_and_their_scale_divisor():
    assert grids.act_range(8, "int8") == (-128, 127) == grids.act_range(8)
    assert grids.act_range(8, "uint8-127") == (-127, 128)
    # absmax maps onto the symmetric part of either grid: both divide by 127
    assert grids.symmetric_qmax((-128, 127)) == grids.symmetric_qmax((-127, 128)) == 127
    with pytest.raises(grids.QuantizerError, match="activation grid 'uint8' is not supported"):
        grids.act_range(8, "uint8")
    with pytest.raises(grids.QuantizerError):
        ActQuantizer(8, 2, "int4")


def test_plus_128_steps_survives_only_on_the_shifted_grid():
    s = 0.25
    x = torch.tensor([128 * s, -128 * s, 127.4 * s, -127.4 * s, 3 * s])
    out = {}
    for grid in ("int8", "uint8-127"):
        aq = ActQuantizer(8, 1, grid)
        aq.set_scale(s)
        aq.mode = ActMode.QUANTIZING
        out[grid] = (aq(x) / s).tolist()
    assert out["int8"] == [127, -128, 127, -127, 3]  # +128 s clamps to 127 s
    assert out["uint8-127"] == [128, -127, 127, -127, 3]  # +128 s survives, -128 s clamps to -127 s


def test_scales_from_ranges_are_absmax_over_127_on_both_grids():
    x = torch.tensor([[-3.0, 2.0], [1.0, 5.08]])
    scales = {}
    for grid in ("int8", "uint8-127"):
        aq = ActQuantizer(8, 2, grid)
        aq.mode = ActMode.OBSERVING
        with observing_steps(torch.tensor([0, 1])):
            aq(x)
        scales[grid] = float(static_scale(aq))
        per_step = PerStepActQuantizer(8, 2, grid)
        per_step.load_state_dict(aq.state_dict())
        assert torch.allclose(per_step.step_scales(), torch.tensor([3.0, 5.08]) / 127)
    assert scales["int8"] == scales["uint8-127"] == pytest.approx(5.08 / 127)
    # the mse rule's candidates start at absmax / 127 on both grids too (absmax / 128 would also be exact
    # for values at +absmax on the shifted grid, and would clip -absmax)
    hist = torch.zeros(1, 4096, dtype=torch.float64)
    hist[0, -1] = 100.0
    for qrange in ((-128, 127), (-127, 128)):
        assert float(mse_static_scale(hist, 1.0, qrange)) == pytest.approx(1.0 / 127)


def test_only_linear_layers_take_the_grid_and_swaps_keep_it():
    linear = make_quant_layer(nn.Linear(4, 3), 8, 8, 2, "uint8-127")
    conv = make_quant_layer(nn.Conv2d(2, 3, 1), 8, 8, 2, "uint8-127")
    assert linear.input_quantizer.qrange == (-127, 128)
    assert conv.input_quantizer.qrange == (-128, 127)  # convolutions stay int8 (OpenVINO runs them u8 anyway)
    assert "grid=uint8-127" in repr(linear.input_quantizer)
    installed = install_step_factor_quantizers({"l": linear}, {"l.input_step_factor": torch.ones(2)})
    assert installed == ["l"] and linear.input_quantizer.grid == "uint8-127"
    with pytest.raises(grids.QuantizerError, match="cannot replace one on grid uint8-127"):
        swap_input_quantizer(linear, StepFactorActQuantizer(8, 2))


def test_the_option_is_checked_with_the_settings():
    assert ExtraOptions.parse(None).linear_act_grid == "int8"
    assert ExtraOptions.parse({"linear_act_grid": "uint8-127"}).linear_act_grid == "uint8-127"
    for bad in ("uint8", 127, None):
        with pytest.raises(TfmqError, match="calibration option linear_act_grid") as info:
            ExtraOptions.parse({"linear_act_grid": bad})
        assert "\n" not in str(info.value)
