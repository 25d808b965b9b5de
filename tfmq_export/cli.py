"""The ``tfmq-export`` command line: thin wrappers over the library.

Every command exits 0 on success, 2 on bad usage (click), and 1 with one line on bad input:
the library raises ``TfmqError`` and ``main`` turns it into ``click.ClickException``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from tfmq_export import __version__
from tfmq_export.errors import TfmqError


def _friendly(fn):
    """Turn the library's one error type (and unreadable files) into a one-line exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TfmqError as exc:
            raise click.ClickException(str(exc)) from None
        except (OSError, MemoryError) as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfmq-export")
def cli() -> None:
    """TFMQ-DM quantization of diffusion UNets, exported as Q/DQ ONNX for TensorRT, OpenVINO and onnxruntime.

    \b
    Typical flow on the bundled model:
      tfmq-export calibrate digits --out calib/out/w8a8 --method minmax --wbits 8 --abits 8
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-w8a8.onnx --target onnxruntime
      tfmq-export sample engines/digits-w8a8.onnx --out grid.png
      tfmq-export bench digits --onnx engines/digits-w8a8.onnx --json bench.json
    """


def _load_recipe(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(recipe, dict):
        raise TfmqError(f"recipe {path} must be a JSON object")
    return recipe


@cli.command()
@click.argument("model")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Artifact folder to write.")
@click.option("--method", type=click.Choice(["minmax", "qdiff", "tfmq"]), default=None, help="Calibration method.")
@click.option("--wbits", type=int, default=None, help="Weight bits: 4, 8 or 16 (16 = float).")
@click.option("--abits", type=int, default=None, help="Activation bits: 8 or 16 (16 = float).")
@click.option("--steps", type=int, default=None, help="DDIM sampler steps = rows of the temporal table.")
@click.option("--num-samples", type=int, default=None, help="Full-precision trajectories; every step of each is kept.")
@click.option("--iters", type=int, default=None, help="Reconstruction iterations per block (qdiff, tfmq).")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--static-scale-rule", type=click.Choice(["max", "mse"]), default=None,
              help="Engine activation scale from the per-step ranges: max over steps (default) or the least "
                   "error summed over the steps.")
@click.option("--temporal-table", type=click.Choice(["fp", "quantized"]), default=None,
              help="Build the table from the full-precision or the TIAR-quantized temporal block (tfmq).")
@click.option("--recipe", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="JSON preset (calib/*.json); command-line options override it.")
@click.option("--conditions", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="encoder_hidden_states [N, S, D] (.npy) for a conditional UNet.")
@click.option("--prompts", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Prompts file for a pipeline folder with a text encoder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def calibrate(model, out_dir, method, wbits, abits, steps, num_samples, iters, seed, batch_size, static_scale_rule,
              temporal_table, recipe, conditions, prompts, quiet) -> None:
    """Calibrate MODEL (`digits` or a local diffusers folder) and write an artifact to --out.

    \b
    Example:
      tfmq-export calibrate digits --out calib/out/tfmq-w4a8 --method tfmq --wbits 4 --abits 8
    """
    from tfmq_export.calibration.pipeline import CalibrationSettings
    from tfmq_export.calibration.pipeline import calibrate as run_calibration
    from tfmq_export.models.loading import load_conditions, load_model

    options = {k: v for k, v in _load_recipe(recipe).items() if k in CalibrationSettings.__dataclass_fields__}
    cli_values = {"method": method, "wbits": wbits, "abits": abits, "steps": steps, "num_samples": num_samples,
                  "iters": iters, "seed": seed, "batch_size": batch_size, "static_scale_rule": static_scale_rule,
                  "temporal_table": temporal_table}
    options.update({k: v for k, v in cli_values.items() if v is not None})
    settings = CalibrationSettings(**options)
    from tfmq_export.quant.simulate import check_bits

    check_bits(settings.wbits, settings.abits)
    if settings.steps < 1 or settings.num_samples < 1 or settings.batch_size < 1:
        raise TfmqError("--steps, --num-samples and --batch-size must be positive")
    if out_dir.exists() and not out_dir.is_dir():
        raise TfmqError(f"--out {out_dir} exists and is not a folder")
    loaded = load_model(model)
    if prompts is not None:
        raise TfmqError("--prompts needs a text encoder, which this build does not run; pass --conditions FILE.npy")
    if conditions is not None:
        loaded.conditions = load_conditions(conditions, loaded.unet)
    artifact = run_calibration(loaded, settings, out_dir, progress=not quiet)
    click.echo(
        f"wrote {out_dir} ({artifact.method} W{artifact.wbits}A{artifact.abits}, {len(artifact.layers)} quantized "
        f"layers, {len(artifact.timesteps)} steps, {artifact.timings['calib_seconds']:.1f} s)"
    )


@cli.command("export-onnx")
@click.argument("artifact_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True)
@click.option("--model", default=None, help="The model the artifact was calibrated on (default: recorded in it).")
@_friendly
def export_onnx_cmd(artifact_dir, out_path, target, model) -> None:
    """Export the calibrated UNet of ARTIFACT_DIR as a Q/DQ ONNX graph with the temporal table.

    \b
    Example:
      tfmq-export export-onnx calib/out/w8a8 --out engines/digits-w8a8.onnx --target tensorrt
    """
    from tfmq_export.artifact import load_artifact
    from tfmq_export.export.onnx_export import export_onnx
    from tfmq_export.models.loading import load_model_for_artifact

    artifact = load_artifact(artifact_dir)
    loaded = load_model_for_artifact(artifact, model)
    export_onnx(loaded, artifact, out_path, target)
    click.echo(f"wrote {out_path} ({target}, {artifact.method} W{artifact.wbits}A{artifact.abits})")


@cli.command("build-engine")
@click.argument("onnx_path", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default="onnxruntime",
              show_default=True)
@click.option("--min-batch", type=int, default=1, show_default=True, help="TensorRT profile.")
@click.option("--opt-batch", type=int, default=1, show_default=True, help="TensorRT profile.")
@click.option("--max-batch", type=int, default=2, show_default=True,
              help="TensorRT profile (classifier-free guidance doubles the batch).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="TensorRT timing cache file.")
@_friendly
def build_engine(onnx_path, out_path, backend, min_batch, opt_batch, max_batch, timing_cache) -> None:
    """Build an engine from an exported ONNX graph, with a JSON manifest beside it.

    \b
    Examples:
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.ort.onnx
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.xml --backend openvino
      tfmq-export build-engine engines/digits-w8a8.onnx --out engines/digits-w8a8.plan --backend tensorrt
    """
    if not Path(onnx_path).is_file():
        raise TfmqError(f"{onnx_path} does not exist")
    if backend == "onnxruntime":
        from tfmq_export.backends.onnxruntime.build import build_onnxruntime_engine

        manifest = build_onnxruntime_engine(onnx_path, out_path)
    elif backend == "openvino":
        from tfmq_export.backends.openvino.build import build_openvino_engine

        manifest = build_openvino_engine(onnx_path, out_path)
    else:
        from tfmq_export.backends.tensorrt.build import build_tensorrt_engine

        manifest = build_tensorrt_engine(onnx_path, out_path, min_batch=min_batch, opt_batch=opt_batch,
                                         max_batch=max_batch, timing_cache=timing_cache)
    click.echo(f"wrote {out_path} ({backend}); manifest: {json.dumps(manifest.get('summary', {}))}")


@cli.command()
@click.argument("onnx_path", type=click.Path(path_type=Path))
@_friendly
def lint(onnx_path) -> None:
    """Check an exported graph against TensorRT's explicit-quantization rules; exit 1 on violations."""
    from tfmq_export.export.lint import format_violations, lint_onnx_file

    violations = lint_onnx_file(onnx_path)
    if violations:
        click.echo(format_violations(violations))
        raise TfmqError(f"{len(violations)} TensorRT rule violation(s) in {onnx_path}")
    click.echo(f"{onnx_path}: no violations")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="PNG grid to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "torch"]), default="onnxruntime",
              show_default=True, help="torch runs the simulation of an artifact folder.")
@click.option("--num-images", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=250, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write a JSON summary (and digits-FID for the digits model).")
@click.option("--model", default=None, help="Model of an artifact folder (torch backend).")
@_friendly
def sample(source, out_path, backend, num_images, seed, batch_size, json_path, model) -> None:
    """Sample images with the shared DDIM loop from an exported ONNX file or an artifact folder.

    \b
    Example:
      tfmq-export sample engines/digits-w8a8.onnx --out samples.png --num-images 64
    """
    from tfmq_export.workflows.sample import sample_to_files

    summary = sample_to_files(source, out_path, backend, num_images, seed, batch_size, json_path, model)
    click.echo(json.dumps(summary))


@cli.command()
@click.argument("model", default="digits")
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(path_type=Path),
              help="Exported graph(s) to time on every ONNX backend of --backends (precision from metadata).")
@click.option("--variant", "variant_specs", multiple=True, metavar="BACKEND=FILE",
              help="One backend on one file: .onnx, OpenVINO .xml or TensorRT .plan (engines need their manifest).")
@click.option("--backends", default="torch,onnxruntime", show_default=True,
              help="Comma-separated: torch (runs MODEL in FP32), onnxruntime, openvino, tensorrt.")
@click.option("--nncf", is_flag=True, help="Also time NNCF's INT8 quantization of the FP32 --onnx graph on OpenVINO.")
@click.option("--nncf-engine", type=click.Path(path_type=Path), default=None,
              help="Where the NNCF IR is built or reused (default: beside the FP32 graph).")
@click.option("--nncf-samples", type=int, default=4, show_default=True, help="FP32 trajectories NNCF calibrates on.")
@click.option("--batch", "batches", multiple=True, type=int, default=(1,), show_default=True)
@click.option("--iters", type=int, default=10, show_default=True, help="Timed UNet calls per variant and batch.")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--sampling-runs", type=int, default=0, show_default=True,
              help="Full DDIM sampling runs per variant and batch (0: images/s derived from the UNet latency).")
@click.option("--pause-ms", type=float, default=0.0, show_default=True,
              help="Idle time between calls, so one backend's spinning threads do not slow the next.")
@click.option("--threads", type=int, default=None, help="Threads per backend (default: all cores).")
@click.option("--latent-size", type=int, default=None, help="Sample height/width (default: the graphs' own).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--no-memory", is_flag=True, help="Skip the per-variant peak-memory subprocesses.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def bench(model, onnx_paths, variant_specs, backends, nncf, nncf_engine, nncf_samples, batches, iters, warmup,
          sampling_runs, pause_ms, threads, latent_size, seed, json_path, no_memory, quiet) -> None:
    """Time UNet calls of several backends/precisions side by side (round-robin) and write JSON.

    \b
    Examples:
      tfmq-export bench digits --onnx fp32.onnx --onnx w8a8.onnx --backends torch,onnxruntime --json bench.json
      tfmq-export bench sd15-arch --onnx fp32.onnx --variant openvino=w8a8.xml --nncf --backends torch,openvino \\
          --latent-size 32 --threads 2 --batch 1 --batch 2 --sampling-runs 1 --json bench.json
    """
    from tfmq_export.workflows.bench.plan import bench_to_json, format_row

    result = bench_to_json(model, list(onnx_paths), backends, list(batches), iters, threads, json_path,
                           not no_memory, latent_size, variant_specs=list(variant_specs), warmup=warmup,
                           sampling_runs=sampling_runs, pause_ms=pause_ms, seed=seed, nncf=nncf,
                           nncf_engine=nncf_engine, nncf_samples=nncf_samples, progress=not quiet)
    for row in result["runs"]:
        click.echo(format_row(row))


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--methods", default="minmax,qdiff,tfmq", show_default=True)
@click.option("--bits", default="w8a8,w4a8,w4a16", show_default=True)
@click.option("--num-images", type=int, default=5000, show_default=True,
              help="Samples per setting (at least 1,000; FID with 1,000 moved 13.8-33.1 between seeds).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True)
@click.option("--doc", "doc_path", type=click.Path(path_type=Path), default=None,
              help="Also write the Markdown table here (e.g. docs/RESULTS.md).")
@click.option("--quiet", is_flag=True)
@_friendly
def evaluate(out_dir, methods, bits, num_images, seed, target, doc_path, quiet) -> None:
    """Calibrate (or reuse), export, sample and score every method x bits on the digits model.

    \b
    Example:
      tfmq-export evaluate --out runs/eval --doc docs/RESULTS.md
    """
    from tfmq_export.workflows.evaluate import results_markdown, run_evaluate

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in method_list if m not in ("minmax", "qdiff", "tfmq")]
    if bad:
        raise TfmqError(f"unknown method(s) {bad}; choose from minmax, qdiff, tfmq")
    if num_images < 2:
        raise TfmqError("--num-images must be at least 2 (FID needs a covariance)")
    results = run_evaluate(out_dir, method_list, [b.strip() for b in bits.split(",") if b.strip()], num_images,
                           seed, target, doc_path, progress=not quiet)
    click.echo(results_markdown(results))


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--num-images", type=int, default=1000, show_default=True)
@click.option("--quiet", is_flag=True)
@_friendly
def demo(out_dir, num_images, quiet) -> None:
    """The main job on the bundled model: calibrate (TFMQ W8A8, W4A8), export, sample, bench, report."""
    from tfmq_export.workflows.demo import run_demo

    report = run_demo(out_dir, num_images=num_images, progress=not quiet)
    click.echo(report)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
