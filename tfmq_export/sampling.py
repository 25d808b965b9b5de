"""The one DDIM sampling loop, shared by every backend, calibration-data collection and bench.

diffusers' DDIMScheduler does the math (formula (12) of the DDIM paper); the loop only feeds it
a denoiser ``(sample, step_index, encoder_hidden_states) -> noise_pred``, where ``step_index``
is the row of the temporal table. The table's rows are the scheduler's timesteps in order, so
``timesteps[step_index]`` is the timestep value the UNet would have seen.

Callers adapt what they run to a denoiser: ``backends.base.runner_denoiser`` for a runner,
a table UNet called directly, or the diffusers UNet with ``timesteps[step_index]``
(``models.digits.sample_digits``). This module stays in the core layer: it imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tfmq_export.errors import TfmqError

__all__ = [
    "Denoiser", "SamplingSpec", "cycle_conditions", "ddim_sample", "generate", "initial_noise", "make_scheduler",
    "sample_images", "sampler_timesteps",
]

#: (sample, step_index, encoder_hidden_states or None) -> noise prediction, all torch tensors.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_scheduler(scheduler_config: dict[str, Any], num_steps: int):
    """A DDIMScheduler from a (DDPM or DDIM) config, set to ``num_steps`` inference steps."""
    from diffusers import DDIMScheduler

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = DDIMScheduler.from_config(config)
    train_steps = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= train_steps:
        raise TfmqError(f"--steps {num_steps} must be between 1 and the model's {train_steps} training timesteps")
    scheduler.set_timesteps(num_steps)
    return scheduler


def sampler_timesteps(scheduler_config: dict[str, Any], num_steps: int) -> list[int]:
    """The timestep value of each table row (row 0 = the first, noisiest step)."""
    return [int(t) for t in make_scheduler(scheduler_config, num_steps).timesteps]


def initial_noise(num_images: int, sample_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x_T for ``num_images`` images: the same seed gives the same noise on every backend."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((num_images, *sample_shape), generator=generator)


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    scheduler_config: dict[str, Any],
    num_steps: int,
    latents: torch.Tensor,
    conditions: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run DDIM from ``latents`` and return x_0 (eta 0: deterministic, as every backend samples).

    ``on_step(step_index, x_t, conditions)`` sees the input of every UNet call: calibration
    uses it to keep every step of the trajectory in one pass. ``eta`` > 0 adds DDIM's noise,
    drawn from ``generator``.
    """
    scheduler = make_scheduler(scheduler_config, num_steps)
    x = latents.clone()
    batch = x.shape[0]
    for i, t in enumerate(scheduler.timesteps):
        step_index = torch.full((batch,), i, dtype=torch.int64)
        if on_step is not None:
            on_step(i, x, conditions)
        noise = denoise(x, step_index, conditions)
        x = scheduler.step(noise, t, x, eta=eta, generator=generator).prev_sample
    return x


def sample_images(
    denoise: Denoiser,
    scheduler_config: dict[str, Any],
    num_steps: int,
    num_images: int,
    sample_shape: tuple[int, ...],
    seed: int,
    batch_size: int = 250,
    conditions: torch.Tensor | None = None,
    progress: bool = True,
    desc: str = "sampling",
) -> np.ndarray:
    """Sample ``num_images`` in batches with fixed noise; returns float32 [N, C, H, W]."""
    latents = initial_noise(num_images, sample_shape, seed)
    out = []
    for start in tqdm(range(0, num_images, batch_size), desc=desc, disable=not progress, leave=False):
        chunk = latents[start : start + batch_size]
        cond = None if conditions is None else cycle_conditions(conditions, start, chunk.shape[0])
        out.append(ddim_sample(denoise, scheduler_config, num_steps, chunk, cond).numpy())
    return np.concatenate(out).astype(np.float32)


def cycle_conditions(conditions: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Conditions for images start..start+count, reusing the given ones cyclically."""
    index = torch.arange(start, start + count) % conditions.shape[0]
    return conditions[index]


@dataclass(frozen=True)
class SamplingSpec:
    """What sampling an exported (table) UNet needs: the timestep of each table row, the DDIM
    schedule it came from, the latent shape, and whether the UNet takes text conditions."""

    timesteps: Sequence[int]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...]
    conditional: bool = False


def generate(denoise: Denoiser, spec: SamplingSpec, num_images: int, seed: int, batch_size: int,
             progress: bool = True, desc: str = "sampling") -> np.ndarray:
    """Sample ``num_images`` unconditional images through ``denoise`` (float32 [N, C, H, W]).

    Refuses a table that does not match its own DDIM schedule: the rows would be gathered for
    the wrong timesteps, and the images would look plausible but be wrong.
    """
    if spec.conditional:
        raise TfmqError("sampling a conditional UNet needs text conditions, which `sample` does not take yet")
    steps = len(spec.timesteps)
    if sampler_timesteps(spec.scheduler_config, steps) != [int(t) for t in spec.timesteps]:
        raise TfmqError("the model's temporal table does not match its DDIM schedule; re-export it")
    return sample_images(denoise, spec.scheduler_config, steps, num_images, tuple(spec.sample_shape), seed,
                         batch_size, progress=progress, desc=desc)
