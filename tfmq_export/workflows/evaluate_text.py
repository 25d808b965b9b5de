"""``tfmq-export evaluate --model digits-text``: the method x bits table for a text-to-image pipeline.

Each setting runs the deployer's path end to end: calibrate the bundled ``digits-text`` pipeline with
prompts and classifier-free guidance (the digits recipes' settings), export every stage
(``export-pipeline``), then sample each digit's prompt through the exported pipeline with
onnxruntime, with guidance and without (scale 1). Two metrics: digits-FID of the guided images
against the real digits, and prompt accuracy (the digit classifier agrees with the prompted digit),
guided and unguided; plus the pixel RMSE to full-precision images drawn from the same noise.
Finished calibrations and samples are reused, so an interrupted run resumes at its row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError
from tfmq_export.images import save_grid
from tfmq_export.io import atomic_write_text
from tfmq_export.metrics.fid import digits_fid
from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy
from tfmq_export.models.digits_text import digit_prompt, digits_text_prompts
from tfmq_export.workflows.evaluate import (
    BIT_SETTINGS,
    QUALITY_PLOT,
    cached_arrays,
    copy_images,
    evaluation_jobs,
    note_marks,
    publish_file,
    recipe_lines,
    recipe_settings,
    reusable_artifact,
    sample_key,
)
from tfmq_export.workflows.evaluate_report import (
    TEXT_METRICS,
    evaluate_sections,
    evaluate_verdict,
    row_name,
    seed_lines,
)
from tfmq_export.workflows.evaluate_rows import (
    check_bits,
    check_methods,
    check_peers,
    fp_rows,
    is_peer,
    method_rows,
    parse_calib_seeds,
    peer_arrays,
    seed_name,
    seeded_jobs,
)
from tfmq_export.workflows.quality_plot import plot_quality
from tfmq_export.workflows.report_parts import end_provenance, save_comparison, start_provenance

__all__ = ["DEFAULT_TEXT_GUIDANCE", "DEFAULT_TEXT_NUM_IMAGES", "digit_grid_order", "evaluate_model",
           "prompt_images", "run_evaluate_text", "text_results_markdown", "text_settings"]

#: The guidance scale of calibration and of the guided rows (chosen on the FP model: docs/RESULTS-text.md).
DEFAULT_TEXT_GUIDANCE = 2.0
#: Images per setting and guidance (a tenth per digit).
DEFAULT_TEXT_NUM_IMAGES = 2000
#: The metric the verdict judges each setting by against the FP seed-to-seed difference.
VERDICT_METRIC = ("accuracy", "guided prompt accuracy")
#: Calibration settings taken from the digits recipes (the sampler and reconstruction budget).
RECIPE_KEYS = ("steps", "num_samples", "batch_size", "iters", "seed", "weight_init", "static_scale_rule",
               "temporal_table", "extra")


def text_settings(budget: Any, method: str, wbits: int, abits: int, guidance: float) -> dict[str, Any]:
    """Calibration overrides for digits-text: ``budget``'s (CalibrationSettings) sampler and reconstruction
    budget (``RECIPE_KEYS``), then the row's method, bits and guidance."""
    return {k: getattr(budget, k) for k in RECIPE_KEYS} | {"method": method, "wbits": wbits, "abits": abits,
                                                           "guidance_scale": guidance}


def _settings(method: str, bits: str, guidance: float, calib_seed: int | None = None) -> dict[str, Any]:
    """The overrides for one row: the digits recipe's budget, the row's method and bits, the guidance, the
    calibration seed (None: the recipe's)."""
    wbits, abits = (16, 16) if bits == "fp" else BIT_SETTINGS[bits]
    budget = recipe_settings(method, "w8a8" if bits == "fp" else bits, calib_seed)
    return text_settings(budget, method, wbits, abits, guidance)


def _calibrated(name: str, overrides: dict[str, Any], out_dir: Path, progress: bool,
                device: str = "cpu") -> CalibrationArtifact:
    """Reuse ``out_dir/calib/name`` when it holds these settings, else calibrate digits-text there."""
    from tfmq_export.workflows.calibrate import calibrate_model

    folder = out_dir / "calib" / name
    existing = reusable_artifact(folder, overrides | {"prompts": digits_text_prompts()})
    if existing is not None:
        return existing
    return calibrate_model("digits-text", folder, overrides, prompts=out_dir / "prompts.txt", progress=progress,
                           device=device)


def _exported(artifact_dir: Path, out_dir: Path, name: str, target: str) -> Path:
    """Export every stage of the row's artifact into ``out_dir/pipelines/name`` (replacing an old one)."""
    from tfmq_export.io import replace_folder, staged_dir
    from tfmq_export.workflows.export_pipeline import export_pipeline_folder

    final = out_dir / "pipelines" / name
    with staged_dir(final) as stage:
        # FP32 float parts whatever the target: the rows are sampled by onnxruntime on the CPU
        export_pipeline_folder(artifact_dir, stage / name, target=target, precision="fp32")
        replace_folder(stage / name, final)
    return final


def digit_grid_order(per_digit: int, rows: int | None = None) -> np.ndarray:
    """Indices putting images [10 * per_digit] (digit-major) into a grid of 10 columns, one per digit,
    ``rows`` (default all) images deep."""
    return np.arange(10 * per_digit).reshape(10, per_digit)[:, : rows or per_digit].T.reshape(-1)


def prompt_images(pipeline_dir: Path, per_digit: int, seed: int, guidance: float, progress: bool) -> np.ndarray:
    """Images [10 * per_digit, H, W, 3]: each digit's prompt, noise seeded by (seed, digit)."""
    from tfmq_export.workflows.sample_pipeline import pipeline_images

    digits = tqdm(range(10), desc=f"sample {pipeline_dir.name} (guidance {guidance:g}), per digit",
                  disable=not progress)
    return np.concatenate([pipeline_images(pipeline_dir, digit_prompt(d), num_images=per_digit,
                                           seed=seed * 1000 + d, guidance_scale=guidance) for d in digits])


def _cached_samples(artifact: CalibrationArtifact, name: str, out_dir: Path, per_digit: int, seed: int,
                    guidance: float, target: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(guided, unguided) images of one row, reused from ``out_dir/samples`` when the key matches."""
    def make() -> dict[str, np.ndarray]:
        pipeline_dir = _exported(out_dir / "calib" / name, out_dir, name, target)
        return {"guided": prompt_images(pipeline_dir, per_digit, seed, guidance, progress),
                "unguided": prompt_images(pipeline_dir, per_digit, seed, 1.0, progress)}

    cache = out_dir / "samples" / f"{name}-seed{seed}.npz"
    arrays = cached_arrays(cache, sample_key(artifact, per_digit, seed, guidance, target), make)
    return arrays["guided"], arrays["unguided"]


def _metrics(guided: np.ndarray, unguided: np.ndarray, name: str, out_dir: Path, per_digit: int,
             seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """FID and prompt accuracy of one setting's images (and its grid); returns them and the guided digits
    images (for the paired RMSE)."""
    digits = np.repeat(np.arange(10), per_digit)
    guided_d, unguided_d = pipeline_to_digits(guided), pipeline_to_digits(unguided)
    grid = out_dir / "grids" / f"{name}-seed{seed}.png"
    save_grid(guided_d[digit_grid_order(per_digit, min(per_digit, 8))], grid, columns=10)
    return {"seed": seed, "fid": digits_fid(guided_d), "accuracy": prompt_accuracy(guided_d, digits),
            "fid_unguided": digits_fid(unguided_d), "accuracy_unguided": prompt_accuracy(unguided_d, digits),
            "num_samples": len(guided)}, guided_d


def _row(artifact: CalibrationArtifact, name: str, out_dir: Path, per_digit: int, seed: int, guidance: float,
         target: str, progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of one setting; returns the row and its guided digits images (for the paired RMSE)."""
    guided, unguided = _cached_samples(artifact, name, out_dir, per_digit, seed, guidance, target, progress)
    metrics, guided_d = _metrics(guided, unguided, name, out_dir, per_digit, seed)
    row = {"method": artifact.method, "wbits": artifact.wbits, "abits": artifact.abits, **metrics,
           "guidance_scale": guidance, "backend": "onnxruntime", "target": target,
           "calib_seconds": round(artifact.timings.get("calib_seconds", 0.0), 2)}
    return row, guided_d


def _peer_row(fp: CalibrationArtifact, method: str, bits: str, calib_seed: int, out_dir: Path, per_digit: int,
              seed: int, guidance: float, progress: bool) -> tuple[dict[str, Any], np.ndarray]:
    """A peer's row: each digit's prompt sampled in torch (``evaluate_rows.peer_arrays``) from the noise
    our rows use, with and without guidance; cached like ours."""
    name = seed_name(method, bits, calib_seed)

    def make() -> dict[str, np.ndarray]:
        from tfmq_export.models.loading import load_model

        model, prompts = load_model("digits-text"), [(digit_prompt(d), d) for d in range(10)]
        runs = [peer_arrays(model, method, num_images=per_digit, seed=seed * 1000, calib_seed=calib_seed,
                            steps=fp.settings["steps"], batch_size=per_digit, progress=progress, prompts=prompts,
                            guidance_scale=g) for g in (guidance, 1.0)]
        return {"guided": runs[0]["images"], "unguided": runs[1]["images"], "note": runs[0]["note"],
                "calib_seconds": np.array(max(float(r["calib_seconds"]) for r in runs))}

    arrays = cached_arrays(out_dir / "samples" / f"{name}-seed{seed}.npz",
                           sample_key(fp, "peer", method, calib_seed, per_digit, seed, guidance), make)
    metrics, guided_d = _metrics(arrays["guided"], arrays["unguided"], name, out_dir, per_digit, seed)
    wbits, abits = BIT_SETTINGS[bits]
    row = {"method": method, "wbits": wbits, "abits": abits, **metrics, "guidance_scale": guidance,
           "backend": "torch", "target": None, "calib_seconds": round(float(arrays["calib_seconds"]), 2),
           "note": str(arrays["note"])}
    return row, guided_d


def _check(methods: list[str], bits: list[str], num_images: int, guidance: float) -> None:
    check_methods(methods)
    check_bits(bits)
    if num_images < 20 or num_images % 10:
        raise TfmqError(f"--num-images {num_images}: digits-text needs a multiple of 10 (one share per digit), >= 20")
    if guidance <= 1.0:
        raise TfmqError(f"--guidance-scale {guidance}: the guided rows need a scale above 1 (1 = the unguided rows)")


def run_evaluate_text(out_dir: Path, methods: list[str], bits: list[str],
                      num_images: int = DEFAULT_TEXT_NUM_IMAGES, seed: int = 0, target: str = "tensorrt",
                      guidance_scale: float = DEFAULT_TEXT_GUIDANCE, doc_path: Path | None = None,
                      progress: bool = True, device: str = "cpu", skip: Sequence[str] = (),
                      calib_seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate every method x bits (less ``skip``) x calibration seed (``evaluate_rows.row_seeds``) on
    ``digits-text`` through exported pipelines (calibrating on ``device``); returns the results."""
    _check(methods, bits, num_images, guidance_scale)
    calib_seeds = parse_calib_seeds(calib_seeds)
    jobs = seeded_jobs(evaluation_jobs(methods, bits, skip), calib_seeds)
    check_peers([m for m, _, _ in jobs])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "prompts.txt", "\n".join(digits_text_prompts()) + "\n")
    per_digit = num_images // 10
    command = (f"tfmq-export evaluate --model digits-text --out {out_dir} --methods {','.join(methods)} "
               f"--bits {','.join(bits)} --num-images {num_images} --seed {seed} --target {target} "
               f"--guidance-scale {guidance_scale} --device {device}"
               + (f" --calib-seeds {','.join(map(str, calib_seeds))}" if calib_seeds is not None else "")
               + (f" --skip {','.join(skip)}" if skip else "") + (f" --doc {doc_path}" if doc_path else ""))
    provenance = start_provenance(command, target, recipe_lines(methods, bits, "budget of "))
    comparisons: dict[str, str] = {}
    order = digit_grid_order(per_digit, min(per_digit, 8))  # as the grids
    fp = _calibrated("fp", _settings("minmax", "fp", guidance_scale), out_dir, progress, device)
    rows, reference = fp_rows(lambda fp_seed: _row(fp, "fp", out_dir, per_digit, fp_seed, guidance_scale, target,
                                                   progress), seed)

    def make_row(method: str, bit: str, calib_seed: int, name: str) -> tuple[dict[str, Any], np.ndarray]:
        if is_peer(method):
            return _peer_row(fp, method, bit, calib_seed, out_dir, per_digit, seed, guidance_scale, progress)
        artifact = _calibrated(name, _settings(method, bit, guidance_scale, calib_seed), out_dir, progress, device)
        return _row(artifact, name, out_dir, per_digit, seed, guidance_scale, target, progress)

    def first_seed(row: dict[str, Any], images: np.ndarray, _name: str) -> None:
        compare = f"compare/compare-{row_name(row)}-seed{seed}.png"  # not in grids/: _publish takes all those
        save_comparison(reference[order], images[order], out_dir / compare, columns=10)
        comparisons[row_name(row)] = compare

    rows += method_rows(jobs, calib_seeds, reference, make_row, first_seed, desc="evaluate digits-text",
                        progress=progress)
    if jobs:
        plot_quality(rows, out_dir / QUALITY_PLOT, TEXT_METRICS, title="digits-text")
    results = {"model": "digits-text", "rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": command, "verdict": evaluate_verdict(rows, *VERDICT_METRIC, TEXT_METRICS),
               "comparisons": comparisons, "quality_plot": QUALITY_PLOT if jobs else None,
               "calib_seeds": calib_seeds, "provenance": end_provenance(provenance), "skipped": list(skip)}
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    if doc_path is not None:
        _publish(results, out_dir, Path(doc_path))
    return results


def _publish(results: dict[str, Any], out_dir: Path, doc_path: Path) -> None:
    """The Markdown, its JSON and the grids beside it (``<stem>-grids/``)."""
    grid_dir = doc_path.parent / f"{doc_path.stem}-grids"
    grid_dir.mkdir(parents=True, exist_ok=True)
    grids = [publish_file(source, grid_dir) for source in sorted((out_dir / "grids").glob("*.png"))]
    atomic_write_text(doc_path.with_suffix(".json"), json.dumps(results, indent=2))
    atomic_write_text(doc_path, text_results_markdown(results, grids, copy_images(results, out_dir, grid_dir)))


def text_results_markdown(results: dict[str, Any], grids: list[str] | None = None,
                          links: dict[str, Any] | None = None) -> str:
    """The verdict, the table, the judgement of W8A8 against the FP seed-to-seed noise, the run's
    provenance and the images, all from ``results``; ``links``: the published images (``copy_images``)."""
    rows = results["rows"]
    links = links or {}
    fp = [r for r in rows if r["method"] == "fp"]
    fid_noise = abs(fp[0]["fid"] - fp[-1]["fid"])
    acc_noise = abs(fp[0]["accuracy"] - fp[-1]["accuracy"])
    verdict = evaluate_verdict(rows, *VERDICT_METRIC, TEXT_METRICS)
    marks, footnotes = note_marks(rows)
    lines = [
        "# Results on the bundled text-to-image model digits-text",
        "",
        *(["Verdict (computed from the table):", *[f"- {v}" for v in verdict], ""] if verdict else []),
        f"Command: `{results['command']}` ({results['created']}).",
        "",
        "Each row: calibrate `digits-text` with its ten digit prompts and classifier-free guidance, export every",
        "stage (`export-pipeline`), sample each digit's prompt through the exported pipeline with onnxruntime.",
        "Accuracy: the bundled digit classifier agrees with the prompted digit. FID: digits-FID of the guided",
        "images against the 1,797 real digits. RMSE: pixel RMSE to the FP images drawn from the same noise.",
        "Calib seed: the calibration seed (trajectories and minibatch order); every row samples the same noise.",
        f"FP with two seeds: FID {fp[0]['fid']:.3f} / {fp[-1]['fid']:.3f}, guided accuracy "
        f"{fp[0]['accuracy']:.3f} / {fp[-1]['accuracy']:.3f} (the metrics' noise).",
        "",
        "| method | W | A | calib seed | guided accuracy | unguided accuracy | FID (guided) | FID (unguided) | "
        "RMSE vs FP | calibration s | seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        rmse = "" if r.get("rmse_vs_fp") is None else f"{r['rmse_vs_fp']:.4f}"
        calib_seed = "" if r.get("calib_seed") is None else r["calib_seed"]
        lines.append(f"| {r['method']}{marks.get(r.get('note'), '')} | {r['wbits']} | {r['abits']} | {calib_seed} | "
                     f"{r['accuracy']:.3f} | {r['accuracy_unguided']:.3f} | {r['fid']:.3f} | {r['fid_unguided']:.3f} | "
                     f"{rmse} | {r['calib_seconds']} | {r['seed']} |")
    lines += ["", *footnotes] if footnotes else []
    lines += seed_lines(rows, TEXT_METRICS, links.get("quality_plot", results.get("quality_plot")))
    lines += ["", "## W8A8 against full precision (computed from the table)", ""]
    for r in rows:
        if (r["wbits"], r["abits"]) == (8, 8):
            d_fid, d_acc = r["fid"] - fp[0]["fid"], r["accuracy"] - fp[0]["accuracy"]
            within = abs(d_fid) <= fid_noise and abs(d_acc) <= max(acc_noise, 0.01)
            lines.append(f"- {r['method']} W8A8: FID {d_fid:+.3f} (FP seed noise {fid_noise:.3f}), accuracy "
                         f"{d_acc:+.3f} (FP seed noise {acc_noise:.3f}): {'within' if within else 'outside'} noise.")
    if grids:
        lines += ["", "## Samples (columns: digits 0-9, guided)", ""]
        lines += [f"- `{Path(g).stem}`: ![{Path(g).stem}]({g})" for g in grids]
    lines += evaluate_sections(results, links)
    return "\n".join(lines) + "\n"


def evaluate_model(model: str, out_dir: Path, methods: list[str], bits: list[str], *, num_images: int | None = None,
                   seed: int = 0, target: str = "tensorrt", guidance_scale: float | None = None,
                   doc_path: Path | None = None, progress: bool = True, device: str = "cpu",
                   skip: Sequence[str] = (),
                   calib_seeds: str | Sequence[int] | None = None) -> tuple[dict[str, Any], str]:
    """``evaluate --model digits|digits-text``: (results, their Markdown) for the CLI and the API;
    ``device``: where the calibrations run (sampling runs on the exported graphs); ``calib_seeds``: every
    quantized row's calibration seeds (None: ``evaluate_rows.row_seeds``' default per bit width)."""
    from tfmq_export.device import resolve_device
    from tfmq_export.workflows.evaluate import DEFAULT_NUM_IMAGES, results_markdown, run_evaluate

    resolve_device(device)  # one line before any work
    seeds = parse_calib_seeds(calib_seeds)

    if model == "digits":
        if guidance_scale is not None:
            raise TfmqError("--guidance-scale applies to --model digits-text (digits is unconditional)")
        results = run_evaluate(out_dir, methods, bits, num_images or DEFAULT_NUM_IMAGES, seed, target, doc_path,
                               progress=progress, device=device, skip=skip, calib_seeds=seeds)
        return results, results_markdown(results)
    if model != "digits-text":
        raise TfmqError(f"--model {model!r}: evaluate runs on the bundled models digits and digits-text")
    results = run_evaluate_text(out_dir, methods, bits, num_images or DEFAULT_TEXT_NUM_IMAGES, seed, target,
                                DEFAULT_TEXT_GUIDANCE if guidance_scale is None else guidance_scale, doc_path,
                                progress, device, skip, seeds)
    return results, text_results_markdown(results)
