"""What every report shares: the verdict's wording, the provenance lines, the FP | quantized | difference image,
and the per-step error of the artifacts along the FP trajectory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tfmq_export.images import to_grid
from tfmq_export.workflows.report_parts import (
    PANEL_GAP,
    end_provenance,
    provenance_lines,
    quality_phrase,
    save_comparison,
    speedup_phrase,
    start_provenance,
    verdict_line,
)


def test_speedup_below_one_is_called_slower_with_the_inverse_factor() -> None:
    assert speedup_phrase(0.29) == f"0.29x, i.e. {1 / 0.29:.1f}x slower"
    assert "3.4x slower" in speedup_phrase(0.29)
    assert speedup_phrase(1.4) == "1.40x faster"
    assert speedup_phrase(1.0) == "1.00x faster"
    assert "faster" not in speedup_phrase(0.5) and "2.0x slower" in speedup_phrase(0.5)


def test_verdict_line_names_setting_speeds_per_batch_and_quality() -> None:
    quality = quality_phrase(0.8, 2.1, "digits-FID", rmse=0.02)
    assert quality.startswith("images within FP noise (digits-FID +0.800 vs FP seed-to-seed 2.100")
    assert "outside FP noise" in quality_phrase(-3.0, 2.1, "digits-FID")
    line = verdict_line("TFMQ W8A8", quality, [(1, 0.29), (64, 1.4)])
    assert line.startswith("TFMQ W8A8 vs FP32 on onnxruntime: 0.29x, i.e. 3.4x slower at batch 1, 1.40x faster "
                           "at batch 64; images within FP noise")
    assert verdict_line("TFMQ W4A8", quality) == f"TFMQ W4A8: {quality} (not timed)"


def test_provenance_lines_name_machine_load_versions_target_command_recipe() -> None:
    prov = end_provenance(start_provenance("tfmq-export demo --out x", "onnxruntime", ["digits-tfmq-w8a8"]))
    assert len(prov["load_avg_start"]) == 3 and len(prov["load_avg_end"]) == 3
    assert {"tfmq-export", "torch", "onnxruntime", "openvino", "diffusers"} <= set(prov["versions"])
    text = "\n".join(provenance_lines(prov))
    for needle in ("- Machine: ", " cores", "- Load average (1/5/15 min): ", "at end", "- Versions: tfmq-export ",
                   "torch ", "- Target: onnxruntime", "- Command: `tfmq-export demo --out x`",
                   "- Recipe(s): digits-tfmq-w8a8"):
        assert needle in text
    assert "not taken at end" in "\n".join(provenance_lines({"load_avg_start": [1.0, 1.0, 1.0]}))


def test_comparison_png_is_fp_quantized_and_a_zero_difference_map_for_identical_images(tmp_path) -> None:
    rng = np.random.default_rng(0)
    fp = rng.uniform(-1, 1, size=(6, 1, 8, 8)).astype(np.float32)
    grid_h, grid_w = to_grid(fp, 3).shape[:2]
    path = save_comparison(fp, fp.copy(), tmp_path / "cmp.png", columns=3)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (grid_h, 3 * grid_w + 2 * PANEL_GAP, 3)
    diff = pixels[:, 2 * (grid_w + PANEL_GAP):]
    assert diff.shape[1] == grid_w and not diff.any()  # identical inputs: all black
    left, middle = pixels[:, :grid_w], pixels[:, grid_w + PANEL_GAP: 2 * grid_w + PANEL_GAP]
    assert np.array_equal(left, middle) and left.any()
    shifted = np.clip(fp + 0.2, -1, 1)
    changed = np.asarray(Image.open(save_comparison(fp, shifted, tmp_path / "cmp2.png", columns=3)))
    assert changed[:, 2 * (grid_w + PANEL_GAP):].any()


def test_comparison_refuses_images_of_different_shapes(tmp_path) -> None:
    from tfmq_export.errors import TfmqError

    with pytest.raises(TfmqError, match="one shape"):
        save_comparison(np.zeros((2, 1, 8, 8)), np.zeros((3, 1, 8, 8)), tmp_path / "x.png")


@pytest.mark.slow
def test_per_step_errors_are_zero_for_fp_and_positive_for_w4(tmp_path, one_thread) -> None:
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.models.loading import load_model
    from tfmq_export.workflows.step_errors import plot_step_errors, step_error_lines, step_errors

    model = load_model("digits")
    tiny = {"steps": 4, "num_samples": 2, "batch_size": 2, "seed": 0}
    fp = calibrate(model, CalibrationSettings(method="minmax", wbits=16, abits=16, **tiny), progress=False)
    w4 = calibrate(model, CalibrationSettings(method="minmax", wbits=4, abits=8, **tiny), progress=False)
    other = calibrate(model, CalibrationSettings(method="minmax", wbits=16, abits=16, **(tiny | {"steps": 3})),
                      progress=False)
    result = step_errors(model.unet, {"fp": fp, "w4a8": w4, "other": other}, fp, model.sample_shape,
                         num_trajectories=2)
    assert len(result["timesteps"]) == 4 and result["timesteps"] == sorted(result["timesteps"], reverse=True)
    assert result["errors"]["fp"] == [0.0] * 4
    assert len(result["errors"]["w4a8"]) == 4 and all(e > 0 for e in result["errors"]["w4a8"])
    assert "other" in result["skipped"] and "other" not in result["errors"]
    png = plot_step_errors(result, tmp_path / "steps.png")
    assert Image.open(png).size == (700, 400)
    lines = "\n".join(step_error_lines(result, "steps.png"))
    assert "![per-step error](steps.png)" in lines and "| w4a8 |" in lines and "other: not measured" in lines
