"""The bundled text-to-image model ``digits-text``: a real ``StableDiffusionPipeline`` folder.

Why it exists: the pipeline path (prompts, classifier-free guidance, text encoder, VAE, exported
stages) needs a model whose images can be judged, offline, on two CPU cores. ``digits-text`` is
Stable Diffusion in miniature, trained by our own code on scikit-learn's digits: a CLIP tokenizer
over a vocabulary we write (``clip_vocab``), a small CLIP text encoder, a conditional UNet on 8x8x4
latents and a small ``AutoencoderKL`` (16x16 RGB images, grey ink replicated in the three channels),
with SD-1.x's noise schedule. ``StableDiffusionPipeline.from_pretrained(DIGITS_TEXT_DIR)`` loads it.

Prompts name a digit ("a handwritten digit seven"); the bundled digit classifier judges whether an
image shows the prompted digit (``metrics.prompt_accuracy``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError
from tfmq_export.models.clip_vocab import BOS, DIGIT_NAMES, EOS, build_clip_tokenizer, clip_vocab

__all__ = [
    "DIGITS_TEXT_DIR",
    "PROMPT_TEMPLATES",
    "SCHEDULER_CONFIG",
    "TEXT_ENCODER_CONFIG",
    "UNET_CONFIG",
    "VAE_CONFIG",
    "digit_prompt",
    "digits_text_prompts",
    "make_digits_text_parts",
    "parse_digit_prompt",
]

#: The shipped pipeline folder (``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
#: ``vae/``, ``scheduler/``, ``training.json``).
DIGITS_TEXT_DIR: Path = Path(__file__).resolve().parent.parent / "assets" / "digits-text"

#: Training prompts per digit; the first is the one evaluation and the README use.
PROMPT_TEMPLATES = ("a handwritten digit {}", "the digit {}", "the number {}", "{}")
MAX_LENGTH = 16

#: 16x16x3 images <-> 8x8x4 latents (one downsampling), as SD's VAE but 8x smaller per side.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 16,
}

#: SD-1.x's UNet layout in miniature: cross-attention at 8x8, a cross-attention mid block at 4x4.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_LENGTH,
    "projection_dim": 64,
}

#: SD-1.x's schedule (scaled_linear 0.00085..0.012, 1,000 steps, epsilon prediction).
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def digit_prompt(digit: int, template: int = 0) -> str:
    """The prompt for ``digit`` (0-9) in training template ``template`` ("a handwritten digit seven")."""
    if not 0 <= digit <= 9:
        raise TfmqError(f"digit {digit} is not 0-9")
    return PROMPT_TEMPLATES[template].format(DIGIT_NAMES[digit])


def digits_text_prompts() -> list[str]:
    """One evaluation prompt per digit, 0 to 9 (the calibration prompts file of the README)."""
    return [digit_prompt(d) for d in range(10)]


def parse_digit_prompt(prompt: str) -> int | None:
    """The digit a prompt names (its last digit word), or None when it names none."""
    words = [w for w in prompt.lower().replace(",", " ").split() if w in DIGIT_NAMES]
    return DIGIT_NAMES.index(words[-1]) if words else None


def make_digits_text_parts(seed: int = 0) -> dict[str, Any]:
    """Freshly initialised tokenizer, text encoder, VAE, UNet and scheduler of the shipped layout."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(MAX_LENGTH)
    vocab, _ = clip_vocab()
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                                 pad_token_id=vocab[EOS], **TEXT_ENCODER_CONFIG)
    return {
        "tokenizer": tokenizer,
        "text_encoder": CLIPTextModel(text_config),
        "vae": AutoencoderKL(**VAE_CONFIG),
        "unet": UNet2DConditionModel(**UNET_CONFIG),
        "scheduler": DDIMScheduler(**SCHEDULER_CONFIG),
    }
