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
    # the report answers first, then says where its figures come from, and links its images
    lines = report.splitlines()
    assert lines[2].startswith("Verdict") and lines[3].startswith("- TFMQ W8A8 vs FP32 on onnxruntime: ")
    assert ("faster at batch 1" in lines[3]) or ("x slower at batch 1" in lines[3])
    assert data["verdict"][0] == lines[3][2:]
    for needle in ("- Machine: ", "- Load average (1/5/15 min): ", "- Versions: tfmq-export ", "- Target: onnxruntime",
                   "- Command: `tfmq-export demo --out ", "- Recipe(s): tfmq-w8a8: custom settings (API)"):
        assert needle in report
    assert "![tfmq-w8a8: FP | quantized | difference](grids/compare-tfmq-w8a8.png)" in report
    assert (tmp_path / "demo" / "grids" / "compare-tfmq-w8a8.png").is_file()
    assert "](text/grids/digits-text-compare-tfmq-w8a8.png)" in report
    assert (tmp_path / "demo" / "text" / "grids" / "digits-text-compare-tfmq-w8a8.png").is_file()
    assert "![per-step error](step-errors.png)" in report and (tmp_path / "demo" / "step-errors.png").is_file()
    steps = data["step_errors"]
    assert len(steps["errors"]["tfmq-w8a8"]) == 3 and all(e > 0 for e in steps["errors"]["tfmq-w8a8"])
    assert data["fp_seed_noise"]["fid_noise"] >= 0 and data["provenance"]["load_avg_end"]


def test_demo_refuses_too_few_images_before_any_work(tmp_path) -> None:
    with pytest.raises(TfmqError, match="at least 2"):
        run_demo(tmp_path / "demo", num_images=1, progress=False)
    assert not (tmp_path / "demo").exists()
