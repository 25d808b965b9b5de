"""Classifier-free guidance: the denoising loop of diffusers' text-to-image pipelines, for any UNet.

``guided_sample`` is section 7 ("denoising loop") of ``StableDiffusionPipeline.__call__``:
latents times the scheduler's ``init_noise_sigma``; at every timestep the batch is doubled
(unconditional half first, as diffusers concatenates it), ``scale_model_input``, one UNet call,
``noise = uncond + G * (cond - uncond)`` (formula (6) of Ho & Salimans, "Classifier-Free
Diffusion Guidance"), then ``scheduler.step``. The scheduler is any diffusers scheduler instance
already set to its steps, never DDIM math written here; the UNet is a ``GuidedDenoiser`` that
takes the table row of each timestep (``row_of``) and the named conditions of the exported
UNet contract (``encoder_hidden_states``; SDXL adds ``text_embeds`` and ``time_ids``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tfmq_export.errors import TfmqError
from tfmq_export.sampling import timestep_rows

__all__ = ["GuidedConditions", "GuidedDenoiser", "guided_sample", "scheduler_rows"]

#: (model input [B, C, h, w], table rows [B] int64, {input name: tensor [B, ...]}) -> noise prediction
GuidedDenoiser = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class GuidedConditions:
    """Per-image conditions of both guidance halves, by UNet input name, and the guidance scale.

    ``guidance_scale`` 1 means no guidance (diffusers: ``guidance_scale > 1`` turns it on): only
    the conditional half is run.
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor]
    guidance_scale: float
    prompts: Sequence[str] = ()
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if not self.guidance_scale >= 1.0:
            raise TfmqError(f"--guidance-scale {self.guidance_scale} must be at least 1 (1 = no guidance)")

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def num_prompts(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    def select(self, index: torch.Tensor) -> GuidedConditions:
        """The conditions of the prompts at ``index`` (one row per image)."""
        return GuidedConditions({k: v[index] for k, v in self.cond.items()},
                                {k: v[index] for k, v in self.uncond.items()}, self.guidance_scale,
                                self.prompts, self.negative_prompt)

    def cycled(self, start: int, count: int) -> GuidedConditions:
        """Images start..start+count, each taking the next prompt cyclically (calibration)."""
        return self.select(torch.arange(start, start + count) % self.num_prompts)

    def repeated(self, count: int) -> GuidedConditions:
        """``count`` images of every prompt, consecutive (diffusers' ``num_images_per_prompt``)."""
        return self.select(torch.arange(self.num_prompts).repeat_interleave(count))

    def model_batch(self) -> dict[str, torch.Tensor]:
        """What the UNet gets beside the latents: [uncond; cond] with guidance, cond alone without."""
        if not self.do_cfg:
            return dict(self.cond)
        return {k: torch.cat([self.uncond[k], self.cond[k]]) for k in self.cond}


def scheduler_rows(table_timesteps: Sequence[Any], scheduler: Any,
                   source: str = "the model") -> Callable[[int, Any], int]:
    """``row_of(i, t)``: the table row of the scheduler's call ``i`` (``sampling.timestep_rows``:
    one line where a timestep has no row)."""
    rows = timestep_rows(table_timesteps, scheduler.timesteps, source)
    return lambda step, _t: rows[step]


def _step_kwargs(scheduler: Any, eta: float, generator: torch.Generator | None) -> dict[str, Any]:
    """diffusers' ``prepare_extra_step_kwargs``: eta and generator only where ``step`` takes them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


@torch.no_grad()
def guided_sample(
    denoise: GuidedDenoiser,
    scheduler: Any,
    latents: torch.Tensor,
    conditions: GuidedConditions,
    row_of: Callable[[int, Any], int],
    on_step: Callable[[int, torch.Tensor, dict[str, torch.Tensor]], None] | None = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Denoise ``latents`` [N, C, h, w] with guidance; ``conditions`` hold one row per image.

    ``scheduler`` is set to its steps already (``set_timesteps``). ``on_step(row, model_input,
    model_conditions)`` sees every UNet input, both halves in one batch: calibration keeps them
    all in one pass.
    """
    if conditions.num_prompts != latents.shape[0]:
        raise TfmqError(f"{latents.shape[0]} latents but conditions for {conditions.num_prompts} images")
    feed = conditions.model_batch()
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        # 1. the model input: both halves in one batch
        model_input = torch.cat([x, x]) if conditions.do_cfg else x
        model_input = scheduler.scale_model_input(model_input, t)
        rows = torch.full((model_input.shape[0],), row_of(i, t), dtype=torch.int64)
        if on_step is not None:
            on_step(int(rows[0]), model_input, feed)
        # 2. the UNet, then guidance
        noise = denoise(model_input, rows, feed)
        if conditions.do_cfg:
            uncond, cond = noise.chunk(2)
            noise = uncond + conditions.guidance_scale * (cond - uncond)
        # 3. x_t -> x_t-1
        x = scheduler.step(noise, t, x, **step_kwargs, return_dict=False)[0]
    return x
