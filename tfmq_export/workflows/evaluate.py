"""``tfmq-export evaluate``: the paper's table on the bundled model, measured end to end.

For every method x bit setting: calibrate (or reuse the artifact already in the output folder),
export ONNX, sample with onnxruntime from the exported graph, digits-FID. Plus full precision with
two seeds (the noise of the metric) and the real-vs-real floor. Writes results.json, PNG grids and
a Markdown table.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.artifact import CalibrationArtifact, load_artifact
from tfmq_export.backends.base import open_runner
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings, ExtraOptions, load_recipe, recipe_names, settings_from
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import export_onnx
from tfmq_export.images import save_grid
from tfmq_export.io import atomic_write, atomic_write_text
from tfmq_export.metrics.fid import digits_fid, real_floor_fid
from tfmq_export.models.loading import LoadedModel, load_model
from tfmq_export.workflows.evaluate_report import evaluate_sections, evaluate_verdict, row_name, seed_lines
from tfmq_export.workflows.evaluate_rows import (
    BIT_SETTINGS,
    check_bits,
    check_methods,
    check_peers,
    evaluation_jobs,
    fp_rows,
    is_peer,
    method_rows,
    paired_rmse,
    parse_calib_seeds,
    peer_arrays,
    seed_name,
    seeded_jobs,
)
from tfmq_export.workflows.quality_plot import plot_quality
from tfmq_export.workflows.report_parts import end_provenance, save_comparison, start_provenance
from tfmq_export.workflows.sample import artifact_spec, sample_with
from tfmq_export.workflows.step_errors import plot_step_errors, step_errors

__all__ = ["BIT_SETTINGS", "DEFAULT_NUM_IMAGES", "QUALITY_PLOT", "cached_arrays", "copy_images", "evaluation_jobs",
           "note_marks", "paired_rmse", "publish", "publish_file", "recipe_lines", "recipe_name", "recipe_settings",
           "results_markdown", "reusable_artifact", "run_evaluate", "sample_key"]

#: Samples per setting: with 1,000 the FID of full precision alone ranged 13.8-33.1 over ten seeds,
#: two sets of 5,000 gave 12.1 / 14.0 (``python benchmarks/fid_noise.py``).
DEFAULT_NUM_IMAGES = 5000
#: The shipped recipes evaluate reads, most specific first (``tfmq_export/recipes``, package data).
RECIPE_NAMES = ("digits-{method}-{bits}", "digits-{bits}")
#: Images per onnxruntime call when sampling a row.
SAMPLE_BATCH = 250
#: The quality-vs-bits plot's file in the run folder.
QUALITY_PLOT = "quality-vs-bits.png"


def recipe_name(method: str, bits: str) -> str | None:
    """The shipped recipe ``recipe_settings`` reads for ``method`` at ``bits`` (None: built-in defaults)."""
    shipped = set(recipe_names())
    return next((n for n in (p.format(method=method, bits=bits) for p in RECIPE_NAMES) if n in shipped), None)


def recipe_settings(method: str, bits: str, calib_seed: int | None = None) -> CalibrationSettings:
    """Settings for ``method`` at ``bits`` from the shipped recipe digits-<method>-<bits> (else
    digits-<bits>), strictly checked; method and bits as given, and the calibration seed when given
    (else the recipe's)."""
    wbits, abits = BIT_SETTINGS[bits]
    name = recipe_name(method, bits)
    recipe = {} if name is None else load_recipe(name)
    seed = {} if calib_seed is None else {"seed": calib_seed}
    return settings_from(recipe, {"method": method, "wbits": wbits, "abits": abits, **seed})


def reusable_artifact(folder: Path, wanted: dict[str, Any]) -> CalibrationArtifact | None:
    """The finished artifact in ``folder`` if its settings hold every non-None value of ``wanted`` and its
    method options resolved as ``wanted``'s resolve today (a default that changed since, or an artifact
    that predates the record, means calibrating again), else None."""
    if not (folder / "artifact.json").is_file():
        return None
    existing = load_artifact(folder)
    options = ExtraOptions.parse(wanted.get("extra"), wanted.get("method"), wanted.get("wbits")).record(
        wanted.get("guidance_scale"))
    if existing.settings.get("options") != options:
        return None
    return existing if all(existing.settings.get(k) == v for k, v in wanted.items() if v is not None) else None


def _artifact(model: LoadedModel, settings: CalibrationSettings, folder: Path, progress: bool, device: str = "cpu"):
    """Reuse a finished artifact with the same settings (computed on any device), else calibrate into
    ``folder`` on ``device``."""
    existing = reusable_artifact(folder, asdict(settings))
    return existing if existing is not None else calibrate(model, settings, folder, progress=progress, device=device)


def sample_key(artifact: CalibrationArtifact, *extra: Any) -> str:
    """Identifies one row's samples: the calibration run (its settings and timings) and ``extra`` (count, seed,
    target, ...)."""
    blob = json.dumps([artifact.model_fingerprint, artifact.settings, artifact.timings, *extra], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_arrays(cache: Path, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored in ``cache`` (.npz) under ``key``, else ``make()``'s, stored there atomically first;
    so an interrupted evaluation resumes at the row it was on."""
    if cache.is_file():
        with np.load(cache) as stored:
            if str(stored["key"]) == key:
                return {name: stored[name] for name in stored.files if name != "key"}
    arrays = make()
    cache.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays, key=np.array(key))

    atomic_write(cache, write)
    return arrays


def publish_file(source: Path, grid_dir: Path) -> str:
    """Copy ``source`` into ``grid_dir`` (atomically); its link from the document beside ``grid_dir``."""
    data = source.read_bytes()
    atomic_write(grid_dir / source.name, lambda tmp: Path(tmp).write_bytes(data))
    return f"{grid_dir.name}/{source.name}"


def _sampled_images(model, artifact, name: str, out_dir: Path, num_images: int, seed: int, target: str,
                    progress: bool) -> np.ndarray:
    """Export ``artifact`` and sample from the graph with onnxruntime, or reuse the samples a previous
    run of the same calibration, count, seed and target left in ``out_dir/samples`` (so an
    interrupted evaluation resumes at the row it was on)."""
    def make() -> dict[str, np.ndarray]:
        onnx_path = export_onnx(model, artifact, out_dir / "onnx" / f"{name}.onnx", target=target)
        spec = artifact_spec(artifact, model.sample_shape)
        return {"images": sample_with(open_runner("onnxruntime", onnx_path, name), spec, num_images, seed,
                                      SAMPLE_BATCH, progress)}

    cache = out_dir / "samples" / f"{name}-seed{seed}.npz"
    return cached_arrays(cache, sample_key(artifact, num_images, seed, target), make)["images"]


def _scored(images: np.ndarray, name: str, out_dir: Path, seed: int) -> dict[str, Any]:
    """The grid of one setting's samples and their FID."""
    save_grid(images[:64], out_dir / "grids" / f"{name}-seed{seed}.png")
    return {"fid": digits_fid(images), "num_samples": len(images), "seed": seed}


def _sample_row(model, artifact, name: str, out_dir: Path, num_images: int, seed: int, target: str,
                progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """Samples of one setting (see ``_sampled_images``), its grid and its row; returns the row and images."""
    images = _sampled_images(model, artifact, name, out_dir, num_images, seed, target, progress)
    row = {"method": artifact.method, "wbits": artifact.wbits, "abits": artifact.abits,
           **_scored(images, name, out_dir, seed), "backend": "onnxruntime",
           "calib_seconds": round(artifact.timings.get("calib_seconds", 0.0), 2), "target": target,
           "temporal_table": artifact.temporal_table}
    return row, images


def _peer_row(model: LoadedModel, fp: CalibrationArtifact, method: str, bits: str, calib_seed: int, out_dir: Path,
              num_images: int, seed: int, progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """A peer's row (``evaluate_rows.peer_arrays``: sampled in torch from the same noise as FP), its
    samples cached like ours (keyed by the FP calibration's model and the peer's settings)."""
    name, steps = seed_name(method, bits, calib_seed), fp.settings["steps"]
    arrays = cached_arrays(out_dir / "samples" / f"{name}-seed{seed}.npz",
                           sample_key(fp, "peer", method, calib_seed, num_images, seed, SAMPLE_BATCH),
                           lambda: peer_arrays(model, method, num_images=num_images, seed=seed, calib_seed=calib_seed,
                                               steps=steps, batch_size=SAMPLE_BATCH, progress=progress))
    wbits, abits = BIT_SETTINGS[bits]
    row = {"method": method, "wbits": wbits, "abits": abits, **_scored(arrays["images"], name, out_dir, seed),
           "backend": "torch", "calib_seconds": round(float(arrays["calib_seconds"]), 2), "target": None,
           "temporal_table": None, "note": str(arrays["note"])}
    return row, arrays["images"]


def _command(out_dir: Path, methods: list[str], bits: list[str], num_images: int, seed: int, target: str,
             device: str, skip: Sequence[str], calib_seeds: Sequence[int] | None, doc_path: Path | None) -> str:
    return (f"tfmq-export evaluate --out {out_dir} --methods {','.join(methods)} --bits {','.join(bits)} "
            f"--num-images {num_images} --seed {seed} --target {target} --device {device}"
            + (f" --calib-seeds {','.join(map(str, calib_seeds))}" if calib_seeds is not None else "")
            + (f" --skip {','.join(skip)}" if skip else "") + (f" --doc {doc_path}" if doc_path is not None else ""))


def recipe_lines(methods: list[str], bits: list[str], prefix: str = "") -> list[str]:
    """Provenance: the recipe behind each method x bits (a peer's settings are its own)."""
    return [f"{m}-{b}: " + ("ModelOpt's own configuration (evaluate_peers)" if is_peer(m)
                            else prefix + (recipe_name(m, b) or "built-in defaults"))
            for b in bits for m in methods]


def run_evaluate(out_dir: Path, methods: list[str], bits: list[str], num_images: int = DEFAULT_NUM_IMAGES,
                 seed: int = 0, target: str = "tensorrt", doc_path: Path | None = None,
                 progress: bool = True, device: str = "cpu", skip: Sequence[str] = (),
                 calib_seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate every method x bits x calibration seed (``evaluate_rows.row_seeds``) on the bundled
    digits model (calibrating on ``device``; sampling noise ``seed`` for every row); returns the results."""
    check_methods(methods)
    if num_images < 2:
        raise TfmqError("--num-images must be at least 2 (FID needs a covariance)")
    check_bits(bits)
    calib_seeds = parse_calib_seeds(calib_seeds)
    jobs = seeded_jobs(evaluation_jobs(methods, bits, skip), calib_seeds)
    check_peers([m for m, _, _ in jobs])
    out_dir = Path(out_dir)
    command = _command(out_dir, methods, bits, num_images, seed, target, device, skip, calib_seeds, doc_path)
    provenance = start_provenance(command, target, recipe_lines(methods, bits))
    model = load_model("digits")
    artifacts = {}
    comparisons: dict[str, str] = {}
    steps = recipe_settings("minmax", "w8a8").steps  # the FP table uses the recipes' sampler steps
    fp = _artifact(model, CalibrationSettings(wbits=16, abits=16, steps=steps), out_dir / "calib" / "fp", progress,
                   device)
    rows, reference = fp_rows(lambda fp_seed: _sample_row(model, fp, "fp", out_dir, num_images, fp_seed, target,
                                                          progress), seed)
    made: dict[str, CalibrationArtifact] = {}

    def make_row(method: str, bit: str, calib_seed: int, name: str) -> tuple[dict[str, Any], np.ndarray]:
        if is_peer(method):
            return _peer_row(model, fp, method, bit, calib_seed, out_dir, num_images, seed, progress)
        made[name] = _artifact(model, recipe_settings(method, bit, calib_seed), out_dir / "calib" / name, progress,
                               device)
        return _sample_row(model, made[name], name, out_dir, num_images, seed, target, progress)

    def first_seed(row: dict[str, Any], images: np.ndarray, name: str) -> None:
        if name in made:  # per-step errors: our artifacts (peers are sampled in torch only)
            artifacts[row_name(row)] = made[name]
        save_comparison(reference[:64], images[:64], out_dir / "grids" / f"compare-{row_name(row)}-seed{seed}.png")
        comparisons[row_name(row)] = f"grids/compare-{row_name(row)}-seed{seed}.png"

    rows += method_rows(jobs, calib_seeds, reference, make_row, first_seed, desc="evaluate", progress=progress)
    steps = step_errors(model.unet, artifacts, fp, model.sample_shape, target=target) if artifacts else None
    if steps is not None:
        plot_step_errors(steps, out_dir / "step-errors.png", title="digits: per-step error vs FP")
    if jobs:
        plot_quality(rows, out_dir / QUALITY_PLOT, title="digits")
    floor = real_floor_fid(seed)
    rows.append({"method": "real", "wbits": 32, "abits": 32, "fid": floor, "num_samples": 1797 // 2, "seed": seed,
                 "backend": "none", "calib_seconds": 0.0, "calib_seed": None, "rmse_vs_fp": None})
    results = {"rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
               "verdict": evaluate_verdict(rows), "comparisons": comparisons, "step_errors": steps,
               "step_error_plot": "step-errors.png" if steps is not None else None,
               "quality_plot": QUALITY_PLOT if jobs else None, "calib_seeds": calib_seeds,
               "provenance": end_provenance(provenance), "skipped": list(skip)}
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    if doc_path is not None:
        publish(results, out_dir, Path(doc_path))
    return results


def copy_images(results: dict[str, Any], out_dir: Path, grid_dir: Path) -> dict[str, Any]:
    """Copy the comparison images, the step plot and the quality-vs-bits plot of ``results`` into
    ``grid_dir``; their links there."""
    links: dict[str, Any] = {"comparisons": {}}
    wanted = [("comparisons", name, rel) for name, rel in (results.get("comparisons") or {}).items()]
    wanted += [(kind, None, results[key]) for kind, key in (("step_plot", "step_error_plot"),
                                                            ("quality_plot", "quality_plot")) if results.get(key)]
    for kind, name, rel in wanted:
        source = out_dir / rel
        if not source.is_file():
            continue
        if name is None:
            links[kind] = publish_file(source, grid_dir)
        else:
            links[kind][name] = publish_file(source, grid_dir)
    return links


def publish(results: dict[str, Any], out_dir: Path, doc_path: Path) -> None:
    """Write the Markdown at ``doc_path`` with its JSON (``<stem>.json``), the sample grids, comparison
    images and plots (``<stem>-grids/``) beside it, so the document links to files that travel with it."""
    grid_dir = doc_path.parent / f"{doc_path.stem}-grids"
    grid_dir.mkdir(parents=True, exist_ok=True)
    links = copy_images(results, out_dir, grid_dir)
    grids = []
    for row in results["rows"]:
        if row["method"] == "real":
            continue
        name = "fp" if row["method"] == "fp" else row_name(row)
        source = out_dir / "grids" / f"{name}-seed{row['seed']}.png"
        if source.is_file():
            grids.append(publish_file(source, grid_dir))
    atomic_write_text(doc_path.with_suffix(".json"), json.dumps(results, indent=2))
    atomic_write_text(doc_path, results_markdown(results, grids, links))


def note_marks(rows: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """A mark per distinct row note (peers: how they were run) and the footnote lines under a table."""
    notes = list(dict.fromkeys(r["note"] for r in rows if r.get("note")))
    marks = {note: "\u2020" * (i + 1) for i, note in enumerate(notes)}  # daggers: no Markdown syntax
    return marks, [f"{mark} {note}" for note, mark in marks.items()]


def results_markdown(results: dict[str, Any], grids: list[str] | None = None,
                     links: dict[str, Any] | None = None) -> str:
    """docs/RESULTS.md: the verdict, the table, the rows across calibration seeds with the lead rule and
    the quality-vs-bits plot, the run's provenance, the images, all from ``results`` (rerunnable, no hand
    edits); ``links``: where a published document finds the images (``copy_images``)."""
    rows = results["rows"]
    links = links or {}
    fp = [r["fid"] for r in rows if r["method"] == "fp"]
    verdict = evaluate_verdict(rows)
    marks, footnotes = note_marks(rows)
    lines = [
        "# Results on the bundled digits model",
        "",
        *(["Verdict (computed from the table):", *[f"- {v}" for v in verdict], ""] if verdict else []),
        f"Command: `{results['command']}` ({results['created']}).",
        "",
        "digits-FID: Frechet distance between classifier features of generated samples and the 1,797 real",
        "digits (lower is better). Samples come from the exported ONNX graph run by onnxruntime (DDIM, the",
        "recipes' steps). RMSE vs FP: pixel RMSE to the full-precision samples drawn from the same",
        "initial noise (0 = identical images); it separates methods that FID noise cannot. Calib seed: the",
        "calibration seed (trajectories and minibatch order); every row samples from the same noise (seed).",
        f"FP with two seeds: {', '.join(f'{v:.3f}' for v in fp)} (the metric's noise: {abs(fp[0] - fp[-1]):.3f}).",
        "The real-vs-real floor compares two halves of the real digits (898 vs 899 images); fewer images",
        "raise FID, so it is a floor for that sample size, not for the rows above it.",
        "",
        "| method | W | A | calib seed | digits-FID | gap to FP | RMSE vs FP | calibration s | samples | seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        gap = "" if r["method"] in ("fp", "real") else f"{r['fid'] - fp[0]:+.3f}"
        rmse = "" if r.get("rmse_vs_fp") is None else f"{r['rmse_vs_fp']:.4f}"
        calib_seed = "" if r.get("calib_seed") is None else r["calib_seed"]
        lines.append(f"| {r['method']}{marks.get(r.get('note'), '')} | {r['wbits']} | {r['abits']} | {calib_seed} | "
                     f"{r['fid']:.3f} | {gap} | {rmse} | {r['calib_seconds']} | {r['num_samples']} | {r['seed']} |")
    lines += ["", *footnotes] if footnotes else []
    lines += seed_lines(rows, plot=links.get("quality_plot", results.get("quality_plot")))
    if grids:
        lines += ["", "## Samples (first 64 of each setting)", ""]
        lines += [f"- `{Path(g).stem}`: ![{Path(g).stem}]({g})" for g in grids]
    lines += evaluate_sections(results, links)
    return "\n".join(lines) + "\n"
