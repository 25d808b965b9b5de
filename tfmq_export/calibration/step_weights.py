"""Per-step weights of the reconstruction loss: an error of the UNet's output matters to the image
as much as the sampler lets it into the next latent.

Why: the calibration inputs are spread evenly over the sampler's steps and block reconstruction
weighs every input alike, but one unit of noise-prediction error does not cost the same at every
step. In a DDIM step x_prev = sqrt(a_prev) x0(x, out) + sqrt(1 - a_prev) eps(x, out), the gain
|d x_prev / d out| is about 1 at the first step of a 25-step cosine schedule, 0.06-0.1 over most of
the trajectory and 0.006 at the last (t = 0), where the prediction hardly reaches the image at all.
Measured on digits (docs/ANALYSIS.md, "Step-weighted reconstruction"): the quantized UNet at the first
step alone moves the sampled images about five times as far as at a middle step with a similar
output error. ``extra.step_weighting`` = p weighs each calibration input of step i by gain_i ** p
(normalised to mean 1 over the steps; p = 2 is the gain in squared error, 0 weighs every step alike).

The gain is that of the deterministic DDIM step on the table's timesteps, for the model's prediction
type: the ODE step that the supported samplers (DDIM, PNDM, Euler, DPM-Solver++) discretise alike.
A config's ``clip_sample`` is left out: where it clips the x0 estimate the gain is larger still at
the early steps, so the weights understate, not overstate, how much those steps matter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tfmq_export.errors import TfmqError

__all__ = ["ddim_step_gains", "step_loss_weights"]


def _alphas_cumprod(scheduler_config: dict[str, Any]) -> list[float]:
    """alpha_bar of every training timestep, as the model's diffusers scheduler defines it."""
    from diffusers import DDIMScheduler  # lazy: a heavy import only calibration needs

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return [float(a) for a in DDIMScheduler.from_config(config).alphas_cumprod]


def _alpha_at(alphas: list[float], t: float) -> float:
    """alpha_bar at timestep ``t`` (linear between integer timesteps; Euler's float timesteps)."""
    t = min(max(float(t), 0.0), len(alphas) - 1.0)
    low = math.floor(t)
    high = min(low + 1, len(alphas) - 1)
    return alphas[low] + (alphas[high] - alphas[low]) * (t - low)


def ddim_step_gains(scheduler_config: dict[str, Any], timesteps: Sequence[float]) -> list[float]:
    """|d x_prev / d output| of the deterministic DDIM step at each of ``timesteps`` (sampling order),
    for the config's ``prediction_type`` (epsilon, v_prediction or sample)."""
    if not timesteps:
        raise TfmqError("step weights need at least one sampler timestep")
    alphas = _alphas_cumprod(scheduler_config)
    final = 1.0 if scheduler_config.get("set_alpha_to_one", True) else alphas[0]
    kind = scheduler_config.get("prediction_type", "epsilon")
    gains = []
    for i, t in enumerate(timesteps):
        a = _alpha_at(alphas, t)
        a_prev = _alpha_at(alphas, timesteps[i + 1]) if i + 1 < len(timesteps) else final
        root, root_prev = math.sqrt(a), math.sqrt(a_prev)
        rest, rest_prev = math.sqrt(1.0 - a), math.sqrt(1.0 - a_prev)
        if kind == "epsilon":  # x0 = (x - rest * eps) / root
            gain = rest_prev - root_prev * rest / root
        elif kind == "v_prediction":  # x0 = root x - rest v, eps = rest x + root v
            gain = rest_prev * root - root_prev * rest
        elif kind == "sample":  # eps = (x - root x0) / rest
            gain = root_prev - rest_prev * root / rest if rest > 0 else root_prev
        else:
            raise TfmqError(f"step weights: unknown prediction_type {kind!r} in the scheduler config")
        gains.append(abs(gain))
    return gains


def step_loss_weights(scheduler_config: dict[str, Any], timesteps: Sequence[float], power: float) -> tuple[float, ...]:
    """gain_i ** ``power`` for every table row, normalised to mean 1; () when ``power`` is 0 (every
    calibration input weighs the same, the papers' loss)."""
    if power == 0:
        return ()
    raw = [g**power for g in ddim_step_gains(scheduler_config, timesteps)]
    mean = sum(raw) / len(raw)
    if not mean > 0:
        raise TfmqError("step weights: the sampler's gains are all zero; use step_weighting 0")
    return tuple(w / mean for w in raw)
