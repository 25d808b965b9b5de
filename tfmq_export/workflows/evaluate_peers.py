"""ModelOpt peer rows for ``evaluate``: calibrate with ModelOpt, sample with the shared loop, in torch.

A peer (``calibration.modelopt_peer.PEER_METHODS``) quantizes a copy of the same full-precision
table UNet on the same calibration inputs as our rows for a calibration seed (the digits recipes'
budget: trajectories, batch), then samples the same initial noise with the same sampler, so the
paired RMSE to the full-precision samples compares like with like. ModelOpt's quantizers are
fake-quant torch modules our exporter does not translate, so peers are sampled in torch; the
row's ``note`` says so.

Images come in the layout of the rows they sit beside: an unconditional UNet (``digits``) gives
float32 [N, C, H, W] in [-1, 1] (``sampling.generate``); a text-to-image pipeline
(``digits-text``) gives float32 [N, H, W, 3] in [0, 1] of one prompt (``pipeline_images``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tfmq_export.calibration.modelopt_peer import PeerUNet, check_peer_method, peer_table_unet
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import LoadedModel
from tfmq_export.sampling import SamplingSpec, generate, initial_noise, make_scheduler

__all__ = ["PEER_NOTE", "PeerSamples", "peer_budget", "peer_samples", "peer_unet", "table_images",
           "table_prompt_images"]

PEER_NOTE = "sampled in torch (ModelOpt fake-quant; our exporter does not export ModelOpt's quantizers)"
#: calibrated peers kept for the process: a text row samples ten prompts x two guidance scales
_CACHE: OrderedDict[tuple[Any, ...], PeerUNet] = OrderedDict()
_CACHE_SIZE = 4


@dataclass
class PeerSamples:
    """One peer row's images, the peer's calibration time (data collection included) and its note."""

    images: np.ndarray
    calibration_seconds: float
    note: str


def peer_budget(method: str, steps: int, calib_seed: int) -> CalibrationSettings:
    """The digits recipes' calibration budget (trajectories, batch) at ``steps`` and ``calib_seed``:
    the inputs our rows at the peer's bit width calibrate on."""
    from tfmq_export.workflows.evaluate import recipe_settings

    wbits = check_peer_method(method)[0]
    bits = "w8a8" if wbits == 8 else "w4a16"
    return dataclasses.replace(recipe_settings("minmax", bits), steps=steps, seed=calib_seed)


def _text_model(model: LoadedModel, guidance: float) -> LoadedModel:
    """``model`` with the digits-text calibration prompts and ``guidance`` (the caller's model is untouched)."""
    from tfmq_export.models.digits_text import digits_text_prompts
    from tfmq_export.models.prompts import encode_guided

    assert model.pipeline is not None
    guided = encode_guided(model.pipeline, digits_text_prompts(), None, guidance, model.sample_shape[-1])
    return dataclasses.replace(model, guided=guided)


def peer_unet(model: LoadedModel, method: str, *, calib_seed: int, steps: int, progress: bool = False,
              calib_guidance: float | None = None, config: dict[str, Any] | None = None) -> PeerUNet:
    """ModelOpt's ``method`` calibrated for ``model`` (reused within the process for the same key).
    A pipeline calibrates on the ten digit prompts with ``calib_guidance`` as our text rows do.
    ``config`` replaces the method's ModelOpt config (a benchmark's variant)."""
    settings = peer_budget(method, steps, calib_seed)
    guidance = None
    if model.pipeline is not None:
        from tfmq_export.workflows.evaluate_text import DEFAULT_TEXT_GUIDANCE

        guidance = DEFAULT_TEXT_GUIDANCE if calib_guidance is None else float(calib_guidance)
    key = (model.fingerprint(), model.source, method, calib_seed, steps, guidance,
           None if config is None else json.dumps(config, sort_keys=True, default=str))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if guidance is not None:
        from tfmq_export.models.digits_text import digits_text_prompts

        model = _text_model(model, guidance)
        settings = dataclasses.replace(settings, prompts=digits_text_prompts(), guidance_scale=guidance)
    peer = peer_table_unet(model, method, settings, progress, config)
    _CACHE[key] = peer
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return peer


def table_images(model: LoadedModel, unet: torch.nn.Module, timesteps: list[Any], scheduler: str, num_images: int,
                 seed: int, steps: int, batch_size: int, progress: bool = False, label: str = "torch") -> np.ndarray:
    """Unconditional images [N, C, H, W] of a (fake-quant or FP) table UNet: ``sampling.generate``'s loop."""
    spec = SamplingSpec(timesteps, model.scheduler_config, model.sample_shape, False, scheduler=scheduler,
                        num_steps=steps, source=label)
    return generate(lambda x, rows, _cond: unet(x, rows), spec, num_images, seed, batch_size, progress=progress,
                    desc=f"sampling {label}")


def table_prompt_images(model: LoadedModel, unet: torch.nn.Module, timesteps: list[Any], scheduler: str,
                        prompt: str, guidance: float, num_images: int, seed: int, steps: int,
                        batch_size: int) -> np.ndarray:
    """Images [N, H, W, 3] in [0, 1] of ``prompt`` through a table UNet in torch: ``pipeline_images``' loop
    (same noise for ``seed``, prompt encoding, sampler, guidance, VAE decoder), ``batch_size`` at a time."""
    from tfmq_export.contract import INPUT_CONDITIONS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS
    from tfmq_export.export.pipeline import VaeDecoderStage
    from tfmq_export.models.guidance import guided_sample, scheduler_rows
    from tfmq_export.models.prompts import encode_guided

    if model.pipeline is None:
        raise TfmqError(f"{model.name} is not a text-to-image pipeline: a prompt does not apply")
    latents = initial_noise(num_images, model.sample_shape, seed)
    encoded = encode_guided(model.pipeline, [prompt], None, guidance, model.sample_shape[-1])
    decoder = VaeDecoderStage(model.pipeline.vae()).eval()

    def denoise(x: torch.Tensor, rows: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return unet(x, rows, feed[INPUT_CONDITIONS], feed.get(INPUT_TEXT_EMBEDS), feed.get(INPUT_TIME_IDS))

    out = []
    with torch.no_grad():
        for start in range(0, num_images, batch_size):
            chunk = latents[start : start + batch_size]
            sampler = make_scheduler(scheduler, model.scheduler_config, steps)  # fresh: schedulers keep state
            final = guided_sample(denoise, sampler, chunk, encoded.repeated(chunk.shape[0]),
                                  scheduler_rows(timesteps, sampler))
            out.append(decoder(final).numpy().transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def peer_samples(model: LoadedModel, method: str, *, num_images: int, seed: int, calib_seed: int, steps: int,
                 batch_size: int, progress: bool, prompt: str | None = None, guidance_scale: float = 1.0,
                 calib_guidance: float | None = None) -> PeerSamples:
    """``num_images`` samples of the ModelOpt peer ``method`` from the noise of ``seed``.

    Unconditional UNet: images [N, C, H, W] in [-1, 1]. Text-to-image pipeline: ``prompt`` with
    ``guidance_scale`` (1: unguided), images [N, H, W, 3] in [0, 1]; calibration uses the ten digit
    prompts at ``calib_guidance`` (None: ``guidance_scale`` when above 1, else the text rows' default)."""
    check_peer_method(method)
    if num_images < 1 or batch_size < 1 or steps < 1:
        raise TfmqError("--num-images, --batch-size and --steps must be positive")
    if model.pipeline is not None:
        if prompt is None:
            raise TfmqError(f"{model.name} is a text-to-image pipeline: its ModelOpt peer samples need a prompt")
        calib_guidance = calib_guidance or (guidance_scale if guidance_scale > 1 else None)
        peer = peer_unet(model, method, calib_seed=calib_seed, steps=steps, progress=progress,
                         calib_guidance=calib_guidance)
        images = table_prompt_images(model, peer.unet, peer.timesteps, peer.scheduler, prompt, guidance_scale,
                                     num_images, seed, steps, batch_size)
    else:
        if prompt is not None:
            raise TfmqError(f"{model.name} is an unconditional UNet: a prompt does not apply")
        peer = peer_unet(model, method, calib_seed=calib_seed, steps=steps, progress=progress)
        images = table_images(model, peer.unet, peer.timesteps, peer.scheduler, num_images, seed, steps, batch_size,
                              progress, f"{method} (torch)")
    return PeerSamples(images, round(peer.calibration_seconds, 2), PEER_NOTE)
