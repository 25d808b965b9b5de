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

__all__ = ["SD15_UNET_CONFIG", "SD15_UNET_PARAMETERS", "build_sd15_arch_unet", "load_sd15_config"]

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
