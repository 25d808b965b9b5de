"""Text-to-image pipeline folders saved by diffusers: their stages, checked, loaded lazily.

A folder with ``model_index.json`` whose ``_class_name`` is ``StableDiffusionPipeline`` (SD 1.x /
2.x, epsilon or v-prediction, read from the scheduler config) or ``StableDiffusionXLPipeline``
has ``unet/ text_encoder/ tokenizer/ vae/ scheduler/`` (SDXL adds ``text_encoder_2/
tokenizer_2/``). ``read_pipeline`` checks the folder without loading any weights (supported
class, every stage present, each tokenizer no larger than its text encoder's vocabulary);
``PipelineParts`` loads the text encoders (transformers), tokenizers and VAE (diffusers) on first
use. Nothing is fetched from a hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError
from tfmq_export.io import read_json_object

__all__ = [
    "PIPELINE_STAGES",
    "SUPPORTED_PIPELINES",
    "PipelineParts",
    "TextEncoderPair",
    "is_text_to_image_folder",
    "pipeline_class_of",
    "read_pipeline",
]

#: pipeline class -> the stage folders it must have
PIPELINE_STAGES: dict[str, tuple[str, ...]] = {
    "StableDiffusionPipeline": ("unet", "text_encoder", "tokenizer", "vae", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae",
                                  "scheduler"),
}
SUPPORTED_PIPELINES = tuple(PIPELINE_STAGES)
#: the file that marks each stage folder as saved by ``save_pretrained``
_STAGE_FILES = {"unet": "config.json", "text_encoder": "config.json", "text_encoder_2": "config.json",
                "vae": "config.json", "scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json",
                "tokenizer_2": "tokenizer_config.json"}


def pipeline_class_of(path: Path) -> str | None:
    """The ``_class_name`` of ``path/model_index.json`` (None: not a pipeline folder)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    name = read_json_object(index).get("_class_name")
    return name if isinstance(name, str) else ""


def is_text_to_image_folder(path: Path) -> bool:
    """Whether ``path`` is a pipeline folder with a text encoder (supported or not)."""
    return pipeline_class_of(path) is not None and (Path(path) / "text_encoder").is_dir()


@dataclass
class TextEncoderPair:
    """One tokenizer and the CLIP text encoder it feeds (``name``: the encoder's stage folder)."""

    name: str
    tokenizer: Any
    encoder: Any

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def with_projection(self) -> bool:
        """SDXL's second encoder: its pooled, projected output (``text_embeds``) is used too."""
        return type(self.encoder).__name__ == "CLIPTextModelWithProjection"


@dataclass
class PipelineParts:
    """A checked pipeline folder; its stages load on first use (the UNet is ``LoadedModel.unet``)."""

    path: Path
    class_name: str
    scheduler_config: dict[str, Any]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_xl(self) -> bool:
        return self.class_name == "StableDiffusionXLPipeline"

    @property
    def stages(self) -> tuple[str, ...]:
        return PIPELINE_STAGES[self.class_name]

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def encoder_names(self) -> tuple[str, ...]:
        return ("text_encoder", "text_encoder_2") if self.is_xl else ("text_encoder",)

    def text_encoders(self) -> list[TextEncoderPair]:
        """Every (tokenizer, text encoder) pair, in the pipeline's order."""
        return [TextEncoderPair(name, self.tokenizer(name), self.text_encoder(name)) for name in self.encoder_names]

    def tokenizer(self, encoder_name: str = "text_encoder") -> Any:
        """The CLIP tokenizer that feeds ``encoder_name``."""
        folder = encoder_name.replace("text_encoder", "tokenizer")
        if folder not in self._cache:
            from transformers import CLIPTokenizer

            self._cache[folder] = _load(CLIPTokenizer, self.path / folder)
        return self._cache[folder]

    def text_encoder(self, name: str = "text_encoder") -> Any:
        """A CLIP text encoder (``CLIPTextModel`` or, for SDXL's second, ``CLIPTextModelWithProjection``)."""
        if name not in self._cache:
            import transformers

            class_name = read_json_object(self.path / name / "config.json").get("architectures", ["CLIPTextModel"])[0]
            if class_name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
                raise TfmqError(f"{self.path / name}: text encoder {class_name!r} is not a CLIP text model")
            model = _load(getattr(transformers, class_name), self.path / name)
            self._cache[name] = model.eval().requires_grad_(False)
        return self._cache[name]

    def vae(self) -> Any:
        """The AutoencoderKL (only its decoder is exported)."""
        if "vae" not in self._cache:
            from diffusers import AutoencoderKL

            self._cache["vae"] = _load(AutoencoderKL, self.path / "vae").eval().requires_grad_(False)
        return self._cache["vae"]

    def vae_config(self) -> dict[str, Any]:
        return read_json_object(self.path / "vae" / "config.json")

    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (diffusers: 2 ** (len(block_out_channels) - 1))."""
        return 2 ** (len(self.vae_config().get("block_out_channels", [0])) - 1)

    def force_zeros_for_empty_prompt(self) -> bool:
        """SDXL's rule: no negative prompt -> zero negative embeddings (model_index.json, default true)."""
        return bool(read_json_object(self.path / "model_index.json").get("force_zeros_for_empty_prompt", True))


def _load(cls: Any, folder: Path) -> Any:
    """``cls.from_pretrained(folder)`` offline, its failures as one line (and no per-file progress bar:
    our own bars say what runs)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers/diffusers raise many types for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TfmqError(f"cannot load {folder}: {first}") from exc


def _tokenizer_size(folder: Path) -> int:
    """Vocabulary size of a saved tokenizer, read from its files (tokenizer.json or vocab.json)."""
    if (folder / "tokenizer.json").is_file():
        model = read_json_object(folder / "tokenizer.json").get("model", {})
        vocab = model.get("vocab", {}) if isinstance(model, dict) else {}
        added = read_json_object(folder / "tokenizer.json").get("added_tokens", [])
        ids = [*vocab.values(), *(t.get("id", 0) for t in added if isinstance(t, dict))]
        return max(ids, default=-1) + 1
    if (folder / "vocab.json").is_file():
        return max(read_json_object(folder / "vocab.json").values(), default=-1) + 1
    raise TfmqError(f"{folder} has neither tokenizer.json nor vocab.json; the tokenizer cannot be read")


def read_pipeline(path: Path, scheduler_config: dict[str, Any] | None = None) -> PipelineParts:
    """Check a pipeline folder (class, stages, tokenizer vs text encoder) without loading weights.

    Refused with one line each: a pipeline class other than ``SUPPORTED_PIPELINES``, a missing
    stage folder, a tokenizer whose ids go beyond its text encoder's ``vocab_size``.
    """
    path = Path(path)
    class_name = pipeline_class_of(path)
    if class_name is None:
        raise TfmqError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    if class_name not in PIPELINE_STAGES:
        raise TfmqError(f"{path} holds a {class_name or 'unnamed'} pipeline; supported pipelines: "
                        f"{', '.join(SUPPORTED_PIPELINES)}")
    for stage in PIPELINE_STAGES[class_name]:
        if not (path / stage / _STAGE_FILES[stage]).is_file():
            raise TfmqError(f"{path} is missing its {stage}/ stage ({stage}/{_STAGE_FILES[stage]}); "
                            f"a {class_name} needs {', '.join(PIPELINE_STAGES[class_name])}")
    for encoder in ("text_encoder", "text_encoder_2"):
        if encoder not in PIPELINE_STAGES[class_name]:
            continue
        tokenizer_dir = path / encoder.replace("text_encoder", "tokenizer")
        vocab_size = read_json_object(path / encoder / "config.json").get("vocab_size")
        tokens = _tokenizer_size(tokenizer_dir)
        if isinstance(vocab_size, int) and tokens > vocab_size:
            raise TfmqError(f"{tokenizer_dir.name}/ has {tokens} tokens but {encoder}/ embeds only {vocab_size}; "
                            "the tokenizer does not belong to this text encoder")
    if scheduler_config is None:
        scheduler_config = read_json_object(path / "scheduler" / "scheduler_config.json")
    return PipelineParts(path, class_name, scheduler_config)
