"""``export-pipeline --precision fp16``: every stage FP16 inside, float32 at its edges, recorded in
pipeline.json; it samples the FP32 folder's images within FP16 tolerance; TensorRT builds FP16 stages
strongly typed; SDXL's VAE decoder stays FP32 (diffusers' ``force_upcast``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP

#: sampled images in [0, 1], FP16 pipeline vs FP32 pipeline (3 DDIM steps, tiny random pipeline)
FP16_IMAGE_BOUND = 2e-2


@pytest.fixture(scope="module")
def fp16_pair(sd_exported_pair, tmp_path_factory):
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    out = tmp_path_factory.mktemp("fp16-pipe") / "pipe"
    art = sd_exported_pair["fp32"].parent / "art-fp32"
    described = export_pipeline_folder(art, out, target="tensorrt")  # fp16: the tensorrt target's default
    return sd_exported_pair["fp32"], out, described


def test_fp16_pipeline_json_and_stages(fp16_pair):
    fp32_dir, fp16_dir, described = fp16_pair
    assert described["float_precision"] == "fp16" and described["precision"] == "fp16"
    assert {s["precision"] for s in described["stages"].values()} == {"fp16"}
    assert "float_precision" not in json.loads((fp32_dir / "pipeline.json").read_text())  # absent = fp32
    for name, stage in described["stages"].items():
        graph = onnx.load(str(fp16_dir / stage["file"]))
        floats = {t.data_type for t in graph.graph.initializer if t.data_type in (TP.FLOAT, TP.FLOAT16)}
        assert floats == {TP.FLOAT16}, name
        for value in [*graph.graph.input, *graph.graph.output]:
            assert value.type.tensor_type.elem_type in (TP.FLOAT, TP.INT64), (name, value.name)
        size32 = (fp32_dir / stage["file"]).stat().st_size
        assert (fp16_dir / stage["file"]).stat().st_size < 0.7 * size32, name  # tiny graphs: nodes weigh too


def test_fp16_pipeline_samples_the_fp32_images(fp16_pair, tmp_path):
    import tfmq_export

    fp32_dir, fp16_dir, _ = fp16_pair
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    images = {d.name: tfmq_export.sample(d, prompt="a handwritten digit seven", latents=latents)
              for d in (fp32_dir, fp16_dir)}
    a, b = images[fp32_dir.name], images[fp16_dir.name]
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert 0 < float(np.abs(a - b).max()) < FP16_IMAGE_BOUND


def test_tensorrt_builds_fp16_stages_strongly_typed(fp16_pair):
    from tfmq_export.workflows.build_pipeline import _stage_options

    _, _, described = fp16_pair
    for float_stages in ("fp16", "fp32"):  # strongly typed: the FP16 graph is the FP16 engine
        assert _stage_options("tensorrt", "text_encoder", described, (1, 2, 2), None, float_stages)["fp16"] is False
    older = {**described, "stages": {**described["stages"], "text_encoder": {"file": "text_encoder.onnx"}}}
    assert _stage_options("tensorrt", "text_encoder", older, (1, 2, 2), None, "fp16")["fp16"] is True
    assert _stage_options("tensorrt", "text_encoder", older, (1, 2, 2), None, "fp32")["fp16"] is False


def test_sdxl_vae_decoder_stays_fp32(sdxl_pipeline_dir, sd_pipeline_dir):
    from tfmq_export.export.pipeline import vae_precision
    from tfmq_export.models.loading import load_model

    assert vae_precision(load_model(str(sdxl_pipeline_dir)).pipeline, "fp16") == "fp32"
    assert vae_precision(load_model(str(sd_pipeline_dir)).pipeline, "fp16") == "fp16"
