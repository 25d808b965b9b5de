"""Strict settings and recipes (tfmq_export.config), and the non-finite checks of a calibration run:
every bad value stops with one TfmqError line naming the key (and the file), before any data is
collected."""

from __future__ import annotations

import json

import pytest
import torch

from tests.calibration.test_adaround import micro_model
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.pipeline import calibrate, check_finite_data, check_finite_tensors, run_calibration
from tfmq_export.config import (
    CalibrationSettings,
    ExtraOptions,
    load_recipe,
    recipe_names,
    recipe_path,
    settings_from,
)
from tfmq_export.errors import TfmqError

pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_recipes_load_by_name_and_by_path(tmp_path):
    assert {"digits-tfmq-w4a8", "digits-w8a8", "sd-v1-4-w4a8"} <= set(recipe_names())
    by_name = load_recipe("digits-tfmq-w4a8")
    assert by_name["method"] == "tfmq" and "notes" not in by_name and "model" not in by_name
    copy = tmp_path / "mine.json"
    copy.write_text(recipe_path("digits-tfmq-w4a8").read_text())
    assert load_recipe(copy) == by_name == load_recipe(str(copy))
    settings = settings_from(by_name, {"wbits": 8, "steps": None})  # None: not given on the command line
    assert (settings.method, settings.wbits, settings.abits, settings.steps) == ("tfmq", 8, 8, 25)
    with pytest.raises(TfmqError, match="unknown recipe 'nope'") as exc:
        load_recipe("nope")
    assert "digits-tfmq-w4a8" in _one_line(exc)
    with pytest.raises(TfmqError, match="does not exist"):
        load_recipe(tmp_path / "missing.json")


@pytest.mark.parametrize(("change", "words"), [
    ({"iterations": 5}, ["unknown key 'iterations'"]),
    ({"steps": "ten"}, ["steps must be an integer", "'ten'"]),
    ({"wbits": "8"}, ["wbits must be an integer", "'8'"]),
    ({"wbits": 3}, ["--wbits 3 is not supported"]),
    ({"num_samples": 0}, ["num_samples must be a positive integer"]),
    ({"seed": 1.5}, ["seed must be an integer"]),
    ({"weight_init": "bad"}, ["weight_init 'bad'"]),
    ({"static_scale_rule": "p99"}, ["static-scale-rule"]),
    ({"temporal_table": 1}, ["temporal-table"]),
    ({"extra": {"act_iters": "4"}}, ["act_iters", "non-negative number"]),
    ({"extra": {"cache_mb": 0}}, ["cache_mb", "greater than 0"]),
    ({"extra": {"split_skip": 1}}, ["split_skip", "true or false"]),
    ({"extra": {"iterations": 5}}, ["unknown calibration option", "iterations"]),
    ({"extra": [1]}, ["extra must be a JSON object"]),
    ({"notes": 3}, ["notes must be a string"]),
])
def test_bad_recipes_are_refused_naming_the_key_and_the_file(tmp_path, change, words):
    recipe = json.loads(recipe_path("digits-w8a8").read_text())
    recipe.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(TfmqError) as exc:
        load_recipe(path)
    line = _one_line(exc)
    assert str(path) in line and all(w in line for w in words), line


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_recipes_are_refused(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TfmqError) as exc:
        load_recipe(path)
    assert str(path) in _one_line(exc)


def test_overrides_are_checked_too():
    with pytest.raises(TfmqError, match="unknown calibration setting"):
        settings_from({}, {"step": 3})
    with pytest.raises(TfmqError, match="iters"):
        settings_from({}, {"iters": -1})
    assert settings_from(None, None) == CalibrationSettings()


def test_extra_options_are_typed_for_every_method():
    options = CalibrationSettings(method="minmax", extra={"cache_mb": 64, "split_skip": False}).options
    assert options == ExtraOptions(cache_mb=64.0, split_skip=False) and isinstance(options.cache_mb, float)
    with pytest.raises(TfmqError, match="recon_batch_size"):
        CalibrationSettings(method="minmax", extra={"recon_batch_size": 0})


def test_bad_settings_fail_before_any_data_is_collected(monkeypatch):
    """A setting changed after construction (``weight_init``) is refused before the sampler runs."""
    def no_data(*args, **kwargs):
        raise AssertionError("calibration data was collected")

    monkeypatch.setattr("tfmq_export.calibration.pipeline.collect_calibration_data", no_data)
    for method in ("minmax", "qdiff", "tfmq"):
        settings = CalibrationSettings(method=method, wbits=8, abits=8, steps=3, num_samples=2)
        settings.weight_init = "bad"
        with pytest.raises(TfmqError, match="weight_init 'bad'"):
            calibrate(micro_model(), settings, progress=False)


def test_non_finite_weights_and_data_are_refused():
    settings = CalibrationSettings(method="minmax", wbits=8, abits=8, steps=3, num_samples=2, batch_size=2)
    model = micro_model()
    with torch.no_grad():
        model.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TfmqError, match=r"conv_out\.weight") as exc:
        calibrate(model, settings, progress=False)
    _one_line(exc)
    fp_only = CalibrationSettings(method="minmax", wbits=16, abits=16, steps=3)
    with pytest.raises(TfmqError, match="NaN or Inf"):
        calibrate(model, fp_only, progress=False)


def test_non_finite_calibration_data_and_artifact_tensors_are_named():
    samples = torch.zeros(4, 1, 2, 2)
    samples[3, 0, 1, 1] = float("inf")
    data = CalibrationData(samples, torch.tensor([0, 1, 0, 1]), None, [900, 400])
    with pytest.raises(TfmqError, match="x_t at step 1 \\(timestep 400\\)"):
        check_finite_data(data)
    check_finite_tensors({"a.input_step_min": torch.tensor([float("inf"), 0.0]), "a.weight_int": torch.ones(2)})
    with pytest.raises(TfmqError, match=r"a\.input_scale"):
        check_finite_tensors({"a.input_scale": torch.tensor(float("nan"))})
    with pytest.raises(TfmqError, match=r"a\.input_step_max"):
        check_finite_tensors({"a.input_step_max": torch.tensor([float("nan")])})


def test_the_method_result_is_kept():
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, steps=3, num_samples=2, batch_size=8, iters=4)
    run = run_calibration(micro_model(), settings, progress=False)
    result = run.result
    assert result.blocks and len(result.weights) == len(result.blocks)
    assert result.tiar is not None and result.tiar.error_after <= result.tiar.error_before * 10
    assert set(result.tensors) <= set(run.artifact.tensors)
    assert run.artifact.temporal_table == result.temporal_table == "fp"
