"""`tfmq-export evaluate`: the table's numbers, the paired metric and the judged targets."""

from __future__ import annotations

import json

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
    results_markdown,
    target_lines,
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


def _rows(tfmq_fid: float, qdiff_fid: float, fp_fids=(10.0, 10.5), w8_fid: float = 10.2) -> list[dict]:
    base = {"num_samples": 100, "seed": 0, "calib_seconds": 0.0, "rmse_vs_fp": 0.0}
    return [
        base | {"method": "fp", "wbits": 16, "abits": 16, "fid": fp_fids[0]},
        base | {"method": "fp", "wbits": 16, "abits": 16, "fid": fp_fids[1], "seed": 1, "rmse_vs_fp": None},
        base | {"method": "tfmq", "wbits": 8, "abits": 8, "fid": w8_fid, "rmse_vs_fp": 0.01},
        base | {"method": "qdiff", "wbits": 4, "abits": 8, "fid": qdiff_fid, "calib_seconds": 100.0,
                "rmse_vs_fp": 0.05},
        base | {"method": "tfmq", "wbits": 4, "abits": 8, "fid": tfmq_fid, "calib_seconds": 40.0, "rmse_vs_fp": 0.03},
    ]


def test_targets_are_judged_from_the_rows() -> None:
    lines = "\n".join(target_lines(_rows(tfmq_fid=11.0, qdiff_fid=14.0)))
    assert f"tfmq / qdiff = {1.0 / 4.0:.2f}" in lines
    assert f"ratio {40 / 100:.2f}" in lines
    assert "within the FP seed-to-seed difference 0.500" in lines
    assert "outside" in "\n".join(target_lines(_rows(11.0, 14.0, w8_fid=11.0)))
    assert "n/a" in "\n".join(target_lines(_rows(11.0, 9.0)))  # qdiff better than FP: no ratio
    doc = results_markdown({"rows": _rows(11.0, 14.0), "command": "x", "created": "now"})
    assert doc.count("\n| ") == 2 + 5 and "## Targets" in doc  # header, separator, one line per row


def test_evaluate_command_end_to_end(tmp_path) -> None:
    """One method and bit setting on the bundled model: calibrates, exports, samples from ONNX, scores,
    writes JSON, grids and the Markdown; the artifact is reused by the next run."""
    out, doc = tmp_path / "eval", tmp_path / "RESULTS.md"
    args = ["evaluate", "--out", str(out), "--methods", "minmax", "--bits", "w8a8", "--num-images", "300",
            "--doc", str(doc), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["fp", "fp", "minmax", "real"]
    fp, fp_other, minmax = rows[:3]
    assert fp["rmse_vs_fp"] == 0.0 and fp_other["rmse_vs_fp"] is None
    assert 0.0 < minmax["rmse_vs_fp"] < 0.2  # W8A8 stays close to the FP samples from the same noise
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)
    assert (out / "onnx" / "minmax-w8a8.onnx").is_file() and (out / "grids" / "minmax-w8a8-seed0.png").is_file()
    assert "| minmax | 8 | 8 |" in doc.read_text()
    # the report: verdict first, where the figures come from, FP | quantized | difference, per-step error
    text = doc.read_text()
    lines = text.splitlines()
    assert lines[2].startswith("Verdict") and lines[3].startswith("- minmax W8A8: images ")
    for needle in ("- Machine: ", "- Load average (1/5/15 min): ", "- Versions: tfmq-export ", "- Target: tensorrt",
                   "- Command: `tfmq-export evaluate --out ", "- Recipe(s): minmax-w8a8: digits-w8a8"):
        assert needle in text
    assert "](RESULTS-grids/compare-minmax-w8a8-seed0.png)" in text
    assert (doc.parent / "RESULTS-grids" / "compare-minmax-w8a8-seed0.png").is_file()
    assert "![per-step error](RESULTS-grids/step-errors.png)" in text
    assert (doc.parent / "RESULTS-grids" / "step-errors.png").is_file()
    steps = json.loads((out / "results.json").read_text())["step_errors"]
    assert len(steps["errors"]["minmax-w8a8"]) == len(steps["timesteps"]) > 1
    assert all(e > 0 for e in steps["errors"]["minmax-w8a8"])
    folder = out / "calib" / "minmax-w8a8"
    stamp = (folder / "artifact.json").stat().st_mtime_ns
    reused = _artifact(load_model("digits"), recipe_settings("minmax", "w8a8"), folder, progress=False)
    assert (folder / "artifact.json").stat().st_mtime_ns == stamp  # a second run reuses it, not recalibrates
    assert reused.method == "minmax" and (reused.wbits, reused.abits) == (8, 8)
    # an interrupted evaluation resumes: the samples of finished rows are reused, not sampled again
    cache = out / "samples" / "minmax-w8a8-seed0.npz"
    with np.load(cache) as stored:
        images = stored["images"]
    assert images.shape == (300, 1, 16, 16)
    (out / "onnx" / "minmax-w8a8.onnx").unlink()
    again = _sampled_images(load_model("digits"), reused, "minmax-w8a8", out, 300, 0, "tensorrt", progress=False)
    assert np.array_equal(again, images) and not (out / "onnx" / "minmax-w8a8.onnx").exists()


def test_evaluate_refuses_bad_options(tmp_path) -> None:
    for extra, message in ((["--methods", "gptq"], "unknown method"), (["--bits", "w2a2"], "unknown bit setting"),
                           (["--num-images", "1"], "at least")):
        result = CliRunner().invoke(cli, ["evaluate", "--out", str(tmp_path / "e"), *extra])
        assert result.exit_code != 0 and message in result.output
        assert "Traceback" not in result.output
