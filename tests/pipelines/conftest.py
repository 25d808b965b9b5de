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
