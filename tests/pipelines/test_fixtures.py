"""The test pipelines are real diffusers folders and the written tokenizer keeps prompt words whole."""

from __future__ import annotations

import json

from tests.pipelines.tiny_pipeline import WORDS, tiny_tokenizer


def test_tokenizer_keeps_words_whole():
    tokenizer = tiny_tokenizer(max_length=16)
    ids = tokenizer("a handwritten digit seven", padding="max_length", max_length=16).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:6] == ["<|startoftext|>", "a</w>", "handwritten</w>", "digit</w>", "seven</w>", "<|endoftext|>"]
    for word in WORDS:
        assert len(tokenizer(word).input_ids) == 3, word  # bos, the word, eos
    assert tokenizer.convert_ids_to_tokens(tokenizer("xyz").input_ids)[1:4] == ["x", "y", "z</w>"]


def test_sd_folder_loads_in_diffusers(sd_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    index = json.loads((sd_pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    images = pipe("a handwritten digit seven", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)
