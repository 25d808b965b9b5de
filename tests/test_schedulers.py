"""Sampler-portable tables on a toy denoiser: scheduler choice, row mapping, DDIM unchanged."""

from __future__ import annotations

import pytest
import torch

from tfmq_export.config import CalibrationSettings, settings_from
from tfmq_export.errors import TfmqError
from tfmq_export.sampling import (
    SCHEDULERS,
    ddim_sample,
    initial_noise,
    make_scheduler,
    resolve_scheduler_name,
    sampler_timesteps,
    timestep_rows,
)

CONFIG = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
          "clip_sample": False, "timestep_spacing": "leading"}
ALL_ROWS = list(range(1000))


def toy_at(timesteps):
    """A denoiser that depends on the timestep of its table row (as a table UNet does)."""
    values = torch.tensor([float(t) for t in timesteps])

    def denoise(x: torch.Tensor, step_index: torch.Tensor, _cond: torch.Tensor | None) -> torch.Tensor:
        t = values[step_index].view(-1, 1, 1, 1)
        return 0.1 * x + 1e-4 * t

    return denoise


def test_names_map_to_their_diffusers_classes_and_none_is_the_models_own():
    from tfmq_export.config import SCHEDULER_NAMES

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES  # the settings' choices and the class table agree
    for name, cls in SCHEDULERS.items():
        assert type(make_scheduler(name, CONFIG, 5)).__name__ == cls
    assert resolve_scheduler_name(None, CONFIG) == "ddim"  # a DDPM config samples with DDIM, as always
    assert resolve_scheduler_name(None, {**CONFIG, "_class_name": "PNDMScheduler"}) == "pndm"
    with pytest.raises(TfmqError, match=r"^--scheduler 'heun' is not supported \(choose from ddim, pndm, euler"):
        make_scheduler("heun", CONFIG, 5)


def test_ddim_is_bit_identical_to_the_plain_diffusers_loop():
    """The generic loop adds scale_model_input and init_noise_sigma: for DDIM both are identities."""
    from diffusers import DDIMScheduler

    latents = initial_noise(3, (1, 4, 4), 7)
    denoise = toy_at(sampler_timesteps(CONFIG, 8))
    scheduler = DDIMScheduler.from_config({k: v for k, v in CONFIG.items() if not k.startswith("_")})
    scheduler.set_timesteps(8)
    x = latents.clone()
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(denoise(x, torch.full((3,), i), None), t, x, eta=0.0).prev_sample
    assert torch.equal(ddim_sample(denoise, CONFIG, 8, latents), x)
    assert torch.equal(ddim_sample(toy_at(ALL_ROWS), CONFIG, 8, latents, scheduler="ddim", table_timesteps=ALL_ROWS), x)


@pytest.mark.parametrize("name", ["ddim", "pndm", "euler", "dpm++"])
@pytest.mark.parametrize("steps", [10, 25])
def test_an_all_rows_table_runs_every_integer_schedule_as_its_own_table(name, steps):
    latents = initial_noise(2, (1, 4, 4), 1)
    own = sampler_timesteps(CONFIG, steps, name)
    assert all(isinstance(t, int) for t in own)  # "leading" spacing: integer timesteps for all four
    mine = ddim_sample(toy_at(own), CONFIG, steps, latents, scheduler=name)
    shared = ddim_sample(toy_at(ALL_ROWS), CONFIG, steps, latents, scheduler=name, table_timesteps=ALL_ROWS)
    assert torch.isfinite(mine).all()
    assert torch.equal(mine, shared)


def test_row_mapping_by_value_and_its_refusals():
    assert timestep_rows([900, 850, 850, 800], [900, 850, 850, 800]) == [0, 1, 2, 3]  # PNDM's repeat: call order
    assert timestep_rows(ALL_ROWS, torch.tensor([999, 500, 0])) == [999, 500, 0]
    assert timestep_rows([947.5, 3.25], torch.tensor([947.5, 3.25])) == [0, 1]
    with pytest.raises(TfmqError, match=r"^timestep 981\.5 has no row in the table of x\.onnx; re-export with "
                                        r"--timesteps sampler for this scheduler$"):
        timestep_rows(ALL_ROWS, [981.5], "x.onnx")
    with pytest.raises(TfmqError, match=r"^timestep 960 has no row in the table of x\.onnx; re-export with "
                                        r"--timesteps all"):
        timestep_rows(sampler_timesteps(CONFIG, 10), sampler_timesteps(CONFIG, 25), "x.onnx")


def test_fractional_schedules_keep_float_timesteps():
    karras = {**CONFIG, "use_karras_sigmas": True}
    values = sampler_timesteps(karras, 10, "euler")
    assert any(isinstance(t, float) for t in values) and isinstance(values[0], int)
    with pytest.raises(TfmqError, match="--timesteps sampler for this scheduler"):
        timestep_rows(ALL_ROWS, values)


def test_scheduler_setting_is_strict():
    assert CalibrationSettings(scheduler="euler").record()["scheduler"] == "euler"
    assert "scheduler" not in CalibrationSettings().record()
    for bad in ("heun", "DDIM", 3):
        with pytest.raises(TfmqError, match=r"scheduler .* is not supported \(choose from ddim, pndm, euler, dpm"):
            CalibrationSettings(scheduler=bad)
    with pytest.raises(TfmqError, match="calibration settings: scheduler 'lms'"):
        settings_from({}, {"scheduler": "lms"})
