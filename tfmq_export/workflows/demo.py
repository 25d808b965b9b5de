"""The README's main job on the bundled ``digits`` model, end to end, with a short report.

calibrate (FP, TFMQ W8A8 and W4A8 from the digits recipes) -> export ONNX (onnxruntime target)
-> sample with onnxruntime -> digits-FID and RMSE to the FP samples from the same noise -> bench
(torch FP32, onnxruntime FP32 and W8A8); then the text-to-image model ``digits-text``: calibrate
with prompts, export every stage, sample each digit's prompt (``demo_text``) -> report.md. The full
method x bits tables are ``tfmq-export evaluate [--model digits-text]``.
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
from tfmq_export.workflows.evaluate import paired_rmse, recipe_settings
from tfmq_export.workflows.sample import artifact_spec, sample_with


def demo_settings() -> dict[str, CalibrationSettings]:
    """FP32 plus the shipped TFMQ recipes (digits-tfmq-w8a8, digits-tfmq-w4a8 in tfmq_export/recipes)."""
    return {
        "fp32": CalibrationSettings(method="minmax", wbits=16, abits=16),
        "tfmq-w8a8": recipe_settings("tfmq", "w8a8"),
        "tfmq-w4a8": recipe_settings("tfmq", "w4a8"),
    }


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
) -> str:
    """Run the whole flow into ``out_dir`` and return the Markdown report (also written there).

    ``settings`` replaces ``demo_settings()`` (it must keep the keys ``fp32`` and ``tfmq-w8a8``,
    which the bench compares) and ``text_recipe`` the calibration budget of the digits-text part;
    tests pass tiny ones. ``device``: where the calibrations run (cpu, cuda, cuda:N).
    """
    from tfmq_export.workflows.bench import bench_to_json
    from tfmq_export.workflows.demo_text import run_demo_text, text_demo_lines

    if num_images < 2:
        raise TfmqError("--num-images must be at least 2 (FID needs a covariance)")
    plan = demo_settings() if settings is None else settings
    missing = {"fp32", "tfmq-w8a8"} - set(plan)
    if missing:
        raise TfmqError(f"demo settings lack {', '.join(sorted(missing))}")
    out_dir = Path(out_dir)
    resolve_device(device)  # one line before anything is written
    check_writable(out_dir, "--out", folder=True)
    model = load_model("digits")
    rows = []
    onnx_files: dict[str, Path] = {}
    reference = None
    for name, setting in plan.items():
        start = time.perf_counter()
        artifact = calibrate(model, setting, out_dir / "calib" / name, progress=progress, device=device)
        calib_s = time.perf_counter() - start
        onnx_path = export_onnx(model, artifact, out_dir / "onnx" / f"digits-{name}.onnx", target="onnxruntime")
        onnx_files[name] = onnx_path
        runner = open_runner("onnxruntime", onnx_path, name.split("-")[-1])
        spec = artifact_spec(artifact, model.sample_shape)
        images = sample_with(runner, spec, num_images, seed, batch_size=250, progress=progress)
        save_grid(images[:64], out_dir / "grids" / f"{name}.png")
        reference = images if reference is None else reference
        rows.append({"setting": name, "fid": digits_fid(images), "rmse_vs_fp": paired_rmse(images, reference),
                     "calib_seconds": round(calib_s, 1), "onnx_bytes": onnx_path.stat().st_size})
    floor = real_floor_fid(seed)
    bench = bench_to_json("digits", [onnx_files["fp32"], onnx_files["tfmq-w8a8"]], "torch,onnxruntime",
                          list(bench_batches), iters=bench_iters, threads=None, json_path=out_dir / "bench.json",
                          progress=progress)
    text_rows = run_demo_text(out_dir / "text", per_digit=text_per_digit, seed=seed, progress=progress,
                              recipe=text_recipe, device=device)
    report = _report(rows, floor, bench, num_images, seed)
    report += "\n".join(text_demo_lines(text_rows, text_per_digit)) + "\n"
    atomic_write_text(out_dir / "report.md", report)
    atomic_write_text(out_dir / "report.json", json.dumps({"rows": rows, "real_floor_fid": floor,
                                                           "bench": bench["runs"], "text": text_rows}, indent=2))
    return report


def _report(rows, floor, bench, num_images, seed) -> str:
    lines = [
        "# tfmq-export demo on the bundled digits model",
        "",
        f"digits-FID over {num_images} samples (DDIM, seed {seed}), sampled by onnxruntime from the exported graphs;",
        f"real-vs-real floor (two halves of the 1,797 real digits): {floor:.3f}",
        "",
        "RMSE vs FP: pixel RMSE to the FP32 samples drawn from the same noise (FID at this sample size moves",
        "by several points between seeds; see docs/RESULTS.md for 5,000-sample figures).",
        "",
        "| setting | digits-FID | RMSE vs FP | calibration s | ONNX bytes |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r['setting']} | {r['fid']:.3f} | {r['rmse_vs_fp']:.4f} | {r['calib_seconds']} | "
              f"{r['onnx_bytes']:,} |" for r in rows]
    lines += ["", "UNet latency per call (median / p90 ms), measured side by side in one run:", "",
              "| backend | precision | batch | median ms | p90 ms | images/s | peak MB |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in bench["runs"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['latency_ms_median']:.2f} | "
                     f"{r['latency_ms_p90']:.2f} | {r['images_per_s']:.1f} | {r['peak_mem_mb']:.0f} |")
    ort = {(r["precision"], r["batch"]): r["latency_ms_median"]
           for r in bench["runs"] if r["backend"] == "onnxruntime"}
    for batch in sorted({b for _, b in ort}):
        if ("fp32", batch) in ort and ("w8a8", batch) in ort:
            speedup = ort[("fp32", batch)] / ort[("w8a8", batch)]
            lines.append(f"\nonnxruntime W8A8 vs FP32 at batch {batch}: {speedup:.2f}x")
    return "\n".join(lines) + "\n"
