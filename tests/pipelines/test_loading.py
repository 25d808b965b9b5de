"""Pipeline folders: loaded with their stages, bad folders refused in one line, prompts encoded as diffusers does."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tfmq_export.contract import INPUT_CONDITIONS
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import load_model
from tfmq_export.models.prompts import encode_guided, read_prompts, tokenize


def _copy(src, tmp_path):
    dst = tmp_path / "pipe"
    shutil.copytree(src, dst)
    return dst


def test_pipeline_folder_loads_its_parts(sd_pipeline_dir, sd_vpred_pipeline_dir):
    loaded = load_model(sd_pipeline_dir)
    assert loaded.pipeline is not None and loaded.pipeline.class_name == "StableDiffusionPipeline"
    assert loaded.is_conditional and loaded.scheduler_config["_class_name"] == "DDIMScheduler"
    assert "text_encoder" not in loaded.pipeline._cache  # lazily loaded
    assert type(loaded.pipeline.text_encoder()).__name__ == "CLIPTextModel"
    assert load_model(sd_vpred_pipeline_dir).pipeline.prediction_type == "v_prediction"
    assert load_model("digits").pipeline is None  # a UNet-only pipeline folder keeps loading as before


def test_other_pipeline_class_refused(sd_pipeline_dir, tmp_path):
    path = _copy(sd_pipeline_dir, tmp_path)
    index = json.loads((path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(TfmqError, match="StableDiffusionInpaintPipeline pipeline; supported pipelines: "
                                        "StableDiffusionPipeline, StableDiffusionXLPipeline"):
        load_model(path)


def test_missing_stage_refused(sd_pipeline_dir, tmp_path):
    path = _copy(sd_pipeline_dir, tmp_path)
    shutil.rmtree(path / "vae")
    with pytest.raises(TfmqError, match=r"missing its vae/ stage") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_tokenizer_larger_than_text_encoder_refused(sd_pipeline_dir, tmp_path):
    path = _copy(sd_pipeline_dir, tmp_path)
    config = json.loads((path / "text_encoder" / "config.json").read_text())
    config["vocab_size"] = 50
    (path / "text_encoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(TfmqError, match="tokenizer/ has 114 tokens but text_encoder/ embeds only 50"):
        load_model(path)


def test_prompts_file(tmp_path):
    good = tmp_path / "p.txt"
    good.write_text("a handwritten digit seven\n\n  a handwritten digit one \n")
    assert read_prompts(good) == ["a handwritten digit seven", "a handwritten digit one"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(TfmqError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(TfmqError, match="is not a text file"):
        read_prompts(tmp_path / "bin.txt")


def test_long_prompt_truncated_with_warning(sd_pipeline_dir, caplog):
    """One logged line (as diffusers logs its own), naming the limit and the cut-off words."""
    import logging

    tokenizer = load_model(sd_pipeline_dir).pipeline.tokenizer()
    with caplog.at_level(logging.WARNING, logger="tfmq_export.models.prompts"):
        ids = tokenize(tokenizer, [" ".join(["seven"] * 20)])
    (record,) = [r for r in caplog.records if r.name == "tfmq_export.models.prompts"]
    line = record.getMessage()
    assert "longer than the tokenizer's 16 tokens" in line and "cut off: 'seven" in line and "\n" not in line
    assert ids.shape == (1, 16) and ids[0, -1] == tokenizer.eos_token_id


def test_encode_matches_diffusers(sd_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    loaded = load_model(sd_pipeline_dir)
    guided = encode_guided(loaded.pipeline, ["a handwritten digit seven", "a digit"], "blurry", 3.0, 8)
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    cond, uncond = pipe.encode_prompt(["a handwritten digit seven", "a digit"], "cpu", 1, True, ["blurry"] * 2)
    torch.testing.assert_close(guided.cond[INPUT_CONDITIONS], cond, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided.uncond[INPUT_CONDITIONS], uncond, rtol=0, atol=1e-6)
    assert guided.model_batch()[INPUT_CONDITIONS].shape == (4, 16, 32)
    with pytest.raises(TfmqError, match=r"guidance-scale 0\.5 must be at least 1"):
        encode_guided(loaded.pipeline, ["a digit"], None, 0.5, 8)
