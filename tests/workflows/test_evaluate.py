"""`tfmq-export evaluate`: the table's numbers, the paired metric and the judged targets."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli
from tfmq_export.models.loading import load_model
from tfmq_export.workflows.evaluate import (
    _artifact,
    _sampled_images,
    paired_rmse,
    recipe_settings,
)


def test_paired_rmse_measures_the_pixel_difference_of_clipped_images() -> None:
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, size=(4, 1, 16, 16)).astype(np.float32)
    assert paired_rmse(reference, reference) == 0.0
    shifted = np.clip(reference + 0.1, -1, 1)
    expected = float(np.sqrt(np.mean((shifted.astype(np.float64) - reference) ** 2)))
    assert paired_rmse(shifted, reference) == pytest.approx(expected, rel=1e-6)
    clipped = np.clip(reference * 5, -1, 1)  # out-of-range pixels count as the images show them
    assert paired_rmse(reference * 5, reference) == pytest.approx(paired_rmse(clipped, reference), rel=1e-9)
    assert paired_rmse(reference * 5, reference) < float(np.sqrt(np.mean((reference * 4.0) ** 2)))


def test_evaluate_command_end_to_end(tmp_path, monkeypatch) -> None:
    """One method and bit setting with two calibration seeds on the bundled model: calibrates, exports,
    samples from ONNX, scores, writes JSON, grids, the quality plot and the Markdown; artifacts and
    samples of every calibration seed are reused by the next run."""
    monkeypatch.setitem(sys.modules, "tfmq_export.workflows.evaluate_peers", None)  # importing it would fail
    out, doc = tmp_path / "eval", tmp_path / "RESULTS.md"
    args = ["evaluate", "--out", str(out), "--methods", "minmax", "--bits", "w8a8", "--num-images", "200",
            "--calib-seeds", "0,1", "--doc", str(doc), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["method"], r["calib_seed"]) for r in rows] == [("fp", None), ("fp", None), ("minmax", 0),
                                                               ("minmax", 1), ("real", None)]
    assert all("rmse_vs_fp" in r for r in rows) and results["calib_seeds"] == [0, 1]
    fp, fp_other, minmax, minmax_cs1 = rows[:4]
    assert fp["rmse_vs_fp"] == 0.0 and fp_other["rmse_vs_fp"] is None
    assert 0.0 < minmax["rmse_vs_fp"] < 0.2  # W8A8 stays close to the FP samples from the same noise
    assert 0.0 < minmax_cs1["rmse_vs_fp"] < 0.2 and minmax_cs1["seed"] == minmax["seed"] == 0  # same noise
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)
    settings = [json.loads((out / "calib" / name / "artifact.json").read_text())["settings"]
                for name in ("minmax-w8a8", "minmax-w8a8-cs1")]  # seed 0 keeps the folder name of older runs
    assert [s["seed"] for s in settings] == [0, 1]
    assert (out / "onnx" / "minmax-w8a8.onnx").is_file() and (out / "grids" / "minmax-w8a8-seed0.png").is_file()
    assert (out / "onnx" / "minmax-w8a8-cs1.onnx").is_file()
    text = doc.read_text()
    assert "| minmax | 8 | 8 | 0 |" in text and "| minmax | 8 | 8 | 1 |" in text
    # the report: verdict first, the seeds' aggregate, where the figures come from, the images
    lines = text.splitlines()
    assert lines[2].startswith("Verdict")
    assert lines[3].startswith("- minmax W8A8 (mean of 2 calibration seeds): images ")
    assert "## Across calibration seeds" in text and "Lead rule: " in text
    mean = (minmax["rmse_vs_fp"] + minmax_cs1["rmse_vs_fp"]) / 2
    spread = abs(minmax["rmse_vs_fp"] - minmax_cs1["rmse_vs_fp"])
    assert f"| minmax | 8 | 8 | 0,1 | {mean:.4f} | {spread:.4f} |" in text
    assert "![quality vs bits](RESULTS-grids/quality-vs-bits.png)" in text
    assert (doc.parent / "RESULTS-grids" / "quality-vs-bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for needle in ("- Machine: ", "- Load average (1/5/15 min): ", "- Versions: tfmq-export ", "- Target: tensorrt",
                   "- Command: `tfmq-export evaluate --out ", "--calib-seeds 0,1",
                   "- Recipe(s): minmax-w8a8: digits-w8a8"):
        assert needle in text
    assert "](RESULTS-grids/compare-minmax-w8a8-seed0.png)" in text and "compare-minmax-w8a8-cs1" not in text
    assert (doc.parent / "RESULTS-grids" / "compare-minmax-w8a8-seed0.png").is_file()
    assert "![per-step error](RESULTS-grids/step-errors.png)" in text
    assert (doc.parent / "RESULTS-grids" / "step-errors.png").is_file()
    steps = results["step_errors"]
    assert list(steps["errors"]) == ["minmax-w8a8"]  # the first calibration seed of each setting
    assert len(steps["errors"]["minmax-w8a8"]) == len(steps["timesteps"]) > 1
    assert all(e > 0 for e in steps["errors"]["minmax-w8a8"])
    model = load_model("digits")
    for calib_seed, name in ((0, "minmax-w8a8"), (1, "minmax-w8a8-cs1")):
        folder = out / "calib" / name
        stamp = (folder / "artifact.json").stat().st_mtime_ns
        reused = _artifact(model, recipe_settings("minmax", "w8a8", calib_seed), folder, progress=False)
        assert (folder / "artifact.json").stat().st_mtime_ns == stamp  # a second run reuses it, not recalibrates
        assert reused.method == "minmax" and reused.settings["seed"] == calib_seed
        # an interrupted evaluation resumes: the samples of finished rows are reused, not sampled again
        with np.load(out / "samples" / f"{name}-seed0.npz") as stored:
            images = stored["images"]
        assert images.shape == (200, 1, 16, 16)
        (out / "onnx" / f"{name}.onnx").unlink()
        again = _sampled_images(model, reused, name, out, 200, 0, "tensorrt", progress=False)
        assert np.array_equal(again, images) and not (out / "onnx" / f"{name}.onnx").exists()
    with np.load(out / "samples" / "minmax-w8a8-seed0.npz") as a, \
            np.load(out / "samples" / "minmax-w8a8-cs1-seed0.npz") as b:
        assert not np.array_equal(a["images"], b["images"])  # another calibration seed, another calibration
    # a default that changed since the artifact was made (the same recipe keys) means calibrating again
    from tfmq_export import config
    from tfmq_export.workflows.evaluate import reusable_artifact

    wanted = asdict(recipe_settings("minmax", "w8a8", 0))
    assert reusable_artifact(out / "calib" / "minmax-w8a8", wanted) is not None
    monkeypatch.setitem(config.METHOD_DEFAULTS, "minmax", {"adaround_warmup": 0.3})  # a key the recipe leaves out
    assert reusable_artifact(out / "calib" / "minmax-w8a8", wanted) is None


def test_evaluate_refuses_bad_options(tmp_path) -> None:
    for extra, message in ((["--methods", "gptq"], "unknown method"), (["--bits", "w2a2"], "unknown bit setting"),
                           (["--num-images", "1"], "at least"), (["--calib-seeds", "0,x"], "comma-separated integers"),
                           (["--calib-seeds", "1,1"], "distinct"), (["--calib-seeds", "-1"], ">= 0"),
                           (["--skip", "modelopt-int8-w4a8", "--methods", "modelopt-int8"], "not a row of this run")):
        result = CliRunner().invoke(cli, ["evaluate", "--out", str(tmp_path / "e"), *extra])
        assert result.exit_code != 0 and message in result.output
        assert "Traceback" not in result.output and not (tmp_path / "e").exists()
