"""Tiny random-weight text-to-image pipelines saved with ``save_pretrained`` (no downloads).

The CLIP tokenizer is the package's own digit-word vocabulary (``tfmq_export.models.clip_vocab``),
so "a handwritten digit seven" is four tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tfmq_export.models.clip_vocab import BOS, DIGIT_WORDS, EOS, build_clip_tokenizer, clip_vocab

WORDS = DIGIT_WORDS

__all__ = ["WORDS", "build_sd_pipeline", "build_sdxl_pipeline", "tiny_tokenizer"]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the tests' CLIP BPE tokenizer (the package's digit-word vocabulary)."""
    return clip_vocab(WORDS)


def tiny_tokenizer(max_length: int = 16, pad_token: str = EOS):
    return build_clip_tokenizer(max_length, WORDS, pad_token)


def _text_encoder(vocab_size: int, max_length: int, *, projection: bool = False, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab, _ = tiny_vocab()
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=max_length, projection_dim=hidden,
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS],
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    ).eval()


def _scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def build_sd_pipeline(path: Path, *, prediction_type: str = "epsilon", max_length: int = 16) -> Path:
    """A StableDiffusionPipeline folder: 8x8 latents (16x16 images), 32-wide CLIP text encoder."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_tokenizer(max_length)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer), max_length), tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_sdxl_pipeline(path: Path, *, max_length: int = 16) -> Path:
    """A StableDiffusionXLPipeline folder: two text encoders (32 + 32 wide), ``text_time`` added conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_tokenizer(max_length)
    tokenizer_2 = tiny_tokenizer(max_length)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=64, attention_head_dim=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer), max_length),
        text_encoder_2=_text_encoder(len(tokenizer_2), max_length, projection=True, seed=1),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)
