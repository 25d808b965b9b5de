"""EngineUNet: a user's own diffusers pipeline runs the exported UNet with ``pipe.unet = EngineUNet(DIR)``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfmq_export import EngineUNet, TfmqError

PROMPT, NEGATIVE, GUIDANCE, STEPS = "a handwritten digit seven", "blurry", 5.0, 3


def _export(model_dir, root, overrides, prompts=None):
    from tfmq_export.workflows.calibrate import calibrate_model
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    calibrate_model(str(model_dir), root / "art", {"steps": STEPS, **overrides}, prompts=prompts, progress=False)
    export_pipeline_folder(root / "art", root / "pipe")
    return root / "pipe"


def _call(pipe, latents, **options):
    return pipe(PROMPT, guidance_scale=GUIDANCE, num_inference_steps=STEPS, latents=latents,
                num_images_per_prompt=latents.shape[0], output_type="np", **options).images


@pytest.fixture(scope="module")
def sd_fp(sd_pipeline_dir, tmp_path_factory):
    """(exported FP pipeline folder, diffusers pipeline, latents, diffusers' own images)."""
    from diffusers import StableDiffusionPipeline

    folder = _export(sd_pipeline_dir, tmp_path_factory.mktemp("engine-unet"), {"wbits": 16, "abits": 16})
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    return folder, pipe, latents, _call(pipe, latents, negative_prompt=NEGATIVE)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_diffusers_pipeline_with_engine_unet_equals_its_own(sd_fp, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    folder, pipe, latents, reference = sd_fp
    original = pipe.unet
    try:
        pipe.unet = EngineUNet(folder, backend=backend)
        assert pipe.unet.config.in_channels == 4 and pipe.unet.config.sample_size == 8
        assert pipe.unet.config.time_cond_proj_dim is None and pipe.unet.dtype == torch.float32
        images = _call(pipe, latents, negative_prompt=NEGATIVE)
    finally:
        pipe.unet = original
    assert images.shape == reference.shape == (2, 16, 16, 3)
    assert float(np.abs(images - reference).max()) <= 2e-3
    assert float(np.abs(images[0] - images[1]).max()) > 1e-2  # two latents, two images


def test_engine_unet_call_matches_diffusers_unet(sd_fp):
    """The bare call: same signature, a UNet2DConditionOutput, the tuple with return_dict=False."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    folder, pipe, _, _ = sd_fp
    engine = EngineUNet(folder / "unet.onnx", config=pipe.unet.config)  # a bare UNet graph works too
    assert engine.config.block_out_channels == pipe.unet.config.block_out_channels  # the original's keys kept
    generator = torch.Generator().manual_seed(0)
    sample, text = torch.randn((2, 4, 8, 8), generator=generator), torch.randn((2, 16, 32), generator=generator)
    t = torch.tensor(334)
    out = engine(sample, t, encoder_hidden_states=text)
    assert isinstance(out, UNet2DConditionOutput)
    with torch.no_grad():
        want = pipe.unet(sample, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(out.sample, want, rtol=0, atol=1e-4)
    (tupled,) = engine(sample, torch.tensor([334, 334]), text, return_dict=False)
    torch.testing.assert_close(tupled, out.sample)
    engine.close()
    with pytest.raises(TfmqError, match="closed"):
        engine(sample, t, text)


def test_engine_unet_refusals(sd_fp, sd_pipeline_dir):
    folder, pipe, latents, _ = sd_fp
    engine = EngineUNet(folder)
    sample, text = latents, torch.zeros((2, 16, 32))
    with pytest.raises(TfmqError, match="timestep 500 has no row"):
        engine(sample, 500, text)
    with pytest.raises(TfmqError, match="does not support mid_block_additional_residual"):
        engine(sample, 334, text, mid_block_additional_residual=torch.zeros(1))
    with pytest.raises(TfmqError, match="does not support cross_attention_kwargs"):
        engine(sample, 334, text, cross_attention_kwargs={"scale": 0.5})
    with pytest.raises(TfmqError, match="needs encoder_hidden_states"):
        engine(sample, 334)
    with pytest.raises(TfmqError, match="sample_size"):
        EngineUNet(folder, config={**pipe.unet.config, "sample_size": 64})
    with pytest.raises(TfmqError, match="not a folder written by export-pipeline"):
        EngineUNet(sd_pipeline_dir)
    with pytest.raises(TfmqError, match="backend 'torch'"):
        EngineUNet(folder, backend="torch")
    # the pipeline's own call with a step count the table lacks: one line, through diffusers
    original = pipe.unet
    try:
        pipe.unet = engine
        with pytest.raises(TfmqError, match="no row"):
            pipe(PROMPT, num_inference_steps=5, output_type="np")
    finally:
        pipe.unet = original


def test_w8a8_engine_unet_runs_in_diffusers(sd_fp, sd_pipeline_dir, tmp_path):
    _, pipe, latents, reference = sd_fp
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    quantized = _export(sd_pipeline_dir, tmp_path, {"wbits": 8, "abits": 8, "num_samples": 2,
                                                    "guidance_scale": GUIDANCE}, prompts=prompts)
    original = pipe.unet
    try:
        pipe.unet = EngineUNet(quantized)
        assert pipe.unet.precision == "w8a8"
        images = _call(pipe, latents, negative_prompt=NEGATIVE)
    finally:
        pipe.unet = original
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    difference = float(np.abs(images - reference).mean())
    assert 0 < difference < 0.05, difference


def test_sdxl_pipeline_with_engine_unet_equals_its_own(sdxl_pipeline_dir, tmp_path):
    """SDXL: text_embeds and time_ids reach the graph through added_cond_kwargs; the size check of
    ``add_embedding`` passes with the derived config and with the original one."""
    from diffusers import StableDiffusionXLPipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    folder = _export(sdxl_pipeline_dir, tmp_path, {"wbits": 16, "abits": 16}, prompts=prompts)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    reference = _call(pipe, latents)
    for engine in (EngineUNet(folder), EngineUNet(folder, config=pipe.unet.config)):
        assert engine.config.addition_embed_type == "text_time"
        pipe.unet = engine
        assert float(np.abs(_call(pipe, latents) - reference).max()) <= 2e-3
        with pytest.raises(TfmqError, match="added_cond_kwargs needs 'text_embeds'"):
            engine(latents, 334, torch.zeros((2, 16, 64)))


def test_engine_unet_runs_the_built_engine(sd_fp, tmp_path):
    """After `build-engine DIR --backend openvino`, EngineUNet(DIR, backend="openvino") runs the IR it built."""
    pytest.importorskip("openvino")
    import shutil

    import tfmq_export

    folder, pipe, latents, reference = sd_fp
    copy = tmp_path / "pipe"
    shutil.copytree(folder, copy)
    tfmq_export.build_engine(copy, backend="openvino")
    engine = EngineUNet(copy, backend="openvino")
    assert engine.engine.suffix == ".xml" and engine.path.name == "unet.onnx"
    original = pipe.unet
    try:
        pipe.unet = engine
        images = _call(pipe, latents, negative_prompt=NEGATIVE)
    finally:
        pipe.unet = original
    assert float(np.abs(images - reference).max()) <= 2e-3
