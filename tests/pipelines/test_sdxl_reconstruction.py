"""qdiff and tfmq on SDXL: block reconstruction carries the ``text_time`` added conditions.

The calibration data packs ``text_embeds``/``time_ids`` with the conditions
(``temporal.pack_added_conditions``); the table UNet unpacks them, so every captured block input
and full-precision target is what diffusers' own UNet computes with those conditions. The
temporal branch of an SDXL UNet is the time MLP alone (h(t)): the ResBlocks' projections see
h(t) + aug(text_embeds, time_ids) and stay float layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.pipelines.test_sdxl import _calibrate_export
from tfmq_export.contract import INPUT_CONDITIONS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: two threads only wait on each other

#: the rows of the table and the timesteps diffusers runs at them (3 DDIM steps of the tiny scheduler)
STEPS = 3
#: mean |image - diffusers FP image| of the exported W8A8 pipelines; measured 0.006-0.011 (qdiff,
#: tfmq, minmax alike) on the tiny random-weight SDXL folder, ~3x margin
MEAN_TOLERANCE = 0.03


@pytest.fixture(scope="module")
def xl_loaded(sdxl_pipeline_dir):
    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encode_guided

    loaded = load_model(sdxl_pipeline_dir)
    loaded.guided = encode_guided(loaded.pipeline, ["a handwritten digit seven", "a handwritten digit one"],
                                  "blurry", 5.0, 8)
    return loaded


def _xl_data(loaded, timesteps, time_ids_offset: float = 0.0):
    """Calibration-shaped data: both halves of two prompts at every row, added conditions packed."""
    from tfmq_export.calibration.data import CalibrationData
    from tfmq_export.temporal import pack_added_conditions

    feed = loaded.guided.model_batch()
    n = feed[INPUT_CONDITIONS].shape[0]
    packed = pack_added_conditions(feed[INPUT_CONDITIONS], feed[INPUT_TEXT_EMBEDS],
                                   feed[INPUT_TIME_IDS] + time_ids_offset)
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn((n * len(timesteps), *loaded.sample_shape), generator=generator)
    rows = torch.arange(len(timesteps)).repeat_interleave(n)
    return CalibrationData(samples, rows, packed.repeat(len(timesteps), 1, 1), list(timesteps))


def _diffusers_block_io(unet: nn.Module, name: str, data, timesteps, time_ids_offset: float = 0.0):
    """(call args, output) of module ``name`` inside diffusers' own UNet, on the unpacked data."""
    from tfmq_export.models.adapter import UNetAdapter
    from tfmq_export.temporal import unpack_added_conditions

    seen: dict[str, object] = {}

    def hook(_module, args, output):
        seen["args"], seen["out"] = args, output

    ehs, text_embeds, time_ids = unpack_added_conditions(data.conditions, UNetAdapter(unet).text_embeds_dim)
    handle = unet.get_submodule(name).register_forward_hook(hook)
    try:
        with torch.no_grad():
            unet(data.samples, torch.tensor(timesteps)[data.step_index], encoder_hidden_states=ehs,
                 added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids + time_ids_offset})
    finally:
        handle.remove()
    return seen["args"], seen["out"]


def test_block_io_carries_added_conditions(xl_loaded):
    """Captured block inputs and FP targets equal diffusers' UNet run with text_embeds/time_ids, and
    the ResBlocks' time input changes with time_ids (the added embedding is in it)."""
    from tfmq_export.calibration.block_io import capture_inputs, capture_outputs
    from tfmq_export.sampling import sampler_timesteps
    from tfmq_export.temporal import build_table_unet

    unet = xl_loaded.unet
    timesteps = sampler_timesteps(xl_loaded.scheduler_config, STEPS)
    fp_sim = build_table_unet(unet, timesteps).eval()
    data = _xl_data(xl_loaded, timesteps)
    resnet, transformer = "down_blocks.0.resnets.0", "down_blocks.0.attentions.0.transformer_blocks.0"
    captured = capture_inputs(fp_sim, resnet, data.batches(4))
    args, _ = captured.select(torch.arange(len(data)))
    want_args, want_out = _diffusers_block_io(unet, resnet, data, timesteps)
    torch.testing.assert_close(args[1], want_args[1], rtol=1e-5, atol=1e-5)  # temb = h(t) + aug(...)
    torch.testing.assert_close(capture_outputs(fp_sim, resnet, data.batches(4)), want_out, rtol=1e-5, atol=1e-5)
    _, want_attn = _diffusers_block_io(unet, transformer, data, timesteps)
    torch.testing.assert_close(capture_outputs(fp_sim, transformer, data.batches(4)), want_attn, rtol=1e-5,
                               atol=1e-5)

    shifted = _xl_data(xl_loaded, timesteps, time_ids_offset=8.0)
    moved_args, _ = capture_inputs(fp_sim, resnet, shifted.batches(4)).select(torch.arange(len(data)))
    assert float((moved_args[1] - args[1]).abs().max()) > 1e-3  # the added embedding reaches the blocks
    torch.testing.assert_close(moved_args[1], _diffusers_block_io(unet, resnet, data, timesteps, 8.0)[0][1],
                               rtol=1e-5, atol=1e-5)


def test_sdxl_temporal_branch_is_the_time_mlp(xl_loaded):
    """SDXL's TIB is h(t) alone (the table), and TIAR lowers its error with the MLP's Linear layers only."""
    from tfmq_export.calibration.reconstruction import ReconstructionOptions
    from tfmq_export.calibration.tfmq import quantize_branch, tiar
    from tfmq_export.calibration.weights import init_weight_scales
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.models.adapter import UNetAdapter
    from tfmq_export.temporal import TIME_EMBEDDING_TABLE, TemporalBranch, timestep_tensor

    unet = xl_loaded.unet
    timesteps = [999, 500, 1]
    assert UNetAdapter(unet).tib_quantized_names() == ["time_embedding.linear_2"]
    table = TemporalBranch(unet, timesteps).table()
    with torch.no_grad():
        want = unet.time_embedding(unet.time_proj(timestep_tensor(timesteps)))
    assert list(table) == [TIME_EMBEDDING_TABLE]
    torch.testing.assert_close(table[TIME_EMBEDDING_TABLE], want)
    branch = TemporalBranch(unet, timesteps).requires_grad_(False)
    layers = quantize_branch(branch, 4, 16)
    assert list(layers) == ["time_embedding.linear_2"]
    init_weight_scales(layers, "max")
    options = ReconstructionOptions.from_settings(CalibrationSettings(method="tfmq", wbits=4, abits=16, iters=60))
    result, frozen = tiar(branch, layers, table, options, 60, 0, progress=False)
    assert result.error_after < result.error_before and set(frozen) == {"time_embedding.linear_2.weight_int"}


@pytest.fixture(scope="module")
def xl_reference(sdxl_pipeline_dir):
    from diffusers import StableDiffusionXLPipeline

    latents = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a handwritten digit seven", negative_prompt="blurry", guidance_scale=5.0,
                  num_inference_steps=STEPS, latents=latents, num_images_per_prompt=2, output_type="np").images
    return latents, images


@pytest.mark.parametrize("method", ["qdiff", "tfmq"])
def test_sdxl_reconstruction_methods_export_and_sample(method, sdxl_pipeline_dir, xl_reference, tmp_path):
    """calibrate --method qdiff|tfmq on SDXL, export-pipeline, sample: W8A8 images near diffusers' FP
    images; the table is h(t) (quantized for qdiff, FP for tfmq) and no ResBlock projection is quantized."""
    from tfmq_export.artifact import load_artifact
    from tfmq_export.models.adapter import UNetAdapter
    from tfmq_export.models.loading import load_model
    from tfmq_export.temporal import TIME_EMBEDDING_TABLE, compute_temporal_features
    from tfmq_export.workflows.sample_pipeline import pipeline_images

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    folder = _calibrate_export(sdxl_pipeline_dir, tmp_path, "--prompts", prompts, "--negative-prompt", "blurry",
                               "--guidance-scale", "5", "--method", method, "--wbits", "8", "--abits", "8",
                               "--num-samples", "2", "--iters", "8")
    artifact = load_artifact(tmp_path / "art")
    loaded_unet = load_model(sdxl_pipeline_dir).unet
    assert set(artifact.layers) == set(UNetAdapter(loaded_unet).quantizable_layers())
    fp_table = compute_temporal_features(loaded_unet, artifact.timesteps)[TIME_EMBEDDING_TABLE]
    table = artifact.tensors[f"temporal.{TIME_EMBEDDING_TABLE}"]
    if method == "qdiff":  # the table comes from the quantized time MLP (linear_2 at W8)
        error = float((table - fp_table).abs().max() / fp_table.abs().max())
        assert 0 < error < 0.05, error
    else:  # FSC statistics of h(t) and the TIAR integers of linear_2; the deployed table is FP
        torch.testing.assert_close(table, fp_table)
        assert artifact.tensors[f"fsc.{TIME_EMBEDDING_TABLE}.step_min"].shape == (STEPS,)
        assert "tib.time_embedding.linear_2.weight_int" in artifact.tensors

    # on these random weights another prompt moves the FP images by 0.007 and other size time_ids by
    # 0.004 (mean), other latents by 0.15: images cannot show the conditioning, the block test does
    latents, reference = xl_reference
    images = pipeline_images(folder, "a handwritten digit seven", negative_prompt="blurry", guidance_scale=5.0,
                             latents=latents)
    mean = float(np.abs(images - reference).mean())
    assert 0 < mean < MEAN_TOLERANCE, mean
