"""Train ``digits-text`` offline: a small AutoencoderKL, then text encoder + UNet together.

Why two stages, as Stable Diffusion was made: the VAE fixes the latent space (reconstruction MSE
plus a small KL term), the latents are scaled to unit variance (``vae.config.scaling_factor``),
then the UNet learns noise prediction on them with the text encoder trained jointly from scratch
(there is no pretrained CLIP offline). 10% of the prompts are replaced by the empty prompt, so the
one model predicts both halves of classifier-free guidance. Every random draw comes from ``seed``;
results are reproducible for a fixed thread count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tfmq_export.errors import TfmqError
from tfmq_export.io import replace_folder, staged_dir
from tfmq_export.models.digits import digits_images, warmup_cosine_lr
from tfmq_export.models.digits_text import PROMPT_TEMPLATES, digit_prompt, make_digits_text_parts

__all__ = ["train_digits_text"]

#: Fraction of training prompts replaced by "" (classifier-free guidance, Ho & Salimans 2022).
UNCOND_FRACTION = 0.1
#: KL weight of the VAE loss: small, as in SD's autoencoder, so latents keep the detail.
KL_WEIGHT = 1e-6


def _batches(count: int, batch_size: int, iters: int, gen: torch.Generator):
    """Indices of ``iters`` batches from seeded epochs over ``count`` items."""
    order, cursor = torch.randperm(count, generator=gen), 0
    for _ in range(iters):
        if cursor + batch_size > count:
            order, cursor = torch.randperm(count, generator=gen), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def _rgb(grey: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, 3, H, W]: SD pipelines decode RGB; grey ink sits in every channel."""
    return grey.expand(-1, 3, -1, -1).contiguous()


def _train_vae(vae: Any, images: torch.Tensor, iters: int, batch_size: int, lr: float,
               gen: torch.Generator, progress: bool) -> float:
    """Reconstruction MSE + KL_WEIGHT * KL; returns the final smoothed loss."""
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_lr(s, iters, min(100, iters // 10 + 1)))
    running = float("nan")
    bar = tqdm(_batches(len(images), batch_size, iters, gen), total=iters, desc="train digits-text VAE",
               disable=not progress)
    for index in bar:
        x = images[index]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        loss = F.mse_loss(vae.decode(z).sample, x) + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    vae.eval().requires_grad_(False)
    return running


def _prompt_table(tokenizer: Any) -> torch.Tensor:
    """Token ids [templates + 1, 10, max_length]: every template for every digit, then "" (row -1)."""
    rows = [[digit_prompt(d, k) for d in range(10)] for k in range(len(PROMPT_TEMPLATES))] + [[""] * 10]
    ids = [tokenizer(r, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids for r in rows]
    return torch.stack(ids)


def _train_unet(parts: dict[str, Any], latents: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
                settings: dict[str, Any], gen: torch.Generator, progress: bool) -> float:
    """Noise prediction on scaled latents, text encoder trained jointly; EMA weights are kept."""
    unet, text_encoder, scheduler = parts["unet"], parts["text_encoder"], parts["scheduler"]
    mean, std = latents
    table = _prompt_table(parts["tokenizer"])
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    iters = settings["unet_iters"]
    opt = torch.optim.Adam(params, lr=settings["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_lr(s, iters, 200))
    alphas = scheduler.alphas_cumprod.float()
    unet.train()
    text_encoder.train()
    running = float("nan")
    bar = tqdm(_batches(len(mean), settings["batch_size"], iters, gen), total=iters,
               desc="train digits-text UNet + text encoder", disable=not progress)
    for step, index in enumerate(bar):
        n = len(index)
        template = torch.randint(0, len(PROMPT_TEMPLATES), (n,), generator=gen)
        template[torch.rand(n, generator=gen) < UNCOND_FRACTION] = len(PROMPT_TEMPLATES)
        ids = table[template, labels[index]]
        z0 = mean[index] + std[index] * torch.randn(mean[index].shape, generator=gen)
        t = torch.randint(0, len(alphas), (n,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1.0 - a).sqrt() * noise
        loss = F.mse_loss(unet(zt, t, text_encoder(ids)[0]).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(settings["ema_decay"], (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1.0 - decay)
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return running


@torch.no_grad()
def _scaled_latents(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior mean and std of every image, scaled so sampled latents have unit variance."""
    dists = [vae.encode(chunk).latent_dist for chunk in images.split(256)]
    mean = torch.cat([d.mean for d in dists])
    std = torch.cat([d.std for d in dists])
    scale = 1.0 / float((mean.var() + std.square().mean()).sqrt())
    return mean * scale, std * scale, scale


def train_digits_text(out_dir: Path, *, vae_iters: int = 1500, unet_iters: int = 5000, batch_size: int = 64,
                      lr: float = 1e-3, ema_decay: float = 0.999, seed: int = 0, threads: int = 1,
                      progress: bool = True, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every stage and save a ``StableDiffusionPipeline`` folder at ``out_dir`` (+ training.json)."""
    from diffusers import StableDiffusionPipeline
    from sklearn.datasets import load_digits

    if min(vae_iters, unet_iters, batch_size) < 1:
        raise TfmqError("train_digits_text: vae_iters, unet_iters and batch_size must be >= 1")
    settings = {"vae_iters": vae_iters, "unet_iters": unet_iters, "batch_size": batch_size, "lr": lr,
                "ema_decay": ema_decay, "seed": seed, "threads": threads, "uncond_fraction": UNCOND_FRACTION,
                "kl_weight": KL_WEIGHT, "torch": torch.__version__}
    say = echo or (lambda _line: None)
    say("train_digits_text settings: " + json.dumps(settings))
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    parts = make_digits_text_parts(seed)
    images = _rgb(digits_images(16))
    labels = torch.from_numpy(load_digits().target).long()
    start = time.perf_counter()
    vae_loss = _train_vae(parts["vae"], images, vae_iters, batch_size, lr, gen, progress)
    mean, std, scale = _scaled_latents(parts["vae"], images)
    parts["vae"].register_to_config(scaling_factor=scale)
    vae_seconds = time.perf_counter() - start
    unet_loss = _train_unet(parts, (mean, std), labels, settings, gen, progress)
    record = {**settings, "vae_final_loss": round(vae_loss, 6), "unet_final_loss": round(unet_loss, 5),
              "scaling_factor": scale, "vae_seconds": round(vae_seconds, 1),
              "train_seconds": round(time.perf_counter() - start, 1)}
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as stage:  # a failed save leaves no half-written model folder
        folder = stage / "pipeline"
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        replace_folder(folder, out_dir)
    say("digits-text: " + json.dumps(record))
    return record
