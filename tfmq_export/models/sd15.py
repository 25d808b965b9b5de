"""The Stable Diffusion 1.5 UNet architecture, with random weights, for speed measurements.

Benchmarks on the real SD-1.5 architecture need no real weights: latency, memory and int8
kernel coverage depend on shapes, not values. ``build_sd15_arch_unet`` builds diffusers'
``UNet2DConditionModel`` from SD-1.5's ``unet/config.json`` (the ``sd15-arch`` model of
``tfmq-export bench``), seeded, without downloading anything. Its outputs are meaningless; never
use it for quality numbers.

The config is shipped as ``tfmq_export/configs/sd15_unet.json`` and repeated here as a dict; a
test keeps the two equal.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = [
    "SD15_CLIP_CONFIG", "SD15_UNET_CONFIG", "SD15_UNET_PARAMETERS", "SD15_VAE_CONFIG", "build_sd15_arch_pipeline",
    "build_sd15_arch_unet", "load_sd15_config", "small_clip_tokenizer",
]

#: SD-1.5 ``unet/config.json`` (diffusers UNet2DConditionModel); everything else is diffusers' default
SD15_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

#: parameter count of the SD-1.5 UNet (859.52 M), a cheap check that the architecture is right
SD15_UNET_PARAMETERS = 859_520_964


def load_sd15_config() -> dict[str, Any]:
    """The shipped ``configs/sd15_unet.json`` (package data)."""
    text = resources.files("tfmq_export").joinpath("configs/sd15_unet.json").read_text()
    return json.loads(text)


def build_sd15_arch_unet(seed: int = 0) -> Any:
    """``UNet2DConditionModel`` with SD-1.5's architecture and seeded random weights, in eval mode.

    About 3.4 GB of float32 weights; building takes a few seconds per core. Inputs: latents
    [B, 4, 64, 64] (512 px images), ``encoder_hidden_states`` [B, 77, 768] (CLIP ViT-L/14).
    """
    import torch
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in load_sd15_config().items() if not k.startswith("_")}
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return unet.eval()


#: CLIP ViT-L/14's text encoder (SD-1.5's ``text_encoder/config.json``), 123 M parameters
SD15_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
}
#: SD-1.5's AutoencoderKL (``vae/config.json``), 83.7 M parameters
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 512, "scaling_factor": 0.18215,
}
_WORDS = ("a", "photograph", "of", "an", "astronaut", "riding", "horse", "blurry", "cat", "dog", "on", "the", "moon")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def small_clip_tokenizer(max_length: int = 77) -> Any:
    """A CLIP BPE tokenizer with a small written vocabulary (letters + ``_WORDS`` kept whole).

    Speed does not depend on which ids a prompt becomes, only on their count (always
    ``max_length``, padded): ids stay far below CLIP's 49408, no vocabulary is downloaded.
    """
    from transformers import CLIPTokenizer

    tokens = [*_LETTERS, *(ch + "</w>" for ch in _LETTERS)]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in tokens:
                tokens.append(parts[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")


def build_sd15_arch_pipeline(path: Any, latent_size: int = 64, seed: int = 0) -> Any:
    """Save a ``StableDiffusionPipeline`` folder with SD-1.5's shapes for every stage, random weights.

    UNet (``configs/sd15_unet.json``, its ``sample_size`` set to ``latent_size``), CLIP ViT-L/14
    text encoder, SD's AutoencoderKL, SD-1.5's DDIM scheduler config and ``small_clip_tokenizer``.
    About 4.3 GB of float32 safetensors; for speed and memory only: the images are noise.
    """
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = small_clip_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    state = torch.random.get_rng_state()
    try:
        unet = build_sd15_arch_unet(seed)
        unet.register_to_config(sample_size=latent_size)
        torch.manual_seed(seed + 1)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_CLIP_CONFIG, bos_token_id=eos - 1, eos_token_id=eos,
                                                    pad_token_id=eos)).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(**SD15_VAE_CONFIG).eval()
    finally:
        torch.random.set_rng_state(state)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)
