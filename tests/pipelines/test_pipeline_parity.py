"""export-pipeline + sample DIR: the exported stages reproduce diffusers' own pipeline (the parity contract)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.test_bad_input import _refused
from tfmq_export.cli import cli

PROMPT, NEGATIVE, GUIDANCE, STEPS = "a handwritten digit seven", "blurry", 5.0, 3


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fp_export(sd_pipeline_dir, tmp_path_factory):
    """A full-precision artifact of the SD pipeline, exported; latents for two images."""
    root = tmp_path_factory.mktemp("fp-export")
    result = _run("calibrate", sd_pipeline_dir, "--out", root / "art", "--wbits", "16", "--abits", "16",
                  "--steps", STEPS, "--quiet")
    assert result.exit_code == 0, result.output
    result = _run("export-pipeline", root / "art", "--out", root / "pipe", "--target", "onnxruntime")
    assert result.exit_code == 0, result.output
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3)).numpy()
    np.save(root / "latents.npy", latents)
    return root


@pytest.fixture(scope="module")
def diffusers_images(sd_pipeline_dir, fp_export):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(np.load(fp_export / "latents.npy"))
    return pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, num_inference_steps=STEPS, latents=latents,
                num_images_per_prompt=2, output_type="np").images


def test_export_pipeline_writes_every_stage(fp_export, sd_pipeline_dir):
    from tfmq_export.models.loading import load_model

    folder = fp_export / "pipe"
    assert sorted(p.name for p in folder.iterdir()) == [
        "pipeline.json", "scheduler", "text_encoder.onnx", "tokenizer", "unet.onnx", "vae_decoder.onnx"]
    described = json.loads((folder / "pipeline.json").read_text())
    assert described["pipeline_class"] == "StableDiffusionPipeline"
    assert described["stages"]["text_encoder"]["outputs"] == ["last_hidden_state"]
    assert described["stages"]["vae_decoder"]["inputs"] == ["latents"]
    assert described["scaling_factor"] == pytest.approx(0.18215) and described["latent_shape"] == [4, 8, 8]
    assert described["timesteps"] == [667, 334, 1] and described["precision"] == "fp32"
    assert described["model_fingerprint"] == load_model(sd_pipeline_dir).fingerprint()
    assert not [p for p in fp_export.iterdir() if p.name.startswith(".")]  # no stage left behind


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sample_pipeline_equals_diffusers(backend, fp_export, diffusers_images, tmp_path):
    """The parity contract runs the float stages in FP32 (--float-stages fp32): OpenVINO's default
    precision (bf16 on AMX CPUs) is not within 2e-3 of diffusers."""
    if backend == "openvino":
        pytest.importorskip("openvino")
    npy = tmp_path / "images.npy"
    result = _run("sample", fp_export / "pipe", "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--guidance-scale",
                  GUIDANCE, "--latents", fp_export / "latents.npy", "--backend", backend, "--float-stages", "fp32",
                  "--out", tmp_path / "grid.png", "--npy", npy)
    assert result.exit_code == 0, result.output
    images = np.load(npy)
    assert images.dtype == np.float32 and images.shape == diffusers_images.shape == (2, 16, 16, 3)
    assert float(np.abs(images - diffusers_images).max()) <= 2e-3
    assert float(np.abs(images[0] - images[1]).max()) > 1e-2  # two latents, two different images
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_w8a8_pipeline_samples(sd_pipeline_dir, fp_export, diffusers_images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    result = _run("calibrate", sd_pipeline_dir, "--out", tmp_path / "art", "--prompts", prompts, "--guidance-scale",
                  GUIDANCE, "--negative-prompt", NEGATIVE, "--wbits", "8", "--abits", "8", "--steps", STEPS,
                  "--num-samples", "4", "--quiet")
    assert result.exit_code == 0, result.output
    result = _run("export-pipeline", tmp_path / "art", "--out", tmp_path / "pipe")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["guidance_scale"] == GUIDANCE
    result = _run("sample", tmp_path / "pipe", "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                  "--latents", fp_export / "latents.npy", "--out", tmp_path / "grid.png", "--npy", tmp_path / "q.npy")
    assert result.exit_code == 0, result.output
    images = np.load(tmp_path / "q.npy")
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    difference = float(np.abs(images - diffusers_images).mean())
    assert 0 < difference < 0.05, difference


def test_sample_pipeline_bad_input(fp_export, tmp_path):
    pipe, out = fp_export / "pipe", tmp_path / "grid.png"
    _refused(_run("sample", pipe, "--out", out), "give --prompt", left=(out,))
    _refused(_run("sample", pipe, "--prompt", PROMPT, "--guidance-scale", "0.5", "--out", out),
             "--guidance-scale 0.5", left=(out,))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 4, 4, 4), dtype=np.float32))
    _refused(_run("sample", pipe, "--prompt", PROMPT, "--latents", bad, "--out", out), "[N, 4, 8, 8]", left=(out,))
    _refused(_run("sample", pipe, "--prompt", PROMPT, "--backend", "torch", "--out", out),
             "--backend torch runs the torch simulation of an artifact folder", left=(out,))
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    _refused(_run("export-pipeline", fp_export / "art", "--out", full), "no pipeline.json", left=())
    assert (full / "notes.txt").read_text() == "mine"


def test_euler_pipeline_equals_diffusers(sd_pipeline_dir, tmp_path):
    """Another scheduler plugs into the same guided loop: calibrated with Euler, sampled with Euler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from tfmq_export.workflows.calibrate import calibrate_model
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder
    from tfmq_export.workflows.sample_pipeline import pipeline_images

    overrides = {"wbits": 16, "abits": 16, "steps": STEPS, "scheduler": "euler"}
    calibrate_model(str(sd_pipeline_dir), tmp_path / "art", overrides, progress=False)
    described = export_pipeline_folder(tmp_path / "art", tmp_path / "pipe")
    assert described["sampler"] == "euler"
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    ours = pipeline_images(tmp_path / "pipe", PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE,
                           latents=latents)
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, num_inference_steps=STEPS,
                     latents=latents, output_type="np").images
    assert float(np.abs(ours - reference).max()) <= 2e-3


def test_all_timesteps_pipeline_runs_any_step_count(sd_pipeline_dir, fp_export, tmp_path):
    """export-pipeline --timesteps all: one export samples 5 steps as diffusers does (calibrated on 3);
    a sampler export refuses that step count in one line."""
    from diffusers import StableDiffusionPipeline

    result = _run("export-pipeline", fp_export / "art", "--out", tmp_path / "pipe", "--timesteps", "all")
    assert result.exit_code == 0, result.output
    described = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert len(described["timesteps"]) == 1000 and described["num_inference_steps"] == STEPS
    npy = tmp_path / "images.npy"
    result = _run("sample", tmp_path / "pipe", "--prompt", PROMPT, "--guidance-scale", GUIDANCE, "--steps", "5",
                  "--latents", fp_export / "latents.npy", "--out", tmp_path / "grid.png", "--npy", npy)
    assert result.exit_code == 0, result.output
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, guidance_scale=GUIDANCE, num_inference_steps=5, num_images_per_prompt=2,
                     latents=torch.from_numpy(np.load(fp_export / "latents.npy")), output_type="np").images
    assert float(np.abs(np.load(npy) - reference).max()) <= 2e-3
    out = tmp_path / "refused.png"
    _refused(_run("sample", fp_export / "pipe", "--prompt", PROMPT, "--steps", "5", "--out", out), "no row",
             left=(out,))


@pytest.mark.parametrize("guidance", [1.0, GUIDANCE])
def test_v_prediction_pipeline_equals_diffusers(sd_vpred_pipeline_dir, guidance, tmp_path):
    """SD 2.x style (prediction_type v_prediction from the scheduler config), with and without guidance."""
    from diffusers import StableDiffusionPipeline

    from tfmq_export.workflows.calibrate import calibrate_model
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder
    from tfmq_export.workflows.sample_pipeline import pipeline_images

    calibrate_model(str(sd_vpred_pipeline_dir), tmp_path / "art", {"wbits": 16, "abits": 16, "steps": STEPS},
                    progress=False)
    export_pipeline_folder(tmp_path / "art", tmp_path / "pipe")
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    ours = pipeline_images(tmp_path / "pipe", PROMPT, guidance_scale=guidance, latents=latents)
    pipe = StableDiffusionPipeline.from_pretrained(sd_vpred_pipeline_dir, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, guidance_scale=guidance, num_inference_steps=STEPS, latents=latents,
                     output_type="np").images
    assert float(np.abs(ours - reference).max()) <= 2e-3
