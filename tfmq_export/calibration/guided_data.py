"""Calibration data of a text-to-image pipeline: both guidance halves at every step, one pass.

The full-precision UNet samples with classifier-free guidance (``models.guidance.guided_sample``,
diffusers' loop) from the prompts' conditions; every UNet call's input is kept: the
unconditional and the conditional half, with their ``encoder_hidden_states``, so the quantizers
see what the deployed UNet sees. Trajectory ``j`` takes prompt ``j mod P``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from tfmq_export.calibration.data import CalibrationData, device_denoiser
from tfmq_export.contract import INPUT_CONDITIONS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS
from tfmq_export.models.guidance import GuidedConditions, GuidedDenoiser, guided_sample, scheduler_rows
from tfmq_export.sampling import initial_noise, make_scheduler
from tfmq_export.temporal import pack_added_conditions

__all__ = ["collect_guided_data", "guidance_pairs", "guided_calibration_data"]


def collect_guided_data(
    denoise: GuidedDenoiser,
    new_scheduler: Callable[[], Any],
    timesteps: Sequence[int],
    sample_shape: tuple[int, ...],
    conditions: GuidedConditions,
    num_samples: int,
    seed: int,
    batch_size: int = 64,
    progress: bool = True,
) -> CalibrationData:
    """``num_samples`` guided trajectories (``batch_size`` at a time); returns every UNet input.

    ``new_scheduler()`` gives a fresh scheduler set to its steps (a multistep scheduler keeps
    state between calls); ``timesteps`` are the table's rows, each call's timestep maps to its row.
    """
    latents = initial_noise(num_samples, sample_shape, seed)
    xs: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    conds: list[torch.Tensor] = []

    def keep(row: int, x: torch.Tensor, feed: dict[str, torch.Tensor]) -> None:
        xs.append(x.clone())
        rows.append(torch.full((x.shape[0],), row, dtype=torch.int64))
        if INPUT_TEXT_EMBEDS in feed:  # SDXL: one condition tensor per sample, unpacked by the table UNet
            conds.append(pack_added_conditions(feed[INPUT_CONDITIONS], feed[INPUT_TEXT_EMBEDS], feed[INPUT_TIME_IDS]))
        else:
            conds.append(feed[INPUT_CONDITIONS])

    for start in tqdm(range(0, num_samples, batch_size), desc="calibration data (guided)", disable=not progress,
                      leave=False):
        chunk = latents[start : start + batch_size]
        scheduler = new_scheduler()
        row_of = scheduler_rows(timesteps, scheduler)
        guided_sample(denoise, scheduler, chunk, conditions.cycled(start, chunk.shape[0]), row_of, keep)
    pair_id, cond_half = guidance_pairs([x.shape[0] for x in xs], conditions.do_cfg)
    return CalibrationData(torch.cat(xs), torch.cat(rows), torch.cat(conds), list(timesteps), pair_id, cond_half)


def guidance_pairs(call_sizes: Sequence[int], do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair_id, cond_half) of the inputs kept from UNet calls of ``call_sizes``: with guidance each call
    is [unconditional; conditional] halves of the same latents (guided_sample's order), and both halves
    of one latent share an id, numbered across calls; without guidance every input is unpaired (-1)."""
    total = sum(call_sizes)
    if not do_cfg:
        return torch.full((total,), -1, dtype=torch.int64), torch.ones(total, dtype=torch.bool)
    ids, halves, first = [], [], 0
    for size in call_sizes:
        half = size // 2
        ids.append(torch.arange(first, first + half).repeat(2))
        halves.append(torch.arange(size) >= half)
        first += half
    return torch.cat(ids), torch.cat(halves)


def guided_calibration_data(fp_sim: Any, model: Any, timesteps: Sequence[int], settings: Any,
                            progress: bool = True) -> CalibrationData:
    """``collect_guided_data`` for a ``LoadedModel`` with ``guided`` conditions, through the
    full-precision table UNet ``fp_sim`` and the calibration's scheduler (``settings.scheduler``; None:
    the folder's own, ``sampling.make_scheduler``)."""

    def denoise(x: torch.Tensor, rows: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return fp_sim(x, rows, feed[INPUT_CONDITIONS], feed.get(INPUT_TEXT_EMBEDS), feed.get(INPUT_TIME_IDS))

    return collect_guided_data(
        device_denoiser(fp_sim, denoise),
        lambda: make_scheduler(settings.scheduler, model.scheduler_config, settings.steps), timesteps,
        model.sample_shape,
        model.guided, settings.num_samples, settings.seed, settings.batch_size, progress,
    )
