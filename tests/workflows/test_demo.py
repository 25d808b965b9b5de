"""The README's main job (`tfmq-export demo`) end to end on a tiny setting."""

from __future__ import annotations

import json
import math

import pytest

from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.workflows.demo import run_demo


@pytest.mark.slow
def test_demo_runs_the_whole_flow_on_tiny_settings(tmp_path, one_thread) -> None:
    tiny = {"steps": 3, "num_samples": 2, "batch_size": 2, "seed": 0}
    settings = {
        "fp32": CalibrationSettings(method="minmax", wbits=16, abits=16, **tiny),
        "tfmq-w8a8": CalibrationSettings(method="tfmq", wbits=8, abits=8, iters=2, **tiny),
    }
    text_recipe = CalibrationSettings(method="tfmq", wbits=8, abits=8, iters=2, **tiny)
    report = run_demo(tmp_path / "demo", num_images=8, progress=False, settings=settings, bench_batches=(1,),
                      bench_iters=2, text_recipe=text_recipe, text_per_digit=1)

    assert (tmp_path / "demo" / "report.md").read_text() == report
    assert "| fp32 |" in report and "| tfmq-w8a8 |" in report
    data = json.loads((tmp_path / "demo" / "report.json").read_text())
    rows = {r["setting"]: r for r in data["rows"]}
    assert rows["fp32"]["rmse_vs_fp"] == 0.0  # FP is its own reference
    assert 0.0 < rows["tfmq-w8a8"]["rmse_vs_fp"] < 0.5  # quantized, but still the same images
    assert all(math.isfinite(r["fid"]) for r in rows.values())
    timed = {(r["backend"], r["precision"]) for r in data["bench"]}
    assert {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "w8a8")} <= timed
    text = {r["setting"]: r for r in data["text"]}  # digits-text through its exported pipeline
    assert text["fp32"]["rmse_vs_fp"] == 0.0 and 0.0 < text["tfmq-w8a8"]["rmse_vs_fp"] < 0.5
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in text.values())
    assert "| tfmq-w8a8 | " in report.split("## Text-to-image")[-1]
    for row in text.values():
        assert (tmp_path / "demo" / "text" / "pipelines" / row["setting"] / "unet.onnx").is_file()
        assert (tmp_path / "demo" / "text" / "grids" / f"digits-text-{row['setting']}.png").is_file()
    for name in settings:
        assert (tmp_path / "demo" / "grids" / f"{name}.png").is_file()
        assert (tmp_path / "demo" / "onnx" / f"digits-{name}.onnx").is_file()


def test_demo_refuses_too_few_images_before_any_work(tmp_path) -> None:
    with pytest.raises(TfmqError, match="at least 2"):
        run_demo(tmp_path / "demo", num_images=1, progress=False)
    assert not (tmp_path / "demo").exists()
