"""``tfmq-export sample``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfmq_export.cli.device_option import device_option
from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options
from tfmq_export.contract import FLOAT_STAGES


@click.command("sample")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="PNG grid to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt", "torch"]), default="onnxruntime",
              show_default=True, help="torch runs the simulation of an artifact folder (with --prompt: in the "
                                      "pipeline it was calibrated on); tensorrt: a pipeline folder's built engines.")
@click.option("--num-images", type=int, default=None, show_default="64; a pipeline folder: 1",
              help="Images to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the initial noise.")
@click.option("--batch-size", type=int, default=250, show_default=True,
              help="Samples per UNet call while sampling a bare UNet.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              show_default="not written", help="Also write a JSON summary (and digits-FID for the digits model).")
@click.option("--model", default=None, show_default="recorded in the artifact or graph",
              help="The model (torch backend: the one the artifact folder was calibrated on; ONNX: checked "
                   "against the graph's recorded weight fingerprint).")
@click.option("--scheduler", type=click.Choice(["ddim", "pndm", "euler", "dpm++"]), default=None,
              show_default="the one calibrated on",
              help="Sampler; the table needs a row for each of its timesteps.")
@click.option("--steps", type=int, default=None, show_default="the calibrated count",
              help="Sampler steps; other counts need an export with --timesteps all.")
@click.option("--prompt", default=None, show_default="none", help="Pipeline folder (export-pipeline): the prompt.")
@click.option("--negative-prompt", default=None, show_default="empty", help="Pipeline folder: the negative prompt.")
@click.option("--guidance-scale", type=float, default=None, show_default="recorded in pipeline.json",
              help="Pipeline folder: classifier-free guidance scale, at least 1 (1 = no guidance).")
@click.option("--latents", "latents_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              show_default="from --seed",
              help="Pipeline folder: initial latents [N, C, h, w] (.npy); N images of the prompt.")
@click.option("--float-stages", type=click.Choice(FLOAT_STAGES), default=None,
              show_default="as build-engine recorded, else default",
              help="Pipeline folder: text encoder(s) and VAE decoder at the backend's default precision (OpenVINO: "
                   "its own, bf16 on AMX CPUs; TensorRT: FP16) or fp32 (diffusers parity).")
@click.option("--npy", "npy_path", type=click.Path(path_type=Path), default=None,
              show_default="not written",
              help="Pipeline folder: also write the images as float32 [N, H, W, 3] in [0, 1] (.npy).")
@output_options
@device_option
@friendly
def sample(source, out_path, backend, num_images, seed, batch_size, json_path, model, scheduler, steps, prompt,
           negative_prompt, guidance_scale, latents_path, float_stages, npy_path, device) -> None:
    """Sample images with the shared sampling loop from an exported ONNX file or an artifact folder.

    \b
    Example:
      tfmq-export sample engines/digits-w8a8.onnx --out samples.png --num-images 64
      tfmq-export sample engines/digits-all.onnx --scheduler euler --steps 25 --out samples.png
      tfmq-export sample engines/sd-w8a8 --prompt "a handwritten digit seven" --num-images 4 --out grid.png
      tfmq-export sample calib/sd-w8a8 --prompt "a handwritten digit seven" --backend torch --out grid.png
    """
    from tfmq_export.distributed import is_writer
    from tfmq_export.errors import TfmqError
    from tfmq_export.workflows.sample import sample_to_files
    from tfmq_export.workflows.sample_pipeline import is_pipeline_dir, sample_pipeline_cli

    if is_pipeline_dir(source) or prompt is not None:
        if device != "cpu":
            raise TfmqError("--device applies to an artifact folder or .onnx sampled without --prompt; pipeline "
                            "folders and --prompt run on the CPU in this version")
        summary = sample_pipeline_cli(source, out_path, prompt=prompt, negative_prompt=negative_prompt,
                                      guidance_scale=guidance_scale, num_images=num_images, seed=seed,
                                      latents_path=latents_path, npy_path=npy_path, backend=backend,
                                      scheduler=scheduler, steps=steps, float_stages=float_stages, model=model)
        click.echo(json.dumps(summary))
        return
    if float_stages is not None:
        raise TfmqError("--float-stages applies to pipeline folders (export-pipeline); a bare UNet has no float stages")
    summary = sample_to_files(source, out_path, backend, 64 if num_images is None else num_images, seed, batch_size,
                              json_path, model, scheduler, steps, device)
    if is_writer():  # torchrun: rank 0 reports
        click.echo(json.dumps(summary))
