"""The one sampling loop, shared by every backend, calibration-data collection and bench.

A diffusers scheduler does the math (DDIM, PNDM/PLMS, Euler, DPM-Solver++: ``SCHEDULERS``); the
loop only feeds it a denoiser ``(sample, step_index, encoder_hidden_states) -> noise_pred``, where
``step_index`` is the row of the temporal table. A table built for the sampler (``--timesteps
sampler``) has one row per scheduler call, in order; a table with a row per training timestep
(``--timesteps all``) serves any step count of an integer-timestep scheduler. ``timestep_rows``
maps each scheduler timestep to its row by value and stops with one line where a timestep has
none, so an engine is never fed the row of another timestep.

Callers adapt what they run to a denoiser: ``backends.base.runner_denoiser`` for a runner,
a table UNet called directly, or the diffusers UNet with ``timesteps[step_index]``
(``models.digits.sample_digits``). This module stays in the core layer: it imports no backend.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from tfmq_export.config import SCHEDULER_NAMES
from tfmq_export.distributed import all_gather_objects, is_writer, my_share, world_size
from tfmq_export.errors import TfmqError

__all__ = [
    "SCHEDULERS", "Denoiser", "SamplingSpec", "check_schedule", "cycle_conditions", "ddim_sample", "generate",
    "initial_noise", "make_scheduler", "resolve_scheduler_name", "sample_images", "sampler_timesteps",
    "scheduler_sample", "timestep_rows", "timestep_value",
]

#: (sample, step_index, encoder_hidden_states or None) -> noise prediction, all torch tensors.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

#: ``--scheduler`` name -> diffusers class name; the one table (names: ``contract.SCHEDULER_NAMES``).
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
}


def resolve_scheduler_name(name: str | None, scheduler_config: dict[str, Any]) -> str:
    """``name``, checked; None = the config's own class when we support it, else DDIM (a DDPM
    config, as the bundled digits model ships, samples with DDIM as it always has)."""
    if name is None:
        own = scheduler_config.get("_class_name")
        return next((key for key, cls in SCHEDULERS.items() if cls == own), "ddim")
    if name not in SCHEDULER_NAMES or name not in SCHEDULERS:
        raise TfmqError(f"--scheduler {name!r} is not supported (choose from {', '.join(SCHEDULER_NAMES)})")
    return name


def make_scheduler(name: str | None, scheduler_config: dict[str, Any], num_steps: int):
    """A diffusers scheduler of kind ``name`` (``ddim|pndm|euler|dpm++``; None: see
    ``resolve_scheduler_name``) built ``from_config`` of the model's scheduler config, set to
    ``num_steps`` inference steps."""
    import diffusers

    resolved = resolve_scheduler_name(name, scheduler_config)
    cls = getattr(diffusers, SCHEDULERS[resolved])
    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    scheduler = cls.from_config(config)
    train_steps = scheduler.config.num_train_timesteps
    if not 1 <= num_steps <= train_steps:
        raise TfmqError(f"--steps {num_steps} must be between 1 and the model's {train_steps} training timesteps")
    order = int(getattr(scheduler, "pndm_order", 0))
    if resolved == "pndm" and not scheduler.config.skip_prk_steps and num_steps < order:
        # diffusers' set_timesteps fails with a numpy broadcast error there
        raise TfmqError(f"--scheduler pndm with --steps {num_steps}: PNDM's Runge-Kutta warm-up (skip_prk_steps false "
                        f"in the scheduler config) needs at least {order} steps")
    scheduler.set_timesteps(num_steps)
    return scheduler


def timestep_value(t: Any) -> int | float:
    """A timestep as JSON keeps it: an int when whole (DDIM, PNDM), else a float (Euler, karras)."""
    value = float(t)
    return int(value) if value.is_integer() else value


def sampler_timesteps(scheduler_config: dict[str, Any], num_steps: int, scheduler: str | None = None) -> list:
    """The timestep of each scheduler call, in order (row i of a sampler table = call i)."""
    return [timestep_value(t) for t in make_scheduler(scheduler, scheduler_config, num_steps).timesteps]


def timestep_rows(table_timesteps: Sequence[float], scheduler_timesteps: Sequence[Any],
                  source: str = "the model") -> list[int]:
    """The table row of every scheduler timestep (call i -> row), refusing a timestep with no row.

    A table equal to the schedule keeps row i for call i (PNDM repeats a timestep, and its rows
    stay one per call); otherwise rows are found by timestep value.
    """
    wanted = [timestep_value(t) for t in scheduler_timesteps]
    table = [timestep_value(t) for t in table_timesteps]
    if wanted == table:
        return list(range(len(table)))
    row_of: dict[float, int] = {}
    for row, t in enumerate(table):
        row_of.setdefault(round(float(t), 4), row)
    rows = []
    for t in wanted:
        row = row_of.get(round(float(t), 4))
        if row is None:
            hint = ("re-export with --timesteps sampler for this scheduler" if isinstance(t, float)
                    else "re-export with --timesteps all, or sample with the schedule it was exported for")
            raise TfmqError(f"timestep {t:g} has no row in the table of {source}; {hint}")
        rows.append(row)
    return rows


def initial_noise(num_images: int, sample_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x_T for ``num_images`` images: the same seed gives the same noise on every backend."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((num_images, *sample_shape), generator=generator)


@torch.no_grad()
def scheduler_sample(
    denoise: Denoiser,
    scheduler: Any,
    latents: torch.Tensor,
    conditions: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
    *,
    rows: Sequence[int] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run a set-up diffusers ``scheduler`` from ``latents`` (x_T) and return x_0.

    Call i feeds the denoiser ``scheduler.scale_model_input(x, t_i)`` at table row ``rows[i]``
    (default: row i, a sampler table). ``on_step(row, model_input, conditions)`` sees the input of
    every UNet call and its table row: calibration keeps every step of the trajectory in one pass. ``eta`` is
    DDIM's noise, drawn from ``generator`` (as are the stochastic schedulers' draws).
    """
    timesteps = scheduler.timesteps
    rows = list(range(len(timesteps))) if rows is None else list(rows)
    sigma = scheduler.init_noise_sigma
    x = latents.clone() if float(sigma) == 1.0 else latents * sigma
    kwargs: dict[str, Any] = {}
    accepts = inspect.signature(scheduler.step).parameters
    if "eta" in accepts:
        kwargs["eta"] = eta
    if "generator" in accepts:
        kwargs["generator"] = generator
    batch = x.shape[0]
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(x, t)
        step_index = torch.full((batch,), rows[i], dtype=torch.int64)
        if on_step is not None:
            on_step(rows[i], model_input, conditions)
        noise = denoise(model_input, step_index, conditions)
        x = scheduler.step(noise, t, x, **kwargs).prev_sample
    return x


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
    scheduler: str | None = None,
    table_timesteps: Sequence[float] | None = None,
) -> torch.Tensor:
    """Sample ``num_steps`` steps of ``scheduler`` (None: the config's own, DDIM for a DDPM config)
    from ``latents``; ``table_timesteps`` (a table's ``tfmq.timesteps``) maps calls to rows."""
    made = make_scheduler(scheduler, scheduler_config, num_steps)
    rows = None if table_timesteps is None else timestep_rows(table_timesteps, made.timesteps)
    return scheduler_sample(denoise, made, latents, conditions, on_step, rows=rows, eta=eta, generator=generator)


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
    *,
    scheduler: str | None = None,
    table_timesteps: Sequence[float] | None = None,
) -> np.ndarray:
    """Sample ``num_images`` in batches with fixed noise; returns float32 [N, C, H, W].

    ``scheduler`` and ``table_timesteps`` as in ``ddim_sample`` (the rows are mapped once, before
    the first batch, so a missing row stops before any work). Under several ranks
    (``tfmq_export.distributed``) each samples its share of the batches and every rank returns
    all the images, equal to a one-process run's."""
    if table_timesteps is not None:
        timestep_rows(table_timesteps, make_scheduler(scheduler, scheduler_config, num_steps).timesteps)
    latents = initial_noise(num_images, sample_shape, seed)  # every image's noise, whichever rank samples it
    starts = list(range(0, num_images, batch_size))
    out: dict[int, np.ndarray] = {}
    # several ranks (torchrun): the batches are dealt round robin and gathered, each batch with the
    # same images as in one process, so the images are the same
    for start in tqdm(my_share(starts), desc=desc, disable=not progress or not is_writer(), leave=False):
        chunk = latents[start : start + batch_size]
        cond = None if conditions is None else cycle_conditions(conditions, start, chunk.shape[0])
        out[start] = ddim_sample(denoise, scheduler_config, num_steps, chunk, cond, scheduler=scheduler,
                                 table_timesteps=table_timesteps).numpy()
    for part in all_gather_objects(out) if world_size() > 1 else []:
        out.update(part)
    return np.concatenate([out[start] for start in starts]).astype(np.float32)


def cycle_conditions(conditions: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """Conditions for images start..start+count, reusing the given ones cyclically."""
    index = torch.arange(start, start + count) % conditions.shape[0]
    return conditions[index]


@dataclass(frozen=True)
class SamplingSpec:
    """What sampling an exported (table) UNet needs: the timestep of each table row, the
    scheduler config it came from, the latent shape, whether the UNet takes text conditions,
    and the schedule to run (``scheduler`` name, ``num_steps``; None: the recorded or default
    one). ``source`` names the table in the one-line refusal of a missing row."""

    timesteps: Sequence[float]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...]
    conditional: bool = False
    scheduler: str | None = None
    num_steps: int | None = None
    source: str = "the model"


def check_schedule(spec: SamplingSpec) -> list[int]:
    """The table row of every call of ``spec``'s schedule; one line when a timestep has no row."""
    steps = spec.num_steps or len(spec.timesteps)
    scheduler = make_scheduler(spec.scheduler, spec.scheduler_config, steps)
    return timestep_rows(spec.timesteps, scheduler.timesteps, spec.source)


def generate(denoise: Denoiser, spec: SamplingSpec, num_images: int, seed: int, batch_size: int,
             progress: bool = True, desc: str = "sampling") -> np.ndarray:
    """Sample ``num_images`` unconditional images through ``denoise`` (float32 [N, C, H, W]).

    Every scheduler timestep must have its row in the table (``timestep_rows``): otherwise the
    rows would be gathered for the wrong timesteps, and the images would look plausible but be
    wrong. Without ``num_steps`` a sampler table runs its own length.
    """
    if spec.conditional:
        raise TfmqError("sampling a conditional UNet needs text conditions, which `sample` does not take yet")
    check_schedule(spec)
    steps = spec.num_steps or len(spec.timesteps)
    return sample_images(denoise, spec.scheduler_config, steps, num_images, tuple(spec.sample_shape), seed,
                         batch_size, progress=progress, desc=desc, scheduler=spec.scheduler,
                         table_timesteps=spec.timesteps)
