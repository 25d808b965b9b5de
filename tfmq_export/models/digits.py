"""The bundled default model ``digits``: a small DDPM UNet trained on scikit-learn's 8x8 digits.

Why it exists: every stage of the project (calibration, export, engines, FID) needs a real,
trained diffusion UNet with the same block types as the big models (ResBlocks with a temporal
branch, attention), small enough to calibrate and evaluate on two CPU cores in minutes, and
available offline. scikit-learn ships the 1,797 digit images inside its wheel, so the data, the
weights and the quality metric (``tfmq_export.metrics.fid``) are all reproducible without a
download.

The folder ``DIGITS_DIR`` looks like a diffusers pipeline folder (``model_index.json``,
``unet/``, ``scheduler/``), so ``DDPMPipeline.from_pretrained(DIGITS_DIR)`` works too.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from tfmq_export.errors import TfmqError

__all__ = [
    "DIGITS_DIR",
    "DIGITS_SCHEDULER_CONFIG",
    "DIGITS_UNET_CONFIG",
    "digits_images",
    "load_digits_scheduler",
    "load_digits_unet",
    "make_digits_unet",
    "sample_digits",
    "train_digits_unet",
    "warmup_cosine_lr",
]

#: The shipped model: ``unet/``, ``scheduler/``, ``classifier.safetensors`` (+ ``.json``).
DIGITS_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "digits"

#: The UNet architecture. 16x16 -> 8x8 (attention) -> 4x4, plus the default attention mid block.
#: ``time_embedding_type`` and ``resnet_time_scale_shift`` stay at their defaults because the
#: export replaces the time-embedding MLP with a per-step table.
DIGITS_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 16,
}

#: The training noise schedule. The cosine schedule ("Improved DDPM", Nichol & Dhariwal 2021)
#: spends more steps at low noise than the linear one, which matters at 16x16.
DIGITS_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
}

NUM_DIGITS = 1797


def digits_images(size: int = 16) -> torch.Tensor:
    """All 1,797 scikit-learn digits in [-1, 1], upsampled to ``size`` x ``size``.

    The 8x8 originals hold integers 0..16 (ink = 16); we map them linearly to [-1, 1] and
    upsample bilinearly (align_corners=False) so the UNet has two downsampling levels to work
    with. Returns float32 [1797, 1, size, size], in scikit-learn's order (deterministic).
    """
    if size < 8:
        raise TfmqError(f"digits_images: size {size} is smaller than the 8x8 originals; use size >= 8.")
    from sklearn.datasets import load_digits

    raw = load_digits().images.astype(np.float32)  # [1797, 8, 8], 0..16
    x = torch.from_numpy(raw).unsqueeze(1) / 8.0 - 1.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0).contiguous()


def make_digits_unet() -> UNet2DModel:
    """A freshly initialised UNet with the shipped architecture (weights from the global RNG)."""
    return UNet2DModel(**DIGITS_UNET_CONFIG)


def warmup_cosine_lr(step: int, iters: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak: stable start, low-noise finish."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, iters - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_digits_unet(
    out_dir: Path,
    iters: int = 3000,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1.5e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    num_threads: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the digits UNet with the DDPM noise-prediction loss and save it under ``out_dir``.

    Why these choices: the data set is tiny (1,797 images) and training runs on two CPU cores,
    so we use a high Adam learning rate with warm-up and cosine decay, and save EMA weights,
    which give visibly cleaner samples than the raw weights at this budget. Every random draw
    (init, data order, t, noise) comes from ``seed``, so the run is reproducible on the same
    machine and thread count.

    Writes ``out_dir/unet`` (safetensors), ``out_dir/scheduler`` and ``out_dir/model_index.json``;
    returns the training record (settings, seconds, final loss), also saved as
    ``out_dir/unet/training.json``.
    """
    if iters < 1 or batch_size < 1:
        raise TfmqError(f"train_digits_unet: iters ({iters}) and batch_size ({batch_size}) must be >= 1.")
    if not 0.0 <= ema_decay < 1.0:
        raise TfmqError(f"train_digits_unet: ema_decay {ema_decay} must be in [0, 1).")
    out_dir = Path(out_dir)
    torch.set_num_threads(num_threads)
    torch.manual_seed(seed)

    # 1. data, model, schedule
    data = digits_images(16)
    unet = make_digits_unet()
    unet.train()
    scheduler = DDPMScheduler(**DIGITS_SCHEDULER_CONFIG)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    ema = [p.detach().clone() for p in unet.parameters()]
    optimizer = torch.optim.Adam(unet.parameters(), lr=lr)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine_lr(s, iters, warmup))
    gen = torch.Generator().manual_seed(seed)

    # 2. loop: epochs of a seeded permutation, eps-prediction MSE (formula (14) of the DDPM paper)
    order = torch.randperm(len(data), generator=gen)
    cursor = 0
    start = time.perf_counter()
    running = float("nan")
    bar = tqdm(range(iters), desc="train digits UNet", disable=not progress)
    for step in bar:
        if cursor + batch_size > len(order):
            order = torch.randperm(len(data), generator=gen)
            cursor = 0
        x0 = data[order[cursor : cursor + batch_size]]
        cursor += batch_size
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_sched.step()
        # EMA with the usual warm-up of the decay, so early weights do not dominate
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p.detach(), 1.0 - decay)
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.2e}")
    seconds = time.perf_counter() - start

    # 3. save the EMA weights
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    unet.eval()
    unet.save_pretrained(out_dir / "unet", safe_serialization=True)
    scheduler.save_config(out_dir / "scheduler")
    model_index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": scheduler.config.get("_diffusers_version", "unknown"),
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (out_dir / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    record = {
        "iters": iters,
        "batch_size": batch_size,
        "seed": seed,
        "lr": lr,
        "warmup": warmup,
        "ema_decay": ema_decay,
        "num_threads": num_threads,
        "train_seconds": round(seconds, 1),
        "final_loss_ema": round(running, 5),
        "torch": torch.__version__,
    }
    (out_dir / "unet" / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _check_folder(path: Path, files: tuple[str, ...]) -> None:
    """Refuse a folder that lacks the files a loader needs, naming the first missing one."""
    if not path.is_dir():
        raise TfmqError(f"digits model folder {path} does not exist; train it with "
                        "`tfmq-export train-digits --out DIR`.")
    for name in files:
        if not (path / name).is_file():
            raise TfmqError(f"digits model folder {path} has no {name}; it is incomplete, retrain it with "
                            "`tfmq-export train-digits --out DIR`.")


def load_digits_unet(path: Path = DIGITS_DIR) -> UNet2DModel:
    """Load the digits UNet from a local pipeline folder (offline, eval mode, float32).

    Raises ``TfmqError`` when the folder is missing, incomplete, or its weights are unreadable,
    so the command line can report it in one line.
    """
    path = Path(path)
    _check_folder(path, ("unet/config.json", "unet/diffusion_pytorch_model.safetensors"))
    try:
        unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True, use_safetensors=True,
                                           low_cpu_mem_usage=False)
    except Exception as err:  # diffusers/safetensors raise many types for a damaged file
        raise TfmqError(f"could not read the digits UNet in {path / 'unet'}: {err}") from err
    return unet.eval()


def load_digits_scheduler(path: Path = DIGITS_DIR, kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """The digits noise schedule as a DDIM (default) or DDPM scheduler, from the saved config."""
    path = Path(path)
    _check_folder(path, ("scheduler/scheduler_config.json",))
    classes = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    if kind not in classes:
        raise TfmqError(f"load_digits_scheduler: kind {kind!r} is not one of {sorted(classes)}.")
    try:
        config = DDPMScheduler.load_config(path / "scheduler")
    except Exception as err:
        raise TfmqError(f"could not read the digits scheduler config in {path / 'scheduler'}: {err}") from err
    return classes[kind].from_config(config)


@torch.no_grad()
def sample_digits(
    unet: UNet2DModel,
    num_samples: int,
    steps: int = 25,
    seed: int = 0,
    eta: float = 0.0,
    batch_size: int = 250,
    scheduler_path: Path = DIGITS_DIR,
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``num_samples`` images with DDIM in full precision; returns [N, 1, 16, 16] in [-1, 1].

    A reference sampler for the FP model (the FID baseline in docs/MODEL.md): the shared DDIM
    loop (``sampling.ddim_sample``) driving the diffusers UNet itself at ``timesteps[step_index]``.
    The initial noise for all images is drawn up front from ``seed``, so the result does not
    depend on batch_size; DDIM's own noise (``eta`` > 0) continues that generator.
    """
    from tfmq_export.sampling import ddim_sample, make_scheduler

    if num_samples < 1 or steps < 1 or batch_size < 1:
        raise TfmqError(f"sample_digits: num_samples ({num_samples}), steps ({steps}) and batch_size "
                        f"({batch_size}) must be >= 1.")
    config = dict(load_digits_scheduler(scheduler_path, "ddim").config)
    timesteps = make_scheduler("ddim", config, steps).timesteps
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    noise = torch.randn((num_samples, unet.config.in_channels, size, size), generator=gen)
    bar = tqdm(total=num_samples * steps, desc=f"DDIM {steps} steps", disable=not progress)

    def denoise(x: torch.Tensor, step_index: torch.Tensor, _cond: torch.Tensor | None) -> torch.Tensor:
        return unet(x, timesteps[int(step_index[0])]).sample

    def count(_step: int, x: torch.Tensor, _cond: torch.Tensor | None) -> None:
        bar.update(len(x))

    out = [ddim_sample(denoise, config, steps, noise[start : start + batch_size], on_step=count, eta=eta,
                       generator=gen).clamp(-1.0, 1.0)
           for start in range(0, num_samples, batch_size)]
    bar.close()
    return torch.cat(out)
