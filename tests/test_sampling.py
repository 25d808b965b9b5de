"""The one DDIM loop (``sampling.py``) on a toy denoiser: no UNet needed."""

from __future__ import annotations

import pytest
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.sampling import SamplingSpec, ddim_sample, generate, initial_noise, sampler_timesteps

CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear", "clip_sample": False}


def toy(x: torch.Tensor, step_index: torch.Tensor, _cond: torch.Tensor | None) -> torch.Tensor:
    return 0.1 * x + 0.01 * step_index.view(-1, 1, 1, 1)


def test_generate_refuses_a_conditional_unet_and_a_foreign_table():
    steps = sampler_timesteps(CONFIG, 4)
    with pytest.raises(TfmqError, match="conditional"):
        generate(toy, SamplingSpec(steps, CONFIG, (1, 4, 4), conditional=True), 2, 0, 2, progress=False)
    with pytest.raises(TfmqError, match="timestep 750 has no row in the table of the model; re-export with "
                                        "--timesteps all"):
        generate(toy, SamplingSpec([t + 1 for t in steps], CONFIG, (1, 4, 4)), 2, 0, 2, progress=False)


def test_generate_is_batch_size_independent():
    spec = SamplingSpec(sampler_timesteps(CONFIG, 4), CONFIG, (1, 4, 4))
    whole = generate(toy, spec, 5, 3, 5, progress=False)
    assert whole.shape == (5, 1, 4, 4)
    assert (generate(toy, spec, 5, 3, 2, progress=False) == whole).all()


def test_eta_draws_from_the_generator_and_eta_zero_is_deterministic():
    latents = initial_noise(2, (1, 4, 4), 0)
    plain = ddim_sample(toy, CONFIG, 4, latents)
    assert torch.equal(plain, ddim_sample(toy, CONFIG, 4, latents, generator=torch.Generator().manual_seed(9)))
    noisy = [ddim_sample(toy, CONFIG, 4, latents, eta=1.0, generator=torch.Generator().manual_seed(9))
             for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], plain)
