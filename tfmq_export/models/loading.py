"""Load a UNet and its noise schedule from the bundled model or a local folder, offline.

MODEL is ``digits`` (the bundled model), a diffusers pipeline folder (``unet/`` and
``scheduler/``) or a bare UNet folder (``config.json`` + weights; the default DDPM schedule is
then assumed). Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tfmq_export.errors import TfmqError

#: diffusers' DDPMScheduler defaults, assumed for a bare UNet folder.
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
}

SUPPORTED_UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class LoadedModel:
    """A UNet in eval mode with what calibration and export need to know about it."""

    name: str
    unet: torch.nn.Module
    scheduler_config: dict[str, Any]
    source: str
    conditions: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def unet_class(self) -> str:
        return type(self.unet).__name__

    @property
    def is_conditional(self) -> bool:
        return self.unet_class == "UNet2DConditionModel"

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (int(cfg.in_channels), int(size), int(size))

    def fingerprint(self) -> str:
        return weights_fingerprint(self.unet)


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over parameter names, shapes and bytes: identifies the exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read {path}: {exc}") from exc


def _unet_folder(path: Path) -> tuple[Path, Path | None]:
    """Return (unet folder, scheduler folder or None) for a pipeline or bare UNet folder."""
    if (path / "unet" / "config.json").is_file():
        sched = path / "scheduler"
        return path / "unet", (sched if (sched / "scheduler_config.json").is_file() else None)
    if (path / "config.json").is_file():
        return path, None
    raise TfmqError(
        f"{path} is not a diffusers model folder: expected unet/config.json (pipeline) or config.json (bare UNet)"
    )


def load_unet_folder(unet_dir: Path) -> torch.nn.Module:
    """Load a UNet2DModel / UNet2DConditionModel from a local folder, refusing anything else."""
    config = _read_json(unet_dir / "config.json")
    class_name = config.get("_class_name")
    if class_name not in SUPPORTED_UNET_CLASSES:
        raise TfmqError(
            f"{unet_dir}/config.json describes {class_name!r}; supported UNets: {', '.join(SUPPORTED_UNET_CLASSES)}"
        )
    if not any((unet_dir / name).is_file() for name in _WEIGHT_FILES):
        raise TfmqError(f"{unet_dir} has no weights ({' or '.join(_WEIGHT_FILES)})")
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # keep errors to our one line
    cls = getattr(diffusers, class_name)
    try:
        unet = cls.from_pretrained(str(unet_dir), local_files_only=True, use_safetensors=None)
    except Exception as exc:  # diffusers raises many types for corrupt files
        raise TfmqError(f"cannot load the UNet in {unet_dir}: {str(exc).splitlines()[0]}") from exc
    return unet.eval().requires_grad_(False)


def load_model(model: str | Path) -> LoadedModel:
    """Load MODEL (``digits``, ``sd15-arch`` or a local folder) for calibration or export."""
    if str(model) == "digits":
        from tfmq_export.models.digits import DIGITS_DIR

        loaded = load_model(DIGITS_DIR)
        loaded.name = "digits"
        return loaded
    if str(model) == "sd15-arch":
        from tfmq_export.models.sd15 import build_sd15_arch_unet

        unet = build_sd15_arch_unet(seed=0).eval().requires_grad_(False)
        return LoadedModel("sd15-arch", unet, dict(DEFAULT_SCHEDULER_CONFIG), "sd15-arch (random weights)")
    path = Path(model)
    if not path.is_dir():
        raise TfmqError(f"model {str(model)!r} is neither 'digits' nor an existing folder")
    unet_dir, sched_dir = _unet_folder(path)
    unet = load_unet_folder(unet_dir)
    if sched_dir is not None:
        scheduler_config = _read_json(sched_dir / "scheduler_config.json")
    else:
        scheduler_config = dict(DEFAULT_SCHEDULER_CONFIG)
    return LoadedModel(path.name, unet, scheduler_config, str(path.resolve()))


def load_conditions(path: Path, unet: torch.nn.Module) -> torch.Tensor:
    """Read encoder_hidden_states [N, S, D] for a conditional UNet from a .npy file."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TfmqError(f"cannot read conditions from {path}: {exc}") from exc
    dim = unet.config.cross_attention_dim
    if array.ndim != 3 or array.shape[-1] != dim:
        raise TfmqError(f"{path} holds shape {array.shape}; expected [N, S, {dim}] encoder_hidden_states")
    return torch.from_numpy(array.astype("float32"))


def load_model_for_artifact(artifact: Any, model: str | None = None) -> LoadedModel:
    """The model an artifact was calibrated on: ``model`` if given, else the one it records."""
    name = model or (
        artifact.model_name if artifact.model_name in ("digits", "sd15-arch") else artifact.settings.get("model_source")
    )
    if not name:
        raise TfmqError("the artifact does not record its model; pass --model")
    return load_model(name)
