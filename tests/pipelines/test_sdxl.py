"""SDXL pieces that do not need the UNet graph: two text encoders, encoded as diffusers does and exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfmq_export.contract import INPUT_CONDITIONS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_sdxl_encode_matches_diffusers(sdxl_pipeline_dir, negative):
    from diffusers import StableDiffusionXLPipeline

    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encode_guided

    loaded = load_model(sdxl_pipeline_dir)
    assert loaded.pipeline.is_xl and loaded.pipeline.encoder_names == ("text_encoder", "text_encoder_2")
    guided = encode_guided(loaded.pipeline, ["a handwritten digit seven"], negative, 5.0, 8)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline_dir, local_files_only=True)
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt("a handwritten digit seven", negative_prompt=negative)
    torch.testing.assert_close(guided.cond[INPUT_CONDITIONS], cond, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided.uncond[INPUT_CONDITIONS], uncond, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided.cond[INPUT_TEXT_EMBEDS], pooled, rtol=0, atol=1e-6)
    torch.testing.assert_close(guided.uncond[INPUT_TEXT_EMBEDS], uncond_pooled, rtol=0, atol=1e-6)
    assert (negative is None) == bool((guided.uncond[INPUT_CONDITIONS] == 0).all())  # zeros for no negative
    expected_ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), torch.float32,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    torch.testing.assert_close(guided.cond[INPUT_TIME_IDS], expected_ids)


def test_sdxl_text_encoders_export(sdxl_pipeline_dir, tmp_path):
    """Both encoders export; the second also gives its pooled, projected output, equal to torch."""
    import onnxruntime as ort

    from tfmq_export.export.pipeline import _export_text_encoders
    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encoder_outputs, tokenize

    parts = load_model(sdxl_pipeline_dir).pipeline
    stages = _export_text_encoders(parts, tmp_path)
    assert stages["text_encoder"]["outputs"] == ["penultimate_hidden_state"]
    assert stages["text_encoder_2"]["outputs"] == ["penultimate_hidden_state", "text_embeds"]
    assert (tmp_path / "tokenizer_2" / "tokenizer_config.json").is_file()
    for pair in parts.text_encoders():
        ids = tokenize(pair.tokenizer, ["a handwritten digit seven", "a digit"])
        session = ort.InferenceSession(str(tmp_path / f"{pair.name}.onnx"), providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_ids": ids})))
        with torch.no_grad():
            want = encoder_outputs(pair, torch.from_numpy(ids), xl=True)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value.numpy(), rtol=0, atol=1e-5)


def test_sd_artifact_on_sdxl_folder_refused(sd_pipeline_dir, sdxl_pipeline_dir, tmp_path):
    from click.testing import CliRunner

    from tests.test_bad_input import _refused
    from tfmq_export.cli import cli

    art = tmp_path / "art"
    result = CliRunner().invoke(cli, ["calibrate", str(sd_pipeline_dir), "--out", str(art), "--wbits", "16",
                                      "--abits", "16", "--steps", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "pipe"
    result = CliRunner().invoke(cli, ["export-pipeline", str(art), "--out", str(out),
                                      "--model", str(sdxl_pipeline_dir)])
    _refused(result, "calibrated on", "calibrate this model first", left=(out,))


@pytest.fixture(scope="module")
def xl_latents():
    return torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def xl_reference(sdxl_pipeline_dir, xl_latents):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe("a handwritten digit seven", negative_prompt="blurry", guidance_scale=5.0, num_inference_steps=3,
                latents=xl_latents, num_images_per_prompt=2, output_type="np").images


def _calibrate_export(pipe_dir, root, *args):
    from click.testing import CliRunner

    from tfmq_export.cli import cli

    result = CliRunner().invoke(cli, ["calibrate", str(pipe_dir), "--out", str(root / "art"), "--steps", "3",
                                      "--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export-pipeline", str(root / "art"), "--out", str(root / "pipe")])
    assert result.exit_code == 0, result.output
    return root / "pipe"


def test_sdxl_pipeline_equals_diffusers(sdxl_pipeline_dir, xl_latents, xl_reference, tmp_path):
    """The parity contract for SDXL: text_embeds/time_ids are UNet graph inputs, h(t) alone is the table."""
    import json

    from tfmq_export.workflows.sample_pipeline import pipeline_images

    folder = _calibrate_export(sdxl_pipeline_dir, tmp_path, "--wbits", "16", "--abits", "16")
    described = json.loads((folder / "pipeline.json").read_text())
    assert described["stages"]["unet"]["inputs"] == ["sample", "step_index", "encoder_hidden_states", "text_embeds",
                                                     "time_ids"]
    assert described["time_ids"] == [16, 16, 0, 0, 16, 16] and (folder / "text_encoder_2.onnx").is_file()
    backends = ["onnxruntime"] + (["openvino"] if _has("openvino") else [])
    for backend in backends:
        images = pipeline_images(folder, "a handwritten digit seven", negative_prompt="blurry", guidance_scale=5.0,
                                 latents=xl_latents, backend=backend, float_stages="fp32")
        assert float(np.abs(images - xl_reference).max()) <= 2e-3, backend


def test_sdxl_w8a8_samples(sdxl_pipeline_dir, xl_latents, xl_reference, tmp_path):
    from tfmq_export.workflows.sample_pipeline import pipeline_images

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    folder = _calibrate_export(sdxl_pipeline_dir, tmp_path, "--prompts", prompts, "--negative-prompt", "blurry",
                               "--guidance-scale", "5", "--wbits", "8", "--abits", "8", "--num-samples", "4")
    images = pipeline_images(folder, "a handwritten digit seven", negative_prompt="blurry", latents=xl_latents)
    assert np.isfinite(images).all()
    assert 0 < float(np.abs(images - xl_reference).mean()) < 0.05


def test_sdxl_calibration_limits(sdxl_pipeline_dir, tmp_path):
    """--conditions lacks text_embeds/time_ids: refused for SDXL (every --method works from --prompts,
    tests/pipelines/test_sdxl_reconstruction.py)."""
    from click.testing import CliRunner

    from tests.test_bad_input import _refused
    from tfmq_export.cli import cli

    conditions = tmp_path / "c.npy"
    np.save(conditions, np.zeros((1, 8, 64), dtype=np.float32))
    out = tmp_path / "art"
    result = CliRunner().invoke(cli, ["calibrate", str(sdxl_pipeline_dir), "--out", str(out), "--conditions",
                                      str(conditions), "--method", "tfmq", "--steps", "2", "--quiet"])
    _refused(result, "--prompts", "time_ids", left=(out,))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
