"""The README's main job on the bundled ``digits`` model, end to end, with a short report.

calibrate (FP, TFMQ W8A8 and W4A8 from the digits recipes) -> export ONNX (onnxruntime target)
-> sample with onnxruntime -> digits-FID and RMSE to the FP samples from the same noise -> bench
(torch FP32, onnxruntime FP32 and W8A8); then the text-to-image model ``digits-text``: calibrate
with prompts, export every stage, sample each digit's prompt (``demo_text``) -> report.md
(``demo_report``: verdict first, FP | quantized | difference images, the per-step error plot,
machine, load, versions, command, recipes).
The full method x bits tables are ``tfmq-export evaluate [--model digits-text]``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tfmq_export.backends.base import open_runner
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.device import resolve_device
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import export_onnx
from tfmq_export.images import save_grid
from tfmq_export.io import atomic_write_text, check_writable
from tfmq_export.metrics.fid import digits_fid, real_floor_fid
from tfmq_export.models.loading import load_model
from tfmq_export.workflows.demo_report import demo_markdown, demo_verdict
from tfmq_export.workflows.evaluate import paired_rmse, recipe_name, recipe_settings
from tfmq_export.workflows.report_parts import end_provenance, save_comparison, start_provenance
from tfmq_export.workflows.sample import artifact_spec, sample_with
from tfmq_export.workflows.step_errors import plot_step_errors, step_errors

__all__ = ["demo_settings", "run_demo"]


def demo_settings() -> dict[str, CalibrationSettings]:
    """FP32 plus the shipped TFMQ recipes (digits-tfmq-w8a8, digits-tfmq-w4a8 in tfmq_export/recipes)."""
    return {
        "fp32": CalibrationSettings(method="minmax", wbits=16, abits=16),
        "tfmq-w8a8": recipe_settings("tfmq", "w8a8"),
        "tfmq-w4a8": recipe_settings("tfmq", "w4a8"),
    }


def _command(out_dir: Path, num_images: int, device: str, overrides: dict[str, object]) -> str:
    """The command line this run answers to, with what only the API can change named after it."""
    line = f"tfmq-export demo --out {out_dir} --num-images {num_images} --device {device}"
    given = [f"{k}={v}" for k, v in overrides.items() if v is not None]
    return line + (f" (API overrides: {', '.join(given)})" if given else "")


def _recipes(plan: dict[str, CalibrationSettings], custom: bool, text_custom: bool) -> list[str]:
    """Recipe names of the settings (custom API settings are named as such)."""
    names = [f"{name}: custom settings (API)" if custom else f"{name}: {recipe_name('tfmq', name.split('-')[-1])}"
             for name in plan if name != "fp32"]
    text = "custom settings (API)" if text_custom else recipe_name("tfmq", "w8a8")
    return [*names, f"digits-text tfmq-w8a8: budget of {text}"]


def run_demo(
    out_dir: Path,
    num_images: int = 1000,
    seed: int = 0,
    progress: bool = True,
    *,
    settings: dict[str, CalibrationSettings] | None = None,
    bench_batches: tuple[int, ...] = (1, 64),
    bench_iters: int = 20,
    text_recipe: CalibrationSettings | None = None,
    text_per_digit: int = 4,
    device: str = "cpu",
    step_trajectories: int = 4,
) -> str:
    """Run the whole flow into ``out_dir`` and return the Markdown report (also written there).

    ``settings`` replaces ``demo_settings()`` (it must keep the keys ``fp32`` and ``tfmq-w8a8``,
    which the bench compares) and ``text_recipe`` the calibration budget of the digits-text part;
    tests pass tiny ones. ``device``: where the calibrations run (cpu, cuda, cuda:N).
    ``step_trajectories``: FP trajectories of the per-step error plot.
    """
    from tfmq_export.workflows.bench import bench_to_json
    from tfmq_export.workflows.demo_text import run_demo_text

    if num_images < 2:
        raise TfmqError("--num-images must be at least 2 (FID needs a covariance)")
    plan = demo_settings() if settings is None else settings
    missing = {"fp32", "tfmq-w8a8"} - set(plan)
    if missing:
        raise TfmqError(f"demo settings lack {', '.join(sorted(missing))}")
    out_dir = Path(out_dir)
    resolve_device(device)  # one line before anything is written
    check_writable(out_dir, "--out", folder=True)
    overrides = {"seed": seed or None, "settings": None if settings is None else ",".join(plan),
                 "bench_batches": None if bench_batches == (1, 64) else bench_batches,
                 "bench_iters": None if bench_iters == 20 else bench_iters,
                 "text_recipe": None if text_recipe is None else "custom",
                 "text_per_digit": None if text_per_digit == 4 else text_per_digit}
    provenance = start_provenance(_command(out_dir, num_images, device, overrides), "onnxruntime",
                                  _recipes(plan, settings is not None, text_recipe is not None))
    model = load_model("digits")
    rows = []
    onnx_files: dict[str, Path] = {}
    artifacts = {}
    reference = None
    comparisons: dict[str, str] = {}
    fp_second = None
    for name, setting in plan.items():
        start = time.perf_counter()
        artifact = calibrate(model, setting, out_dir / "calib" / name, progress=progress, device=device)
        artifacts[name] = artifact
        calib_s = time.perf_counter() - start
        onnx_path = export_onnx(model, artifact, out_dir / "onnx" / f"digits-{name}.onnx", target="onnxruntime")
        onnx_files[name] = onnx_path
        runner = open_runner("onnxruntime", onnx_path, name.split("-")[-1])
        spec = artifact_spec(artifact, model.sample_shape)
        images = sample_with(runner, spec, num_images, seed, batch_size=250, progress=progress)
        save_grid(images[:64], out_dir / "grids" / f"{name}.png")
        if reference is None:  # FP: a second seed gives the metric's own noise
            reference = images
            fp_second = sample_with(runner, spec, num_images, seed + 1, batch_size=250, progress=progress)
        else:
            save_comparison(reference[:64], images[:64], out_dir / "grids" / f"compare-{name}.png")
            comparisons[name] = f"grids/compare-{name}.png"
        rows.append({"setting": name, "fid": digits_fid(images), "rmse_vs_fp": paired_rmse(images, reference),
                     "calib_seconds": round(calib_s, 1), "onnx_bytes": onnx_path.stat().st_size})
    floor = real_floor_fid(seed)
    fp_name = next(iter(plan))
    steps = step_errors(model.unet, {k: v for k, v in artifacts.items() if k != fp_name}, artifacts[fp_name],
                        model.sample_shape, num_trajectories=step_trajectories, target="onnxruntime")
    plot_step_errors(steps, out_dir / "step-errors.png", title="digits: per-step error vs FP")
    bench = bench_to_json("digits", [onnx_files["fp32"], onnx_files["tfmq-w8a8"]], "torch,onnxruntime",
                          list(bench_batches), iters=bench_iters, threads=None, json_path=out_dir / "bench.json",
                          progress=progress, recipes=provenance["recipes"])
    text_rows = run_demo_text(out_dir / "text", per_digit=text_per_digit, seed=seed, progress=progress,
                              recipe=text_recipe, device=device)
    fid_seed2 = digits_fid(fp_second)
    data = {"rows": rows, "real_floor_fid": floor, "bench": bench["runs"], "text": text_rows,
            "fp_seed_noise": {"seed": seed + 1, "fid": fid_seed2, "fid_noise": abs(rows[0]["fid"] - fid_seed2)},
            "comparisons": comparisons, "step_errors": steps, "step_error_plot": "step-errors.png",
            "num_images": num_images, "seed": seed, "text_per_digit": text_per_digit,
            "provenance": end_provenance(provenance)}
    data["verdict"] = demo_verdict(data)
    report = demo_markdown(data)
    atomic_write_text(out_dir / "report.md", report)
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2))
    return report
