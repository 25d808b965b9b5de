"""Calibration data: (x_t, step index, condition) at every step of full-precision trajectories.

The full-precision sampler runs ONCE per batch of trajectories and every step's UNet input is
kept, so collecting T steps costs one sampling pass (the authors' released code re-samples for
each step, O(T^2)). Sizes are bounded by ``num_samples`` (trajectories) x ``num_steps``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from tfmq_export.device import module_device, to_device
from tfmq_export.sampling import Denoiser, cycle_conditions, ddim_sample, initial_noise


@dataclass
class CalibrationData:
    """Every UNet input of the calibration trajectories, step-major within each batch.

    Guided data (``calibration.guided_data``) also names the two guidance halves of every UNet call:
    ``pair_id`` is shared by an unconditional input and the conditional input of the same latent and
    step (-1: unpaired), ``cond_half`` tells them apart. The guided reconstruction loss
    (``guided_loss``) needs both halves of a pair in one minibatch; nothing else reads them.
    """

    samples: torch.Tensor  # [N, C, H, W] x_t
    step_index: torch.Tensor  # [N] int64 table rows
    conditions: torch.Tensor | None  # [N, S, D] or None
    timesteps: list[int]
    pair_id: torch.Tensor | None = None  # [N] int64, guided data only
    cond_half: torch.Tensor | None = None  # [N] bool, guided data only

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def paired(self) -> bool:
        return self.pair_id is not None and bool((self.pair_id >= 0).any())

    def select(self, index: torch.Tensor) -> CalibrationData:
        """The inputs at ``index`` (any order), guidance pairs kept as they are."""
        return CalibrationData(
            self.samples[index], self.step_index[index],
            None if self.conditions is None else self.conditions[index], self.timesteps,
            None if self.pair_id is None else self.pair_id[index.to(self.pair_id.device)],
            None if self.cond_half is None else self.cond_half[index.to(self.cond_half.device)],
        )

    def to(self, device: torch.device | str) -> CalibrationData:
        """The same inputs on ``device`` (where the methods cache and index them, ``--device``)."""
        return CalibrationData(self.samples.to(device), self.step_index.to(device),
                               None if self.conditions is None else self.conditions.to(device), self.timesteps,
                               self.pair_id, self.cond_half)

    def batches(self, batch_size: int, generator: torch.Generator | None = None):
        """Yield (samples, step_index, conditions) minibatches, shuffled when a generator is given."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start : start + batch_size]
            cond = None if self.conditions is None else self.conditions[idx]
            yield self.samples[idx], self.step_index[idx], cond

    def per_step_subset(self, per_step: int, seed: int = 0) -> CalibrationData:
        """At most ``per_step`` samples of every step (uniform over steps)."""
        generator = torch.Generator().manual_seed(seed)
        keep = []
        for row in range(len(self.timesteps)):
            idx = (self.step_index == row).nonzero().flatten()
            keep.append(idx[torch.randperm(idx.numel(), generator=generator)[:per_step]])
        return self.select(torch.cat(keep))

    def pair_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unconditional, conditional) positions of every complete guidance pair, by pair id."""
        if self.pair_id is None or self.cond_half is None:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty
        ids = self.pair_id.cpu()
        half = self.cond_half.cpu()
        positions = torch.arange(len(ids))
        uncond = positions[(ids >= 0) & ~half]
        cond = positions[(ids >= 0) & half]
        uncond = uncond[torch.isin(ids[uncond], ids[cond])]  # complete pairs only
        cond = cond[torch.isin(ids[cond], ids[uncond])]
        return uncond[torch.argsort(ids[uncond])], cond[torch.argsort(ids[cond])]

    def per_step_pairs(self, per_step: int, seed: int = 0) -> CalibrationData:
        """At most ``per_step`` inputs of every step taken as whole guidance pairs (``per_step // 2``
        pairs a step), so the guided loss sees both halves of each kept latent."""
        generator = torch.Generator().manual_seed(seed)
        uncond, cond = self.pair_index()
        rows = self.step_index.cpu()[uncond]
        keep = []
        for row in range(len(self.timesteps)):
            idx = (rows == row).nonzero().flatten()
            chosen = idx[torch.randperm(idx.numel(), generator=generator)[: max(1, per_step // 2)]]
            keep.append(torch.stack([uncond[chosen], cond[chosen]], dim=1).flatten())
        return self.select(torch.cat(keep))


def collect_calibration_data(
    denoise: Denoiser,
    scheduler_config: dict[str, Any],
    timesteps: list[int],
    sample_shape: tuple[int, ...],
    num_samples: int,
    seed: int,
    batch_size: int = 64,
    conditions: torch.Tensor | None = None,
    progress: bool = True,
    *,
    scheduler: str | None = None,
    num_steps: int | None = None,
) -> CalibrationData:
    """Sample ``num_samples`` full-precision trajectories and keep the input of every step.

    ``scheduler``: ``sampling.make_scheduler``'s name (None: the config's own, DDIM for DDPM);
    ``timesteps`` is its schedule for ``num_steps`` steps (``sampler_timesteps``; default
    ``len(timesteps)``, but PNDM makes more calls than steps)."""
    from tfmq_export.calibration.parallel import batch_starts, gather_batches

    latents = initial_noise(num_samples, sample_shape, seed)
    steps = num_steps or len(timesteps)
    xs: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    conds: list[torch.Tensor] = []

    def keep(step: int, x: torch.Tensor, cond: torch.Tensor | None) -> None:
        xs.append(x.clone())
        rows.append(torch.full((x.shape[0],), step, dtype=torch.int64))
        if cond is not None:
            conds.append(cond)

    pieces: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    # several ranks (torchrun): each samples its share of the batches, then every rank gets them all
    for start in tqdm(batch_starts(range(0, num_samples, batch_size)), desc="calibration data",
                      disable=not progress, leave=False):
        chunk = latents[start : start + batch_size]
        cond = None if conditions is None else cycle_conditions(conditions, start, chunk.shape[0])
        xs.clear(), rows.clear(), conds.clear()
        ddim_sample(denoise, scheduler_config, steps, chunk, cond, on_step=keep, scheduler=scheduler)
        pieces[start] = (torch.cat(xs), torch.cat(rows), torch.cat(conds) if conds else None)
    batches = gather_batches(pieces)
    return CalibrationData(
        torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]),
        torch.cat([b[2] for b in batches]) if batches[0][2] is not None else None, list(timesteps)
    )


def device_denoiser(model: torch.nn.Module, denoise: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``denoise`` fed on ``model``'s device and answering on the CPU: the sampler's arithmetic (and
    its seeded noise) stays on the CPU whatever ``--device`` says, so only the UNet calls move.
    The arguments are tensors, None, or a dict of tensors (the guided loop's feed)."""
    device = module_device(model)

    def call(x: torch.Tensor, rows: torch.Tensor, cond: Any) -> torch.Tensor:
        return denoise(x.to(device), rows.to(device), to_device(cond, device)).cpu()

    return call


__all__ = ["CalibrationData", "collect_calibration_data", "device_denoiser"]
