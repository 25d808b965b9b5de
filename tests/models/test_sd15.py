"""The shipped SD-1.5 UNet architecture (``sd15-arch``, for speed runs)."""

from __future__ import annotations

from tfmq_export.models.sd15 import SD15_UNET_CONFIG, SD15_UNET_PARAMETERS, load_sd15_config


def test_sd15_architecture_config():
    import torch
    from diffusers import UNet2DConditionModel

    config = load_sd15_config()
    assert config == SD15_UNET_CONFIG
    with torch.device("meta"):  # shapes only: no 3.4 GB of random weights in a unit test
        unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    assert sum(p.numel() for p in unet.parameters()) == SD15_UNET_PARAMETERS
    assert unet.config.cross_attention_dim == 768 and unet.config.sample_size == 64
