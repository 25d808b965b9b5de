"""`tfmq-export evaluate --model digits-text`: the pipeline table, its judgement and its checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli
from tfmq_export.errors import TfmqError
from tfmq_export.workflows.evaluate_text import evaluate_model, text_results_markdown


def _row(method: str, wbits: int, fid: float, accuracy: float, seed: int = 0) -> dict:
    return {"method": method, "wbits": wbits, "abits": min(wbits, 16) if wbits != 4 else 8, "fid": fid,
            "accuracy": accuracy, "fid_unguided": fid + 5, "accuracy_unguided": accuracy - 0.2, "seed": seed,
            "calib_seconds": 1.0, "rmse_vs_fp": 0.01}


def test_w8a8_is_judged_against_the_fp_seed_noise() -> None:
    fp = [_row("fp", 16, 10.0, 0.90), _row("fp", 16, 11.0, 0.92, seed=1)]
    inside = text_results_markdown({"rows": [*fp, _row("tfmq", 8, 10.5, 0.91)], "command": "x", "created": "now"})
    assert "tfmq W8A8: FID +0.500 (FP seed noise 1.000), accuracy +0.010 (FP seed noise 0.020): within" in inside
    outside = text_results_markdown({"rows": [*fp, _row("tfmq", 8, 10.5, 0.80)], "command": "x", "created": "now"})
    assert "accuracy -0.100" in outside and ": outside noise" in outside
    assert outside.count("\n| ") == 2 + 3 + 2 + 1  # header, separator, a line per row; the seeds' table likewise


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"num_images": 25}, "multiple of 10"),
    ({"num_images": 10}, ">= 20"),
    ({"guidance_scale": 1.0}, "above 1"),
    ({"methods": ["brecq"]}, "unknown method"),
    ({"bits": ["w2a8"]}, "unknown bit setting"),
    ({"calib_seeds": "0,0"}, "distinct"),
    ({"methods": ["modelopt-int8"], "skip": ["modelopt-int8-w4a8"]}, "not a row of this run"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, kwargs, message) -> None:
    options = {"methods": ["minmax"], "bits": ["w8a8"], "num_images": 20} | kwargs
    methods, bits = options.pop("methods"), options.pop("bits")
    with pytest.raises(TfmqError, match=message):
        evaluate_model("digits-text", tmp_path / "eval", methods, bits, progress=False, **options)
    assert not (tmp_path / "eval").exists()


def test_guidance_is_refused_for_the_unconditional_model(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", "--out", str(tmp_path / "e"), "--guidance-scale", "3"])
    assert result.exit_code == 1 and "applies to --model digits-text" in result.output


@pytest.mark.slow
def test_evaluate_digits_text_end_to_end(tmp_path) -> None:
    """One row on the shipped pipeline: calibrated with prompts, exported, sampled by onnxruntime with and
    without guidance; both metrics and the paired RMSE land in results.json and the Markdown."""
    out, doc = tmp_path / "eval", tmp_path / "RESULTS-text.md"
    args = ["evaluate", "--model", "digits-text", "--out", str(out), "--methods", "minmax", "--bits", "w8a8",
            "--num-images", "20", "--target", "onnxruntime", "--doc", str(doc), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["method"], r["calib_seed"]) for r in rows] == [("fp", None), ("fp", None), ("minmax", 0)]
    fp, _, minmax = rows
    assert fp["rmse_vs_fp"] == 0.0 and 0.0 < minmax["rmse_vs_fp"] < 0.3
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("accuracy", "accuracy_unguided"))
    assert all(np.isfinite(r["fid"]) and np.isfinite(r["fid_unguided"]) for r in rows)
    assert fp["accuracy"] >= 0.6  # the FP pipeline follows its prompts through the exported stages
    assert (out / "pipelines" / "minmax-w8a8" / "pipeline.json").is_file()
    assert (doc.parent / "RESULTS-text-grids" / "minmax-w8a8-seed0.png").is_file()
    assert "| minmax | 8 | 8 |" in doc.read_text()
    text = doc.read_text()
    assert text.splitlines()[2].startswith("Verdict") and "- minmax W8A8: images " in text.splitlines()[3]
    assert "guided prompt accuracy" in text.splitlines()[3]
    for needle in ("- Machine: ", "- Load average (1/5/15 min): ", "- Versions: tfmq-export ", "- Target: onnxruntime",
                   "- Command: `tfmq-export evaluate --model digits-text ", "- Recipe(s): minmax-w8a8: budget of "):
        assert needle in text
    assert "](RESULTS-text-grids/compare-minmax-w8a8-seed0.png)" in text
    assert "## Across calibration seeds" in text and "| guided prompt accuracy mean | spread |" in text
    assert "![quality vs bits](RESULTS-text-grids/quality-vs-bits.png)" in text
    assert (doc.parent / "RESULTS-text-grids" / "quality-vs-bits.png").read_bytes()[:4] == b"\x89PNG"
    assert (doc.parent / "RESULTS-text-grids" / "compare-minmax-w8a8-seed0.png").is_file()


def test_skip_names_rows_of_the_run(tmp_path) -> None:
    from tfmq_export.workflows.evaluate import evaluation_jobs

    assert evaluation_jobs(["minmax", "qdiff"], ["w8a8", "w4a8"], ["qdiff-w4a8"]) == [
        ("minmax", "w8a8"), ("qdiff", "w8a8"), ("minmax", "w4a8")]
    with pytest.raises(TfmqError, match="not a row of this run"):
        evaluation_jobs(["minmax"], ["w8a8"], ["tfmq-w8a8"])
    result = CliRunner().invoke(cli, ["evaluate", "--model", "digits-text", "--out", str(tmp_path / "e"),
                                      "--methods", "minmax", "--bits", "w8a8", "--skip", "qdiff-w4a8"])
    assert result.exit_code == 1 and "not a row of this run" in result.output
    assert not (tmp_path / "e").exists()
