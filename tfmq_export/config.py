"""Typed, validated calibration settings and the recipes that preset them.

``CalibrationSettings`` is everything that decides a calibration result; it is written into every
artifact so a result can be reproduced. Its ``extra`` dict holds the method options a recipe may
set (``ExtraOptions``, typed). Everything is checked when the settings are built, before any data
is collected: unknown keys, wrong types, unsupported bits, non-positive counts and unknown rule
names all stop with one ``TfmqError`` line naming the key (and the recipe file it came from).

Recipes are JSON objects shipped as package data (``tfmq_export/recipes/*.json``); ``load_recipe``
takes a recipe name (``digits-tfmq-w4a8``) or a path, ``settings_from`` merges command-line
overrides into one and validates the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError

__all__ = [
    "ACT_GRIDS",
    "DEFAULT_ITERS",
    "KEEP_FP_CLASSES",
    "METHODS",
    "METHOD_DEFAULTS",
    "OUTPUT_CORRECTIONS",
    "RECIPE_NOTE_KEYS",
    "SCHEDULER_NAMES",
    "STEP_SCALE_RULES",
    "SUPPORTED_ACT_BITS",
    "SUPPORTED_WEIGHT_BITS",
    "TEMPORAL_TABLES",
    "W4_METHOD_DEFAULTS",
    "WEIGHT_INITS",
    "CalibrationSettings",
    "ExtraOptions",
    "check_bits",
    "load_recipe",
    "recipe_names",
    "recipe_path",
    "settings_from",
]

#: Calibration methods, one module each in ``tfmq_export.calibration``.
METHODS = ("minmax", "qdiff", "tfmq")
#: Bit widths the deployment targets can express (16 = float, no quantizer).
SUPPORTED_WEIGHT_BITS = (4, 8, 16)
SUPPORTED_ACT_BITS = (8, 16)
#: ``extra.linear_act_grid``: the 8-bit grid of Linear (MatMul/Gemm) layer inputs. ``int8``: q in
#: [-128, 127] (int8 zero point 0, or uint8 zero point 128), what every other input uses.
#: ``uint8-127``: q in [-127, 128] (uint8 zero point 127), the range OpenVINO's CPU plugin runs as
#: an unsigned (u8) FullyConnected kernel; TensorRT's signed int8 cannot hold +128 (``export.qdq``).
ACT_GRIDS = ("int8", "uint8-127")
#: ``extra.output_correction``: the per-step correction of the output's mean error (``calibration.output_correction``)
OUTPUT_CORRECTIONS = ("none", "channel", "pixel")
#: Per-channel weight scale: plain max, or the paper's MSE search (80 candidates, |w - w^|^2.4).
WEIGHT_INITS = ("mse", "max")
#: Static activation scale from the per-step ranges: ``max`` (no step clips) or ``mse`` (least
#: quantization error summed over the sampler's steps, from per-step histograms).
STEP_SCALE_RULES = ("max", "mse")
#: The deployed temporal table: full-precision features or the quantized temporal branch's (tfmq).
TEMPORAL_TABLES = ("fp", "quantized")
#: ``--scheduler`` names (their diffusers classes: ``sampling.SCHEDULERS``); None = the model's own.
SCHEDULER_NAMES = ("ddim", "pndm", "euler", "dpm++")
#: Reconstruction iterations per block when ``iters`` is 0 (no recipe; the digits recipes set 300 / 375). 1,000 at
#: AdaRound rate 1e-2 beat 300 with no recipe on digits-text (docs/ANALYSIS.md, "Untuned defaults").
DEFAULT_ITERS = 1000
#: ``extra.keep_fp``: classes of layers kept float (the TFMQ-DM authors keep the 1x1 shortcut convs
#: and the downsample convs float); ``calibration.sensitivity`` maps them to layer names.
KEEP_FP_CLASSES = ("shortcuts", "downsamplers", "upsamplers")
#: Descriptive recipe keys that are not settings (what the preset is for, why its values).
RECIPE_NOTE_KEYS = ("model", "notes")
#: Where the shipped recipes live inside the package.
_RECIPE_PACKAGE = "tfmq_export.recipes"


# 1. type checks --------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _need_int(key: str, value: Any, minimum: int) -> None:
    if not _is_int(value):
        raise TfmqError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        word = "positive" if minimum == 1 else "non-negative"
        raise TfmqError(f"{key} must be a {word} integer, got {value}")


def _need_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise TfmqError(f"{key} {value!r} is not supported (choose from {', '.join(map(str, choices))})")


def check_bits(wbits: Any, abits: Any) -> None:
    """Refuse bit widths the deployment targets cannot express (and values that are not integers)."""
    for key, value, supported in (("wbits", wbits, SUPPORTED_WEIGHT_BITS), ("abits", abits, SUPPORTED_ACT_BITS)):
        if not _is_int(value):
            raise TfmqError(f"{key} must be an integer, got {value!r}")
        if value not in supported:
            raise TfmqError(f"--{key} {value} is not supported (choose from {', '.join(map(str, supported))})")


# 2. method options (the ``extra`` dict) -----------------------------------------------------------


#: what ``--method tfmq`` uses where neither the command nor a recipe sets these ``extra`` options
#: (other methods: the fields' defaults, the papers' values). Chosen with no recipe on two models
#: (digits-text and digits, three calibration seeds each; docs/ANALYSIS.md, "Untuned defaults"):
#: static activation scales, the rounding regulariser at 0.3 and the per-step output correction. The guided
#: loss and correction stay off: they did not lower the mean paired MSE (docs/ANALYSIS.md, "Guidance-aware ...").
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "tfmq": {"joint_act": False, "adaround_reg": 0.3, "output_correction": "pixel"},
}
#: what ``--method tfmq`` also uses at 4-bit weights where nothing sets them: 8-bit weights in the 1x1 shortcut
#: and the downsample convs (the authors keep them float; 8 bits cost 4-8% more weight bytes than all-4-bit,
#: float 30-58%, benchmarks/layer_class_bytes.py). With no recipe this took tfmq W4A8 from 0.96e-3 to 0.80e-3
#: mean paired MSE on digits-text (docs/ANALYSIS.md, "Untuned defaults on 1,000 images per seed").
W4_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "tfmq": {"w8_classes": ("shortcuts", "downsamplers")},
}

@dataclass(frozen=True)
class ExtraOptions:
    """The keys of ``CalibrationSettings.extra``, typed; every one optional.

    Reconstruction (qdiff and tfmq): ``recon_batch_size`` (minibatch, the authors' 32; 8 for SD),
    ``recon_samples`` (calibration inputs used for reconstruction, uniform over steps; 0 = all),
    ``act_samples_per_step`` (inputs per step for activation ranges; 0 = all; the authors' 256),
    ``cache_mb`` (memory for cached block inputs + targets), ``disk_cache`` (a block whose inputs +
    targets exceed ``cache_mb`` is captured into memory-mapped files instead of chunks; calibrate
    ``--cache-budget``), ``offload`` (with ``--device cuda``: the UNets stay in CPU memory and each
    top-level block visits the GPU while it runs, ``calibration.offload``; calibrate ``--offload``),
    ``recon_act_quant`` (activation quantization on while weights are learned), ``keep_checkpoints``
    (keep ``.work`` after a successful run), ``adaround_lr`` (Adam rate of the rounding variables;
    default ``3 / iters``, at least 1e-2), ``adaround_reg`` (weight of the rounding regulariser; the papers'
    0.01), ``adaround_warmup`` (fraction of the iterations before the regulariser starts; 0.2),
    ``step_weighting`` (p: each calibration input of step i weighs gain_i ** p in the reconstruction
    loss, gain_i = how far the sampler's step carries an output error into the next latent;
    0 = every input alike; ``calibration.step_weights``), ``output_correction`` (``OUTPUT_CORRECTIONS``:
    subtract the quantized output's mean error per step, per channel or per output element, measured
    on the calibration inputs; ``calibration.output_correction``; every method), ``guided_loss`` (0 to
    1, with guidance: weight of the guided output's error in the block loss, ``calibration.block_loss``),
    ``guided_correction`` (with guidance: the correction is the guided error's mean, not each half's).
    qdiff: ``act_iters`` (activation-scale iterations per block; default iters // 4, the ratio of
    Q-Diffusion's 5,000 to 20,000), ``act_lr`` (4e-5, BRECQ's LSQ rate), ``split_skip`` (two
    scales for concatenated skip inputs).
    tfmq: ``tiar_iters`` (default iters), ``step_factors`` (every activation quantizer keeps its
    per-step min-max range, deployed as per-step factors around one static scale), ``joint_act``
    (activation scales initialised from the FSC statistics and learned with the rounding in the same
    block loop; off by default: one no-recipe run in three landed far worse, docs/ANALYSIS.md), ``qdrop``
    (with ``joint_act``: probability that an activation stays float in the loss, QDrop's 0.5), ``split_skip``.
    minmax reads none of them; recipes shared by every method may still carry them.
    Every method: ``w8_layers`` (at wbits 4, this many of the weight layers that 4 bits hurt most,
    by measured sensitivity, keep 8-bit weights; ``calibration.sensitivity``), ``keep_fp`` (classes
    of layers left float, ``KEEP_FP_CLASSES``), ``w8_classes`` (at wbits 4, classes of layers that keep
    8-bit weights, same names; tfmq's default: shortcuts and downsamplers, ``W4_METHOD_DEFAULTS``),
    ``linear_act_grid`` (``ACT_GRIDS``: the input grid of the deployed Linear layers; ``--linear-act-grid``).
    """

    recon_batch_size: int = 32
    recon_samples: int = 0
    act_samples_per_step: int = 0
    cache_mb: float = 1024.0
    disk_cache: bool = False
    offload: bool = False
    recon_act_quant: bool = False
    keep_checkpoints: bool = False
    adaround_lr: float | None = None
    adaround_reg: float = 0.01
    adaround_warmup: float = 0.2
    step_weighting: float = 0.0
    output_correction: str = "none"
    guided_loss: float = 0.0
    guided_correction: bool = False
    act_iters: int | None = None
    act_lr: float = 4e-5
    split_skip: bool = True
    tiar_iters: int | None = None
    step_factors: bool = False
    joint_act: bool = False
    qdrop: float = 0.0
    w8_layers: int = 0
    keep_fp: tuple[str, ...] = ()
    w8_classes: tuple[str, ...] = ()
    linear_act_grid: str = "int8"

    #: keys whose value must be > 0 (others: >= 0)
    _POSITIVE = ("recon_batch_size", "cache_mb", "adaround_lr", "act_lr")
    #: keys whose value is one of a few names
    _CHOICES = (("linear_act_grid", ACT_GRIDS), ("output_correction", OUTPUT_CORRECTIONS))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def record(self, guidance_scale: float | None = None) -> dict[str, Any]:
        """Every option as resolved, defaults included, as JSON stores it (an artifact records it, so a reused
        one is known to hold today's defaults); without guidance the guided options cannot act: read as off."""
        options = self if (guidance_scale or 1.0) > 1.0 else replace(self, guided_loss=0.0, guided_correction=False)
        return {f.name: list(v) if isinstance(v := getattr(options, f.name), tuple) else v for f in fields(options)}

    @classmethod
    def parse(cls, extra: dict[str, Any] | None, method: str | None = None, wbits: int | None = None) -> ExtraOptions:
        """Check every key and value of ``extra``; refuse unknown keys and wrong types. ``method``: the
        options ``extra`` leaves out take that method's defaults (``METHOD_DEFAULTS``, and at ``wbits`` 4
        ``W4_METHOD_DEFAULTS``), else the fields'."""
        defaults = {**METHOD_DEFAULTS.get(method or "", {}),
                    **(W4_METHOD_DEFAULTS.get(method or "", {}) if wbits == 4 else {})}
        if extra is None:
            return cls(**defaults)
        if not isinstance(extra, dict):
            raise TfmqError(f"extra must be a JSON object of calibration options, got {extra!r}")
        unknown = sorted(set(extra) - set(cls.keys()))
        if unknown:
            raise TfmqError(f"unknown calibration option(s) {unknown} in extra; known: {', '.join(cls.keys())}")
        types = {f.name: str(f.type) for f in fields(cls)}
        for key, value in extra.items():
            choices = dict(cls._CHOICES).get(key)
            if choices is not None:
                _need_choice(f"calibration option {key}", value, choices)
                continue
            _check_option(key, value, types[key], key in cls._POSITIVE)
        for key, what in (("qdrop", "a probability"), ("guided_loss", "a weight")):
            if extra.get(key, 0) > 1:
                raise TfmqError(f"calibration option {key} is {what} (0 to 1), got {extra[key]!r}")
        if extra.get("adaround_warmup", 0) >= 1:
            raise TfmqError(f"calibration option adaround_warmup is a fraction of the iterations (0 to below 1), "
                            f"got {extra['adaround_warmup']!r}")
        values = {k: float(v) if "float" in types[k] and v is not None else v for k, v in extra.items()}
        return cls(**{**defaults, **{k: tuple(v) if "tuple" in types[k] else v for k, v in values.items()}})


def _check_option(key: str, value: Any, expected: str, positive: bool) -> None:
    if value is None and "None" in expected:
        return
    if "tuple" in expected:  # keep_fp, w8_classes: a list of layer-class names
        if not isinstance(value, list) or any(v not in KEEP_FP_CLASSES for v in value):
            raise TfmqError(f"calibration option {key} must be a list of {', '.join(KEEP_FP_CLASSES)}, got {value!r}")
        return
    if "bool" in expected:
        if not isinstance(value, bool):
            raise TfmqError(f"calibration option {key} must be true or false, got {value!r}")
        return
    if not _is_number(value) or value < 0:
        raise TfmqError(f"calibration option {key} must be a non-negative number, got {value!r}")
    if "float" not in expected and not _is_int(value):
        raise TfmqError(f"calibration option {key} must be a whole number, got {value!r}")
    if positive and value <= 0:
        raise TfmqError(f"calibration option {key} must be greater than 0, got {value!r}")


def _check_prompts(prompts: Any, negative_prompt: Any, guidance_scale: Any) -> None:
    """Prompts are a non-empty list of non-empty strings; guidance is a number >= 1 (1 = none)."""
    if prompts is not None and (not isinstance(prompts, list) or not prompts
                                or not all(isinstance(p, str) and p.strip() for p in prompts)):
        raise TfmqError(f"prompts must be a non-empty list of non-empty strings, got {prompts!r}")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise TfmqError(f"negative_prompt must be a string, got {negative_prompt!r}")
    if guidance_scale is not None and (not _is_number(guidance_scale) or guidance_scale < 1):
        raise TfmqError(f"--guidance-scale {guidance_scale!r} must be a number of at least 1 (1 = no guidance)")
    if prompts is None and (negative_prompt is not None or guidance_scale is not None):
        raise TfmqError("--negative-prompt and --guidance-scale need --prompts FILE.txt")


# 3. the settings --------------------------------------------------------------------------------


@dataclass
class CalibrationSettings:
    """Everything that decides a calibration result; written into the artifact.

    Built settings are valid (``validate`` runs on construction; ``calibrate`` runs it again, as
    fields may have changed since). ``extra`` stays the plain dict the user gave (that is what the
    artifact records); ``options`` is its typed form.
    """

    method: str = "minmax"
    wbits: int = 8
    abits: int = 8
    steps: int = 25
    num_samples: int = 64
    iters: int = 0
    seed: int = 0
    batch_size: int = 64
    weight_init: str = "mse"
    static_scale_rule: str = "max"
    temporal_table: str = "fp"
    #: the sampler calibrated on (``SCHEDULER_NAMES``); None: the model's own (DDIM for a DDPM config)
    scheduler: str | None = None
    extra: dict[str, Any] | None = None
    #: ``calibrate --prompts``: the prompts (one per trajectory, cycled), the negative prompt
    #: (None: empty) and the classifier-free guidance scale of the calibration pass
    prompts: list[str] | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (one ``TfmqError`` line naming the first bad one)."""
        _need_choice("method", self.method, METHODS)
        check_bits(self.wbits, self.abits)
        for key in ("steps", "num_samples", "batch_size"):
            _need_int(key, getattr(self, key), 1)
        if not _is_int(self.iters):
            raise TfmqError(f"iters must be an integer, got {self.iters!r}")
        if self.iters < 0:
            raise TfmqError(
                f"--iters {self.iters}: {self.method} needs a non-negative number of iterations per block "
                f"(0 = the default {DEFAULT_ITERS}; the authors use 20000 on a GPU)"
            )
        _need_int("seed", self.seed, 0)
        _need_choice("weight_init", self.weight_init, WEIGHT_INITS)
        if self.static_scale_rule not in STEP_SCALE_RULES:
            raise TfmqError(f"--static-scale-rule {self.static_scale_rule!r}: choose {' or '.join(STEP_SCALE_RULES)}")
        if self.temporal_table not in TEMPORAL_TABLES:
            raise TfmqError(f"--temporal-table {self.temporal_table!r}: choose {' or '.join(TEMPORAL_TABLES)}")
        if self.scheduler is not None:
            _need_choice("scheduler", self.scheduler, SCHEDULER_NAMES)
        ExtraOptions.parse(self.extra)
        _check_prompts(self.prompts, self.negative_prompt, self.guidance_scale)

    @property
    def options(self) -> ExtraOptions:
        """The typed method options (``extra``, the method's defaults where it says nothing)."""
        return ExtraOptions.parse(self.extra, self.method, self.wbits)

    @property
    def quantized(self) -> bool:
        return not (self.wbits >= 16 and self.abits >= 16)

    @property
    def reconstructs(self) -> bool:
        """True for the methods that learn block by block (an iteration budget applies)."""
        return self.method in ("qdiff", "tfmq")

    def record(self) -> dict[str, Any]:
        """The settings as the artifact records them (unset optional values left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


# 4. recipes -------------------------------------------------------------------------------------


def recipe_names() -> list[str]:
    """Names of the shipped recipes (file names without ``.json``)."""
    folder = resources.files(_RECIPE_PACKAGE)
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def recipe_path(name_or_path: str | Path) -> Path:
    """The file of a shipped recipe name (``digits-tfmq-w4a8``) or of a path to a JSON file."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".json" or path.parent != Path(".") or path.exists():
        if not path.is_file():
            raise TfmqError(f"recipe {path} does not exist")
        return path
    shipped = Path(str(resources.files(_RECIPE_PACKAGE).joinpath(f"{text}.json")))
    if not shipped.is_file():
        raise TfmqError(f"unknown recipe {text!r}: give a path to a JSON file or one of {', '.join(recipe_names())}")
    return shipped


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """A recipe's settings as a dict, checked strictly (unknown keys and wrong types refused, naming
    the key and the file); the descriptive keys (``model``, ``notes``) are dropped."""
    path = recipe_path(name_or_path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(recipe, dict):
        raise TfmqError(f"recipe {path} must be a JSON object")
    known = CalibrationSettings.field_names()
    for key, value in recipe.items():
        if key in RECIPE_NOTE_KEYS:
            if not isinstance(value, str):
                raise TfmqError(f"recipe {path}: {key} must be a string, got {value!r}")
        elif key not in known:
            raise TfmqError(f"recipe {path}: unknown key {key!r} (known: {', '.join((*known, *RECIPE_NOTE_KEYS))})")
    settings = {k: v for k, v in recipe.items() if k not in RECIPE_NOTE_KEYS}
    _build(settings, f"recipe {path}")
    return settings


def _build(values: dict[str, Any], where: str) -> CalibrationSettings:
    try:
        return CalibrationSettings(**values)
    except TfmqError as exc:
        raise TfmqError(f"{where}: {exc}") from exc


def settings_from(recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> CalibrationSettings:
    """Settings from a recipe (``load_recipe``) with ``overrides`` on top (``None`` values = not
    given, as click passes them); validated. Unknown override keys are refused."""
    values = dict(recipe or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(CalibrationSettings.field_names()))
    if unknown:
        raise TfmqError(f"unknown calibration setting(s) {unknown}")
    values.update(given)
    return _build(values, "calibration settings")
