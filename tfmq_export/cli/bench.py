"""``tfmq-export bench``."""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import deprecated_alias, output_options, replace_deprecated


@click.command("bench")
@click.argument("model", default="digits")
@click.option("--onnx", "onnx_paths", multiple=True, type=click.Path(path_type=Path), show_default="none",
              help="Exported graph(s) to time on every ONNX backend of --backends (precision from metadata).")
@click.option("--variant", "variant_specs", multiple=True, metavar="BACKEND=FILE", show_default="none",
              help="One backend on one file: .onnx, OpenVINO .xml or TensorRT .plan (engines need their manifest).")
@click.option("--backends", default=None, show_default="torch,onnxruntime; for pipeline folders: onnxruntime",
              help="Comma-separated: torch (runs MODEL in FP32), onnxruntime, openvino, tensorrt.")
@click.option("--onnx-pipeline", "pipelines", multiple=True, type=click.Path(path_type=Path), show_default="none",
              help="More exported pipeline folders timed beside MODEL (a pipeline folder), e.g. the W8A8 one.")
@click.option("--num-images", type=int, default=1, show_default=True,
              help="Pipeline bench: images generated per timed pipeline call.")
@click.option("--prompt", default=None, show_default="a fixed prompt",
              help="Pipeline bench: the prompt (any prompt times the same).")
@click.option("--negative-prompt", default=None, show_default="empty", help="Pipeline bench: the negative prompt.")
@click.option("--guidance-scale", type=float, default=None, show_default="the folder's",
              help="Pipeline bench: classifier-free guidance scale, above 1 (the bench times guided sampling).")
@click.option("--no-ov-default", is_flag=True,
              help="Pipeline bench: skip the ov-default rows (FP32 on OpenVINO's default precision, bf16 with AMX).")
@click.option("--nncf", is_flag=True, help="Also time NNCF's INT8 quantization of the FP32 --onnx graph on OpenVINO.")
@click.option("--nncf-engine", type=click.Path(path_type=Path), default=None, show_default="beside the FP32 graph",
              help="Where the NNCF IR is built or reused.")
@click.option("--nncf-samples", type=int, default=4, show_default=True,
              help="FP32 trajectories NNCF calibrates on (calibration trajectories, as calibrate --num-samples).")
@click.option("--batch-size", "batch_sizes", multiple=True, type=int, default=(1,), show_default=True,
              help="Samples per UNet call to time; repeat for several (--batch-size 1 --batch-size 2).")
@deprecated_alias("--batch", "--batch-size", multiple=True, type=int)
@click.option("--timed-calls", type=int, default=10, show_default=True,
              help="Timed calls per variant and batch size (UNet calls; whole pipeline calls for pipeline folders).")
@deprecated_alias("--iters", "--timed-calls", type=int)
@click.option("--warmup", type=int, default=2, show_default=True,
              help="Untimed calls per variant and batch size before the timed ones.")
@click.option("--sampling-runs", type=int, default=0, show_default=True,
              help="Full DDIM sampling runs per variant and batch (0: images/s derived from the UNet latency).")
@click.option("--pause-ms", type=float, default=0.0, show_default=True,
              help="Idle time between calls, so one backend's spinning threads do not slow the next.")
@click.option("--threads", type=int, default=None, show_default="all cores", help="Threads per backend.")
@click.option("--latent-size", type=int, default=None, show_default="the graphs' own",
              help="Sample height/width of the timed inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the timed inputs.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, show_default="not written",
              help="Also write the results as JSON here.")
@click.option("--no-memory", is_flag=True, help="Skip the per-variant peak-memory subprocesses.")
@output_options
@device_option
@friendly
def bench(model, onnx_paths, variant_specs, backends, pipelines, num_images, prompt, negative_prompt,
          guidance_scale, no_ov_default, nncf, nncf_engine, nncf_samples, batch_sizes, batch, timed_calls, iters,
          warmup, sampling_runs, pause_ms, threads, latent_size, seed, json_path, no_memory, quiet, device) -> None:
    """Time UNet calls (or whole pipelines, stage by stage) of several backends/precisions side by side.

    MODEL a pipeline folder (export-pipeline): every folder (MODEL and each --onnx-pipeline) runs
    whole text-to-image pipelines on every backend, round-robin, with per-stage times.

    \b
    Examples:
      tfmq-export bench digits --onnx fp32.onnx --onnx w8a8.onnx --backends torch,onnxruntime --json bench.json
      tfmq-export bench sd15-arch --onnx fp32.onnx --variant openvino=w8a8.xml --nncf --backends torch,openvino \\
          --latent-size 32 --threads 2 --batch-size 1 --batch-size 2 --sampling-runs 1 --json bench.json
      tfmq-export bench pipe-fp32/ --onnx-pipeline pipe-w8a8/ --backends onnxruntime,openvino --json bench.json
    """
    from tfmq_export.workflows.bench import bench_mode, bench_to_json
    from tfmq_export.workflows.bench.report import report_lines

    batches = replace_deprecated("--batch", "--batch-size", batch, batch_sizes, "batch_sizes")
    iters = replace_deprecated("--iters", "--timed-calls", iters, timed_calls, "timed_calls")
    unet_only = {"onnx": onnx_paths, "variant": variant_specs, "nncf": nncf, "sampling_runs": sampling_runs,
                 "latent_size": latent_size}
    is_pipeline, chosen = bench_mode(model, pipelines, backends, batches, unet_only, cli=True)
    if is_pipeline:
        if device != "cpu":
            raise click.ClickException("--device applies to the torch rows of a UNet bench; pipeline folders "
                                       "run on their backends")
        from tfmq_export.workflows.bench.pipeline import bench_pipelines_to_json, format_pipeline_row
        from tfmq_export.workflows.bench.pipeline_report import pipeline_report_lines

        result = bench_pipelines_to_json([Path(model), *pipelines], chosen, json_path=json_path,
                                         num_images=num_images, iters=iters, warmup=warmup, threads=threads,
                                         prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                         seed=seed, pause_ms=pause_ms, measure_memory=not no_memory,
                                         ov_default=not no_ov_default, progress=not quiet)
        for line in pipeline_report_lines(result, format_pipeline_row):
            click.echo(line)
        return

    result = bench_to_json(model, list(onnx_paths), chosen, list(batches), iters, threads, json_path,
                           not no_memory, latent_size, variant_specs=list(variant_specs), warmup=warmup,
                           sampling_runs=sampling_runs, pause_ms=pause_ms, seed=seed, nncf=nncf,
                           nncf_engine=nncf_engine, nncf_samples=nncf_samples, progress=not quiet, device=device)
    for line in report_lines(result):  # the verdict first, the rows, the provenance
        click.echo(line)
