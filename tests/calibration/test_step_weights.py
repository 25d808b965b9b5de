"""Per-step weights of the reconstruction loss: the sampler's gain of each step, checked against the
real diffusers DDIM step, and the loss and options that carry them."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from tfmq_export.calibration.adaround import lp_loss
from tfmq_export.calibration.reconstruction import ReconstructionOptions
from tfmq_export.calibration.step_weights import ddim_step_gains, step_loss_weights
from tfmq_export.config import CalibrationSettings, ExtraOptions
from tfmq_export.errors import TfmqError
from tfmq_export.sampling import sampler_timesteps

CONFIGS = {
    "cosine-epsilon": {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000,
                       "prediction_type": "epsilon"},
    "sd-like-leading": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                        "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
                        "timestep_spacing": "leading", "prediction_type": "epsilon"},
    # (leading spacing: with trailing, diffusers' DDIM steps to t - 1000 // steps, not to the next timestep)
    "linear-v": {"beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction"},
    "linear-sample": {"beta_schedule": "linear", "num_train_timesteps": 1000, "prediction_type": "sample"},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gains_are_the_derivative_of_the_diffusers_ddim_step(name):
    """|d x_prev / d output| of DDIMScheduler.step itself (eta 0), by central differences (without
    clip_sample, whose clipping of x0 the gains leave out)."""
    config = {**CONFIGS[name], "clip_sample": False}
    steps = 12
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    assert timesteps == sampler_timesteps(config, steps, "ddim")
    gains = ddim_step_gains(config, timesteps)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
    output = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
    delta = 1e-3
    for t, gain in zip(timesteps, gains, strict=True):
        up = scheduler.step(output + delta, t, sample).prev_sample
        down = scheduler.step(output - delta, t, sample).prev_sample
        measured = float(((up - down) / (2 * delta)).abs().mean())
        assert gain == pytest.approx(measured, rel=2e-3, abs=1e-6), (name, t)  # diffusers steps in float32


def test_the_first_steps_of_a_cosine_schedule_weigh_most_and_t0_least():
    config = CONFIGS["cosine-epsilon"]
    timesteps = sampler_timesteps(config, 25, "ddim")
    for power in (1.0, 2.0):
        weights = step_loss_weights(config, timesteps, power)
        assert len(weights) == 25 and sum(weights) / 25 == pytest.approx(1.0)
        assert weights[0] == max(weights) and weights[-1] == min(weights)
        assert weights[0] > 5 * weights[12]  # the gain falls about tenfold from the first step to the middle
    assert step_loss_weights(config, timesteps, 0.0) == ()


def test_weighted_loss_weighs_each_sample():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 2, 2, generator=gen), torch.randn(4, 3, 2, 2, generator=gen)
    per_sample = (pred - target).pow(2).reshape(4, -1).sum(dim=1)
    assert torch.allclose(lp_loss(pred, target, torch.ones(4)), lp_loss(pred, target))
    weights = torch.tensor([2.0, 0.0, 1.0, 1.0])
    assert torch.allclose(lp_loss(pred, target, weights), (2 * per_sample[0] + per_sample[2] + per_sample[3]) / 4)


def test_options_resolve_the_weights_from_the_models_sampler():
    config = CONFIGS["cosine-epsilon"]
    timesteps = sampler_timesteps(config, 10, "ddim")
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, iters=10, extra={"step_weighting": 2.0})
    options = ReconstructionOptions.from_settings(settings, config, timesteps)
    assert options.step_weights == step_loss_weights(config, timesteps, 2.0)
    with pytest.raises(TfmqError, match="scheduler config"):
        ReconstructionOptions.from_settings(settings)
    plain = CalibrationSettings(method="tfmq", wbits=4, abits=8, iters=10)
    assert ReconstructionOptions.from_settings(plain, config, timesteps).step_weights == ()


@pytest.mark.parametrize("extra", [{"step_weighting": -1.0}, {"adaround_warmup": 1.0}, {"adaround_reg": -0.1}])
def test_out_of_range_loss_options_are_refused(extra):
    with pytest.raises(TfmqError):
        ExtraOptions.parse(extra)


def test_regulariser_weight_and_warmup_reach_adaround():
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, iters=10,
                                   extra={"adaround_reg": 0.3, "adaround_warmup": 0.1})
    options = ReconstructionOptions.from_settings(settings)
    assert options.adaround.reg_weight == 0.3 and options.adaround.warmup == 0.1
    assert options.adaround_for(100).reg_weight == 0.3  # TIAR's own budget keeps them


def test_tfmq_defaults_apply_only_where_the_settings_say_nothing_and_only_to_tfmq():
    """``config.METHOD_DEFAULTS``: tfmq with no recipe gets static scales, regulariser 0.3 and the output
    correction; what ``extra`` sets wins; qdiff keeps the papers' values."""
    tfmq = CalibrationSettings(method="tfmq", wbits=4, abits=8).options
    assert (tfmq.joint_act, tfmq.adaround_reg, tfmq.output_correction) == (False, 0.3, "pixel")
    pinned = CalibrationSettings(method="tfmq", wbits=4, abits=8,
                                 extra={"adaround_reg": 0.01, "output_correction": "none"}).options
    assert (pinned.adaround_reg, pinned.output_correction) == (0.01, "none")
    qdiff = CalibrationSettings(method="qdiff", wbits=4, abits=8).options
    assert (qdiff.adaround_reg, qdiff.output_correction) == (0.01, "none")
    # at 4-bit weights tfmq also keeps the shortcut and downsample convs at 8-bit weights ...
    assert tfmq.w8_classes == ("shortcuts", "downsamplers")
    assert qdiff.w8_classes == ()
    # ... not at 8 bits, and a recipe's own list (even an empty one) wins
    assert CalibrationSettings(method="tfmq", wbits=8, abits=8).options.w8_classes == ()
    assert CalibrationSettings(method="tfmq", wbits=4, abits=8, extra={"w8_classes": []}).options.w8_classes == ()
