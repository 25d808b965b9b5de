"""Load a UNet and its noise schedule from the bundled model or a local folder, offline.

MODEL is ``digits`` (the bundled model), a diffusers pipeline folder (``unet/`` and
``scheduler/``) or a bare UNet folder (``config.json`` + weights; the default DDPM schedule is
then assumed). Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfmq_export.errors import TfmqError
from tfmq_export.io import read_json_object
from tfmq_export.models.guidance import GuidedConditions
from tfmq_export.models.pipeline import SUPPORTED_PIPELINES, PipelineParts, pipeline_class_of, read_pipeline

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_SCHEDULER_CONFIG",
    "SUPPORTED_UNET_CLASSES",
    "LoadedModel",
    "check_fingerprint",
    "check_finite_weights",
    "load_conditions",
    "load_model",
    "load_model_for_artifact",
    "load_unet_folder",
    "weights_fingerprint",
]

#: MODEL names that need no folder: the shipped models and the SD-1.5 architecture with random weights.
BUNDLED_MODELS = ("digits", "digits-text", "sd15-arch")

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
    #: the text-to-image pipeline around the UNet (a pipeline folder), its other stages loaded lazily
    pipeline: PipelineParts | None = None
    #: prompt conditions with guidance (``calibrate --prompts``), used instead of ``conditions``
    guided: GuidedConditions | None = None

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


def check_fingerprint(graph_fingerprint: str, model: LoadedModel, source: str) -> None:
    """Refuse to pair a graph or engine with a MODEL whose weights it was not exported from.

    ``graph_fingerprint`` is the ``tfmq.model_fingerprint`` a file records (empty: not recorded,
    nothing to compare); ``source`` names the file in the one-line error.
    """
    if not graph_fingerprint:
        return
    actual = model.fingerprint()
    if graph_fingerprint != actual:
        raise TfmqError(
            f"{source} was exported from other weights ({graph_fingerprint[:12]}) than MODEL {model.name!r} "
            f"({actual[:12]}); pass the model it was calibrated on"
        )


def check_finite_weights(module: torch.nn.Module, source: str) -> None:
    """Refuse weights with NaN or Inf: they calibrate, export and sample noise without a word."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise TfmqError(
                f"{source}: weight {name} holds {bad} non-finite value(s) (NaN/Inf); the model is damaged"
            )


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
    config = read_json_object(unet_dir / "config.json")
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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TfmqError(f"cannot load the UNet in {unet_dir}: {first}") from exc
    check_finite_weights(unet, str(unet_dir))
    return unet.eval().requires_grad_(False)


def load_model(model: str | Path) -> LoadedModel:
    """Load MODEL (``digits``, ``digits-text``, ``sd15-arch`` or a local folder) for calibration or export."""
    if str(model) == "digits":
        from tfmq_export.models.digits import DIGITS_DIR

        loaded = load_model(DIGITS_DIR)
        loaded.name = "digits"
        return loaded
    if str(model) == "digits-text":
        from tfmq_export.models.digits_text import DIGITS_TEXT_DIR

        loaded = load_model(DIGITS_TEXT_DIR)
        loaded.name = "digits-text"
        return loaded
    if str(model) == "sd15-arch":
        from tfmq_export.models.sd15 import build_sd15_arch_unet

        unet = build_sd15_arch_unet(seed=0).eval().requires_grad_(False)
        return LoadedModel("sd15-arch", unet, dict(DEFAULT_SCHEDULER_CONFIG), "sd15-arch (random weights)")
    path = Path(model)
    if not path.is_dir():
        raise TfmqError(f"model {str(model)!r} is not 'digits', 'digits-text', 'sd15-arch' or an existing folder")
    pipeline = _text_to_image_pipeline(path)
    unet_dir, sched_dir = _unet_folder(path)
    unet = load_unet_folder(unet_dir)
    if sched_dir is not None:
        scheduler_config = read_json_object(sched_dir / "scheduler_config.json")
    else:
        scheduler_config = dict(DEFAULT_SCHEDULER_CONFIG)
    return LoadedModel(path.name, unet, scheduler_config, str(path.resolve()), pipeline=pipeline)


def _text_to_image_pipeline(path: Path) -> PipelineParts | None:
    """The checked pipeline of a folder with a text encoder (None: a UNet-only folder, e.g. digits).

    A text-to-image pipeline of another class is refused here, naming the supported ones.
    """
    class_name = pipeline_class_of(path)
    if class_name is None or (class_name not in SUPPORTED_PIPELINES and not (path / "text_encoder").is_dir()):
        return None
    return read_pipeline(path)


def _read_npy(path: Path) -> Any:
    """One array from a ``numpy.save`` file; never unpickles (a .npy of objects is refused)."""
    import numpy as np

    if path.is_dir():
        raise TfmqError(f"--conditions {path} is a folder; expected a .npy file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
            if magic[:2] == b"PK":
                raise TfmqError(f"--conditions {path} is an .npz archive; save the one array with numpy.save (.npy)")
            if magic != b"\x93NUMPY":
                raise TfmqError(f"--conditions {path} is not a .npy file (numpy.save format)")
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise TfmqError(f"cannot read --conditions {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # object arrays, damaged headers, truncated data
        raise TfmqError(f"--conditions {path} is not a readable float array (numpy.save format)") from exc


def load_conditions(path: Path, model: LoadedModel) -> torch.Tensor:
    """Read encoder_hidden_states [N, S, D] for a conditional UNet from a .npy file.

    Refused, each with one line: a model without cross-attention, files that are not one
    ``numpy.save`` array, complex / integer / string data, the wrong shape, NaN or Inf.
    """
    import numpy as np

    path = Path(path)
    if not model.is_conditional:
        raise TfmqError(f"--conditions {path}: {model.name} is an unconditional UNet ({model.unet_class}); "
                        "it takes no conditions")
    array = _read_npy(path)
    dim = int(model.unet.config.cross_attention_dim)
    if array.dtype.kind != "f":
        what = {"c": "complex numbers", "b": "booleans", "i": "integers", "u": "integers"}.get(
            array.dtype.kind, f"{array.dtype} values")
        raise TfmqError(f"--conditions {path} holds {what}; expected real float encoder_hidden_states")
    if array.ndim != 3 or array.shape[-1] != dim or 0 in array.shape:
        raise TfmqError(f"--conditions {path} holds shape {list(array.shape)}; expected [N, S, {dim}] "
                        "encoder_hidden_states (N, S >= 1)")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, refused just below
        array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise TfmqError(f"--conditions {path} holds {int((~finite).sum())} non-finite value(s) (NaN/Inf, "
                        "or beyond float32)")
    return torch.from_numpy(array)


def load_model_for_artifact(artifact: Any, model: str | None = None) -> LoadedModel:
    """The model an artifact was calibrated on: ``model`` if given, else the one it records."""
    name = model or (
        artifact.model_name if artifact.model_name in BUNDLED_MODELS else artifact.settings.get("model_source")
    )
    if not name:
        raise TfmqError("the artifact does not record its model; pass --model")
    return load_model(name)
