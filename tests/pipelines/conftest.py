"""Pipeline folders for the text-to-image tests, built once per session (random weights, offline)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines.tiny_pipeline import build_sd_pipeline, build_sdxl_pipeline


@pytest.fixture(scope="session")
def sd_pipeline_dir(tmp_path_factory) -> Path:
    """A StableDiffusionPipeline folder (epsilon prediction, DDIM scheduler)."""
    return build_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="session")
def sd_vpred_pipeline_dir(tmp_path_factory) -> Path:
    """The same pipeline with a v-prediction scheduler config (SD 2.x style)."""
    return build_sd_pipeline(tmp_path_factory.mktemp("sdv") / "pipe", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def sdxl_pipeline_dir(tmp_path_factory) -> Path:
    """A StableDiffusionXLPipeline folder (two text encoders, ``text_time`` added conditioning)."""
    return build_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "pipe")


@pytest.fixture(scope="session")
def sd_exported_pair(sd_pipeline_dir, tmp_path_factory) -> dict[str, Path]:
    """The SD pipeline exported twice (3 DDIM steps): full precision and W8A8 (minmax, 2 prompts)."""
    from tfmq_export.workflows.calibrate import calibrate_model
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    root = tmp_path_factory.mktemp("exported-pair")
    prompts = root / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    out = {}
    for name, overrides in (("fp32", {"wbits": 16, "abits": 16}),
                            ("w8a8", {"wbits": 8, "abits": 8, "method": "minmax", "num_samples": 2})):
        calibrate_model(str(sd_pipeline_dir), root / f"art-{name}", {**overrides, "steps": 3}, prompts=prompts,
                        progress=False)
        export_pipeline_folder(root / f"art-{name}", root / name)
        out[name] = root / name
    return out
