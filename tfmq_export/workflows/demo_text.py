"""The demo's text-to-image part: ``digits-text`` calibrated with prompts, exported, sampled by prompt.

calibrate (FP and TFMQ W8A8 with the ten digit prompts and guidance) -> export-pipeline (every
stage) -> sample each digit's prompt through the exported pipeline with onnxruntime, from the same
noise for both -> a grid (rows: images, columns: digits 0-9) and the prompt accuracy of each. The
full table is ``tfmq-export evaluate --model digits-text``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.images import save_grid
from tfmq_export.io import atomic_write_text
from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy
from tfmq_export.models.digits_text import digits_text_prompts
from tfmq_export.workflows.evaluate import paired_rmse
from tfmq_export.workflows.evaluate_text import (
    DEFAULT_TEXT_GUIDANCE,
    digit_grid_order,
    prompt_images,
    text_settings,
)
from tfmq_export.workflows.report_parts import save_comparison

__all__ = ["run_demo_text", "text_demo_lines"]


def run_demo_text(out_dir: Path, per_digit: int = 4, seed: int = 0, progress: bool = True,
                  recipe: Any = None, device: str = "cpu") -> list[dict[str, Any]]:
    """FP and TFMQ W8A8 rows (setting, prompt accuracy, RMSE vs FP, grid); ``recipe``: CalibrationSettings
    whose budget replaces the digits-tfmq-w8a8 recipe's (tests pass a tiny one)."""
    from tfmq_export.workflows.calibrate import calibrate_model
    from tfmq_export.workflows.evaluate import recipe_settings
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    out_dir = Path(out_dir)
    prompts_file = out_dir / "prompts.txt"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(prompts_file, "\n".join(digits_text_prompts()) + "\n")
    budget = recipe if recipe is not None else recipe_settings("tfmq", "w8a8")
    rows: list[dict[str, Any]] = []
    reference = None
    for name, (method, wbits, abits) in {"fp32": ("minmax", 16, 16), "tfmq-w8a8": ("tfmq", 8, 8)}.items():
        calibrate_model("digits-text", out_dir / "calib" / name,
                        text_settings(budget, method, wbits, abits, DEFAULT_TEXT_GUIDANCE), prompts=prompts_file,
                        progress=progress, device=device)
        pipeline_dir = out_dir / "pipelines" / name
        export_pipeline_folder(out_dir / "calib" / name, pipeline_dir, target="onnxruntime")
        digits_images = pipeline_to_digits(prompt_images(pipeline_dir, per_digit, seed, DEFAULT_TEXT_GUIDANCE,
                                                         progress))
        order = digit_grid_order(per_digit)  # one column per digit
        grid = out_dir / "grids" / f"digits-text-{name}.png"
        save_grid(digits_images[order], grid, columns=10)
        row = {}
        if reference is None:
            reference = digits_images
        else:  # FP | quantized | difference, the same noise and prompts
            compare = out_dir / "grids" / f"digits-text-compare-{name}.png"
            save_comparison(reference[order], digits_images[order], compare, columns=10)
            row["comparison"] = str(compare)
        rows.append({"setting": name, "accuracy": prompt_accuracy(digits_images, np.repeat(np.arange(10), per_digit)),
                     "rmse_vs_fp": paired_rmse(digits_images, reference), "grid": str(grid),
                     "pipeline": str(pipeline_dir), **row})
    return rows


def text_demo_lines(rows: list[dict[str, Any]], per_digit: int) -> list[str]:
    """The report's section for the text-to-image rows (links relative to the demo's folder)."""
    lines = ["", "## Text-to-image: digits-text through its exported pipeline", "",
             f"Prompts \"a handwritten digit zero\" ... \"nine\", {per_digit} images each, guidance "
             f"{DEFAULT_TEXT_GUIDANCE}, sampled by onnxruntime from the exported stages (text encoder, UNet, VAE",
             "decoder); prompt accuracy: the digit classifier agrees with the prompted digit.", "",
             "| setting | prompt accuracy | RMSE vs FP | grid |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['setting']} | {r['accuracy']:.3f} | {r['rmse_vs_fp']:.4f} | "
              f"[{Path(r['grid']).name}](text/grids/{Path(r['grid']).name}) |" for r in rows]
    compared = [r for r in rows if r.get("comparison")]
    if compared:
        lines += ["", "FP (left), quantized from the same noise and prompts (middle), 4 x |quantized - FP| (right); "
                  "columns: digits 0-9.", ""]
        lines += [f"![digits-text {r['setting']}: FP | quantized | difference](text/grids/"
                  f"{Path(r['comparison']).name})" for r in compared]
    return lines
