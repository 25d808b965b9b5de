"""The shipped digits model: UNet architecture and loading, classifier accuracy, loader errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.classifier import (
    digits_labels,
    digits_split,
    evaluate_classifier,
    load_digits_classifier,
)
from tfmq_export.models.digits import (
    DIGITS_DIR,
    DIGITS_UNET_CONFIG,
    digits_images,
    load_digits_scheduler,
    load_digits_unet,
)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return load_digits_unet()


def test_digits_images_range_shape_and_determinism() -> None:
    x = digits_images(16)
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() <= 1.0 and x.max().item() > 0.9
    assert torch.equal(x, digits_images(16))
    # background of the 8x8 original (value 0) stays exactly -1 at the corners
    assert torch.all(x[:, :, 0, 0] <= -0.5)
    with pytest.raises(TfmqError, match="size"):
        digits_images(4)


def test_shipped_unet_config_and_attention(unet: UNet2DModel) -> None:
    cfg = unet.config
    assert cfg.in_channels == 1 and cfg.out_channels == 1 and cfg.sample_size == 16
    assert tuple(cfg.block_out_channels) == tuple(DIGITS_UNET_CONFIG["block_out_channels"])
    assert tuple(cfg.down_block_types) == tuple(DIGITS_UNET_CONFIG["down_block_types"])
    assert "AttnDownBlock2D" in cfg.down_block_types and "AttnUpBlock2D" in cfg.up_block_types
    assert cfg.time_embedding_type == "positional" and cfg.resnet_time_scale_shift == "default"
    assert cfg.class_embed_type is None and cfg.num_class_embeds is None
    assert any(isinstance(m, Attention) for m in unet.modules())
    assert not unet.training
    weights = DIGITS_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 8 * 2**20


def test_shipped_unet_predicts_noise(unet: UNet2DModel) -> None:
    """A trained eps-model recovers most of the added noise at a mid timestep; an untrained one cannot."""
    sched = load_digits_scheduler(kind="ddpm")
    x0 = digits_images(16)[:64]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((64,), 500)
    xt = sched.add_noise(x0, noise, t)
    with torch.no_grad():
        eps = unet(xt, t).sample
    mse = torch.mean((eps - noise) ** 2).item()
    assert mse < 0.1, mse  # the shipped model: ~0.03; a freshly initialised one: ~1.1


def test_scheduler_config() -> None:
    sched = load_digits_scheduler(kind="ddim")
    assert sched.config.num_train_timesteps == 1000
    assert sched.config.prediction_type == "epsilon"
    with pytest.raises(TfmqError, match="kind"):
        load_digits_scheduler(kind="euler")


def test_shipped_classifier_heldout_accuracy() -> None:
    meta = json.loads((DIGITS_DIR / "classifier.json").read_text())
    model = load_digits_classifier()
    _, test_idx = digits_split(meta["split_seed"], meta["test_fraction"])
    acc = evaluate_classifier(model, digits_images(16)[test_idx], digits_labels()[test_idx])
    assert acc >= 0.95
    assert acc == pytest.approx(meta["heldout_accuracy"], abs=1e-3)
    feats = model.features(digits_images(16)[:5])
    assert feats.shape == (5, meta["config"]["feature_dim"])


def test_split_is_disjoint_stratified_and_deterministic() -> None:
    train, test = digits_split(0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 1797
    assert np.array_equal(test, digits_split(0)[1]) and not np.array_equal(test, digits_split(1)[1])
    assert set(digits_labels()[test]) == set(range(10))


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(TfmqError, match="does not exist"):
        load_digits_unet(tmp_path / "nope")
    (tmp_path / "unet").mkdir()
    with pytest.raises(TfmqError, match="incomplete"):
        load_digits_unet(tmp_path)
    with pytest.raises(TfmqError, match="missing"):
        load_digits_classifier(tmp_path / "classifier.safetensors")


def test_corrupt_unet_weights_raise(tmp_path: Path) -> None:
    copy = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR / "unet", copy / "unet")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(TfmqError, match="could not read the digits UNet"):
        load_digits_unet(copy)


def test_corrupt_classifier_raises(tmp_path: Path) -> None:
    shutil.copy(DIGITS_DIR / "classifier.json", tmp_path / "classifier.json")
    (tmp_path / "classifier.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(TfmqError, match="could not read the digits classifier"):
        load_digits_classifier(tmp_path / "classifier.safetensors")
