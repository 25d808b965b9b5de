"""The bundled text-to-image model digits-text: a real StableDiffusionPipeline folder that follows prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy
from tfmq_export.models.clip_vocab import build_clip_tokenizer
from tfmq_export.models.digits_text import (
    DIGITS_TEXT_DIR,
    digit_prompt,
    digits_text_prompts,
    parse_digit_prompt,
)
from tfmq_export.models.digits_text_training import train_digits_text
from tfmq_export.models.loading import load_model


def test_prompt_words_are_single_tokens_and_other_words_still_tokenize() -> None:
    tokenizer = build_clip_tokenizer(16)
    ids = tokenizer("a handwritten digit seven").input_ids
    assert len(ids) == 4 + 2  # four words, BOS and EOS
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "a handwritten digit seven"
    unknown = tokenizer("zebra").input_ids  # a word outside the vocabulary falls back to letters and merges
    assert len(unknown) - 2 > 1 and tokenizer.decode(unknown, skip_special_tokens=True).strip() == "zebra"


def test_prompts_name_their_digit() -> None:
    assert digits_text_prompts()[7] == "a handwritten digit seven" == digit_prompt(7)
    assert [parse_digit_prompt(p) for p in digits_text_prompts()] == list(range(10))
    assert parse_digit_prompt("the number one, not seven") == 7  # the last digit word counts
    assert parse_digit_prompt("a blurry photo") is None
    with pytest.raises(TfmqError, match="not 0-9"):
        digit_prompt(10)


def test_the_shipped_folder_is_a_pipeline_our_loader_and_diffusers_both_read() -> None:
    loaded = load_model("digits-text")
    assert loaded.name == "digits-text" and loaded.pipeline is not None and loaded.is_conditional
    assert loaded.sample_shape == (4, 8, 8)
    record = json.loads((DIGITS_TEXT_DIR / "training.json").read_text())
    assert record["unet_iters"] >= 1000 and record["scaling_factor"] > 0


def test_the_shipped_model_draws_the_prompted_digit() -> None:
    """Full precision through diffusers' own pipeline: with guidance the classifier sees the prompted
    digit in most images, and guidance helps (the same noise without it is less often right)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(DIGITS_TEXT_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    per_digit = 3
    latents = torch.randn((10 * per_digit, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    prompts = [p for p in digits_text_prompts() for _ in range(per_digit)]
    digits = np.repeat(np.arange(10), per_digit)
    accuracy = {}
    for scale in (1.0, 2.0):
        images = pipe(prompts, num_inference_steps=15, guidance_scale=scale, latents=latents,
                      output_type="np").images
        assert images.shape == (30, 16, 16, 3)
        accuracy[scale] = prompt_accuracy(pipeline_to_digits(images), digits)
    assert accuracy[2.0] >= 0.8
    assert accuracy[2.0] >= accuracy[1.0]


def test_training_writes_a_complete_pipeline_and_refuses_zero_iterations(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "dt"
    record = train_digits_text(out, vae_iters=2, unet_iters=2, batch_size=8, progress=False)
    assert record["unet_iters"] == 2 and np.isfinite(record["unet_final_loss"])
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt"]  # no staging folder left behind
    with pytest.raises(TfmqError, match="must be >= 1"):
        train_digits_text(tmp_path / "none", unet_iters=0, progress=False)
    assert not (tmp_path / "none").exists()
