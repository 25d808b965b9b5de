"""``sample ARTIFACT --prompt TEXT --backend torch``: a text-to-image pipeline around the torch simulation.

For a bare UNet, ``--backend torch`` samples an *artifact folder*: the quantization simulation of
its calibration, in torch (``workflows.sample._artifact_runner``). A pipeline keeps that meaning:
the UNet is the artifact's simulation (``quant.state.simulation_from_artifact``, fake-quant), the
float stages are the pipeline folder the artifact was calibrated on, run by transformers and
diffusers in FP32 (``models.prompts.encode_guided``, ``export.pipeline.VaeDecoderStage``: the
modules ``export-pipeline`` traces), and the guided loop is the one every backend shares. The
``.onnx`` stages of an export-pipeline folder are not torch: that folder with ``--backend torch``
is refused in one line naming what to pass instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfmq_export.contract import INPUT_CONDITIONS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS, precision_label
from tfmq_export.errors import TfmqError

__all__ = ["TorchPipelineSource", "check_torch_source", "torch_pipeline_images"]


def check_torch_source(path: Path) -> None:
    """``--backend torch`` with ``--prompt`` takes an artifact folder (one line otherwise)."""
    from tfmq_export.artifact import JSON_NAME
    from tfmq_export.workflows.sample_pipeline import is_pipeline_dir

    path = Path(path)
    if is_pipeline_dir(path):
        raise TfmqError(f"--backend torch runs the torch simulation of an artifact folder, not the ONNX stages of "
                        f"{path}: pass the artifact it was exported from (tfmq-export sample ARTIFACT --prompt TEXT "
                        "--backend torch), or choose --backend onnxruntime|openvino|tensorrt")
    if not (path / JSON_NAME).is_file():
        raise TfmqError(f"--backend torch with --prompt needs an artifact folder written by `calibrate PIPELINE`; "
                        f"{path} has no {JSON_NAME}")


@dataclass
class TorchPipelineSource:
    """An artifact of a text-to-image pipeline: what sampling needs before any weight is loaded."""

    path: Path
    artifact: Any  # CalibrationArtifact
    model_dir: Path

    @classmethod
    def read(cls, path: Path, model: str | None = None) -> TorchPipelineSource:
        from tfmq_export.artifact import load_artifact
        from tfmq_export.models.pipeline import is_text_to_image_folder

        check_torch_source(path)
        artifact = load_artifact(Path(path))
        name = model or artifact.settings.get("model_source") or artifact.model_name
        model_dir = Path(str(name))
        if not is_text_to_image_folder(model_dir):
            raise TfmqError(f"{path} was calibrated on {name}, which is not a text-to-image pipeline folder; "
                            "sample it without --prompt (or pass --model PIPELINE_FOLDER)")
        return cls(Path(path), artifact, model_dir)

    @property
    def precision(self) -> str:
        return precision_label(self.artifact.wbits, self.artifact.abits)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """The UNet's (C, h, w), read from its config (no weights loaded)."""
        from tfmq_export.io import read_json_object

        cfg = read_json_object(self.model_dir / "unet" / "config.json")
        size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
        return int(cfg["in_channels"]), int(size), int(size)

    def scheduler(self, name: str | None = None, steps: int | None = None) -> Any:
        """The calibrated scheduler and step count unless ``name``/``steps`` say otherwise."""
        from tfmq_export.sampling import make_scheduler

        return make_scheduler(name or self.artifact.settings.get("scheduler"), self.artifact.scheduler_config,
                              steps or len(self.artifact.timesteps))

    def guidance_scale(self) -> float:
        from tfmq_export.export.pipeline import DEFAULT_GUIDANCE_SCALE

        return float(self.artifact.settings.get("guidance_scale") or DEFAULT_GUIDANCE_SCALE)


def torch_pipeline_images(path: Path, prompt: str, *, negative_prompt: str | None = None,
                          guidance_scale: float | None = None, num_images: int = 1, seed: int = 0,
                          latents: torch.Tensor | None = None, threads: int | None = None,
                          scheduler: str | None = None, steps: int | None = None,
                          model: str | None = None) -> np.ndarray:
    """float32 images [N, H, W, 3] in [0, 1] of ``prompt``: the artifact's simulated UNet in the
    pipeline folder it was calibrated on (``model`` overrides the recorded folder)."""
    from tfmq_export.export.pipeline import VaeDecoderStage
    from tfmq_export.models.guidance import guided_sample, scheduler_rows
    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encode_guided
    from tfmq_export.quant.state import simulation_from_artifact
    from tfmq_export.sampling import initial_noise

    source = TorchPipelineSource.read(path, model)
    sampler = source.scheduler(scheduler, steps)  # refuses a bad --steps before any weight loads
    rows = scheduler_rows(source.artifact.timesteps, sampler, str(path))
    loaded = load_model(source.model_dir)
    source.artifact.check_model(loaded.fingerprint(), loaded.name)
    if latents is None:
        if num_images < 1:
            raise TfmqError(f"--num-images {num_images} must be positive")
        latents = initial_noise(num_images, loaded.sample_shape, seed)
    if threads:
        torch.set_num_threads(threads)
    assert loaded.pipeline is not None  # TorchPipelineSource.read checked the folder
    guidance = source.guidance_scale() if guidance_scale is None else float(guidance_scale)
    conditions = encode_guided(loaded.pipeline, [prompt], negative_prompt, guidance, loaded.sample_shape[-1])
    conditions = conditions.repeated(latents.shape[0])
    sim = simulation_from_artifact(loaded.unet, source.artifact).eval()

    def denoise(x: torch.Tensor, table_rows: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        return sim(x, table_rows, feed[INPUT_CONDITIONS], feed.get(INPUT_TEXT_EMBEDS), feed.get(INPUT_TIME_IDS))

    with torch.no_grad():
        final = guided_sample(denoise, sampler, latents, conditions, rows)
        images = VaeDecoderStage(loaded.pipeline.vae()).eval()(final)
    return np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1), dtype=np.float32)
