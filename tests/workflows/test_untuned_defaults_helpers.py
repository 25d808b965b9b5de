"""The pure helpers of ``benchmarks/untuned_defaults.py``: variant parsing, overrides, paired MSE, ratios."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tfmq_export.config import CalibrationSettings, settings_from

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "untuned_defaults.py"
_spec = importlib.util.spec_from_file_location("untuned_defaults", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_variant_with_ablations_becomes_valid_settings_and_extra():
    base, mods = bench.parse_variant("tfmq-w4a8+static_scale_rule=mse+step_factors+iters=20")
    assert base == "tfmq-w4a8"
    assert mods == {"static_scale_rule": "mse", "step_factors": True, "iters": 20}
    over = bench.variant_overrides(base, mods, CalibrationSettings.field_names(), steps=50, seed=0)
    settings = settings_from(None, over)
    assert (settings.method, settings.wbits, settings.abits, settings.steps) == ("tfmq", 4, 8, 50)
    assert settings.static_scale_rule == "mse" and settings.iters == 20
    assert settings.extra == {"step_factors": True}


def test_fp_is_16_bit_and_bad_variants_are_refused():
    over = bench.variant_overrides("fp", {}, CalibrationSettings.field_names(), steps=50)
    assert not settings_from(None, over).quantized
    for bad in ("tfmq-w2a8", "awq-w4a8", "modelopt-int8+alpha=0.5", "fp+iters=3"):
        with pytest.raises(ValueError):
            bench.parse_variant(bad)


def test_paired_mse_clips_and_ratios_compare_tfmq():
    ref = np.zeros((2, 4, 4, 3))
    img = np.full_like(ref, 2.0)  # clipped to 1
    assert bench.paired_mse(img, ref, (0.0, 1.0)) == pytest.approx(1.0)
    rows = {"tfmq-w4a8": {"mse": 0.01}, "minmax-w4a8": {"mse": 0.04}, "modelopt-w4a16": {"mse": 0.005}}
    ratios = bench.mse_ratios(rows)
    assert ratios == {"tfmq_over_minmax": pytest.approx(0.25), "tfmq_over_modelopt_w4a16": pytest.approx(2.0),
                      "tfmq_over_qdiff": None}
    assert bench.mse_ratios({"tfmq-w4a8": {"mse": 0.01}})["tfmq_over_minmax"] is None


def test_per_image_mse_separates_one_changed_image_from_a_spread_error():
    """One image far off carries the mean; the median stays at the typical image's error."""
    ref = np.zeros((200, 4, 4, 3))
    img = np.full_like(ref, 0.1)
    img[7] = 1.0  # the one image whose digit changed shape
    stats = bench.per_image_mse(bench.image_mse(img, ref, (0.0, 1.0)))
    assert stats["mse_median"] == pytest.approx(0.01)
    # worst 1% = two images: 1.0 + 0.01 of a total 1.0 + 199 * 0.01
    assert stats["mse_worst1pct_share"] == pytest.approx(1.01 / 2.99)
    even = bench.per_image_mse(bench.image_mse(np.full_like(ref, 0.1), ref, (0.0, 1.0)))
    assert even["mse_worst1pct_share"] == pytest.approx(0.01)
    with pytest.raises(ValueError):
        bench.image_mse(img[:3], ref, (0.0, 1.0))
