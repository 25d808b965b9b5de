"""NVIDIA ModelOpt's quantizers as peers of our methods: same UNet, same calibration inputs.

Why: a reviewer asks how the methods compare with a widely deployed quantizer, not only with each
other. ``nvidia-modelopt`` (``modelopt.torch.quantization``) inserts fake-quant ``TensorQuantizer``
modules into a torch model and calibrates them with a forward loop; it runs on the CPU.

The peers follow ModelOpt's own diffusers example (``examples/diffusers/quantization``):

- ``modelopt-int8``: ``mtq.INT8_SMOOTHQUANT_CFG`` (weights 8-bit per output channel, inputs 8-bit
  per tensor, max calibration) with the ``smoothquant`` algorithm at alpha 0.8 (the example's INT8
  arguments). SmoothQuant smooths ``nn.Linear`` layers only; convolutions get max calibration.
- ``modelopt-w4a16``: ``mtq.INT4_AWQ_CFG`` (4-bit weights in static blocks of 128 along the last
  weight axis, inputs unquantized, ``awq_lite``). AWQ runs on the CPU; it searches scales for
  ``nn.Linear`` only. For a Conv2d weight [O, I, kh, kw] the last axis is the kernel width, so every
  kernel row of ``kw`` values gets its own scale: much finer than our per-output-channel 4-bit grid.

After calibration, as in the example, the quantizers of layers whose names match ``FP_LAYERS``
(``conv_in``, ``conv_out``, ``conv_shortcut``, the time embedding and the ResBlock time projections,
...) are disabled: those layers stay in full precision.

The UNet quantized is our full-precision table UNet (``temporal.build_table_unet``): its temporal
branch is the exact per-step table, as in every method's rows (the example keeps the time
embedding in FP too), and it is fed the inputs ``calibration.data`` collects for the same seed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tfmq_export.calibration.data import CalibrationData, collect_calibration_data, device_denoiser
from tfmq_export.calibration.guided_data import guided_calibration_data
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import LoadedModel
from tfmq_export.sampling import resolve_scheduler_name, sampler_timesteps
from tfmq_export.temporal import TemporalTableUNet, build_table_unet

__all__ = [
    "FP_LAYERS",
    "MODELOPT_VERSION",
    "PEER_METHODS",
    "SMOOTHQUANT_ALPHA",
    "PeerUNet",
    "calibration_loop",
    "check_peer_method",
    "enabled_quantizers",
    "modelopt_quantize",
    "peer_config",
    "peer_table_unet",
]

#: peer method -> (weight bits, activation bits): the row of the table it belongs to
PEER_METHODS: dict[str, tuple[int, int]] = {"modelopt-int8": (8, 8), "modelopt-w4a16": (4, 16)}
#: the ModelOpt release the peers were measured with (pinned in pyproject's ``modelopt`` extra)
MODELOPT_VERSION = "0.47.0"
#: SmoothQuant's migration strength in the diffusers example's INT8 arguments (``--alpha 0.8``)
SMOOTHQUANT_ALPHA = 0.8
#: layers the diffusers example keeps in full precision (its default filter, by module name)
FP_LAYERS = re.compile(
    r".*(time_emb_proj|time_embedding|conv_in|conv_out|conv_shortcut|add_embedding|pos_embed|time_text_embed"
    r"|context_embedder|norm_out|x_embedder).*"
)


def check_peer_method(method: str) -> tuple[int, int]:
    """(wbits, abits) of ``method``; one line naming the peers otherwise."""
    if method not in PEER_METHODS:
        raise TfmqError(f"unknown ModelOpt peer {method!r}; choose from {', '.join(PEER_METHODS)}")
    return PEER_METHODS[method]


def _mtq() -> Any:
    """``modelopt.torch.quantization``, or one line saying how to install it."""
    try:
        import warnings

        with warnings.catch_warnings():  # it warns about an untested transformers version on import
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise TfmqError(f"the ModelOpt peers need nvidia-modelopt ({exc}); "
                        f"pip install 'tfmq-export[modelopt]' (nvidia-modelopt=={MODELOPT_VERSION})") from exc
    return mtq


def peer_config(method: str) -> dict[str, Any]:
    """A private copy of ModelOpt's config for ``method`` (ModelOpt's module-level dicts stay untouched)."""
    check_peer_method(method)
    mtq = _mtq()
    if method == "modelopt-int8":
        config = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
        config["algorithm"] = {"method": "smoothquant", "alpha": SMOOTHQUANT_ALPHA}
        return config
    return copy.deepcopy(mtq.INT4_AWQ_CFG)


def modelopt_quantize(unet: torch.nn.Module, method: str, forward_loop: Callable[[torch.nn.Module], None],
                      *, quiet: bool = True, config: dict[str, Any] | None = None) -> torch.nn.Module:
    """Quantize ``unet`` in place with ModelOpt's config for ``method``, calibrating with
    ``forward_loop(unet)``; then keep ``FP_LAYERS`` in full precision. Returns ``unet``.

    Any module works (a table UNet, a diffusers UNet): ``forward_loop`` knows how to call it.
    ``quiet`` swallows ModelOpt's progress prints; ``config`` replaces ``peer_config(method)``
    (a benchmark's variant, e.g. another weight grain)."""
    config = peer_config(method) if config is None else config
    mtq = _mtq()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        mtq.quantize(unet, config, forward_loop)
        mtq.disable_quantizer(unet, lambda name: FP_LAYERS.match(name) is not None)
    return unet


def enabled_quantizers(module: torch.nn.Module) -> dict[str, int]:
    """Name -> bits of every enabled ModelOpt ``TensorQuantizer`` in ``module`` (what was quantized)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    return {name: int(q.num_bits) for name, q in module.named_modules()
            if isinstance(q, TensorQuantizer) and q.is_enabled}


def calibration_loop(data: CalibrationData, batch_size: int) -> Callable[[torch.nn.Module], None]:
    """ModelOpt's ``forward_loop``: every calibration input, in order, through a table UNet."""

    def loop(unet: torch.nn.Module) -> None:
        with torch.no_grad():
            for samples, rows, conditions in data.batches(batch_size):
                unet(samples, rows, conditions)

    return loop


@dataclass
class PeerUNet:
    """A ModelOpt fake-quant table UNet and how it was made."""

    unet: TemporalTableUNet
    method: str
    timesteps: list[Any]
    scheduler: str
    calibration_seconds: float


def _calibration_data(model: LoadedModel, fp_sim: TemporalTableUNet, timesteps: list[Any],
                      settings: CalibrationSettings, progress: bool) -> CalibrationData:
    """The inputs ``calibration.pipeline`` collects for these settings (guided when ``model.guided``)."""
    if model.guided is not None:
        return guided_calibration_data(fp_sim, model, timesteps, settings, progress)
    if model.is_conditional and model.conditions is None:
        raise TfmqError("a conditional UNet needs conditions (or prompts) to calibrate a ModelOpt peer")
    return collect_calibration_data(device_denoiser(fp_sim, fp_sim), model.scheduler_config, timesteps,
                                    model.sample_shape, settings.num_samples, settings.seed, settings.batch_size,
                                    model.conditions, progress, scheduler=settings.scheduler,
                                    num_steps=settings.steps)


def peer_table_unet(model: LoadedModel, method: str, settings: CalibrationSettings,
                    progress: bool = False, config: dict[str, Any] | None = None) -> PeerUNet:
    """ModelOpt's ``method`` on a copy of ``model``'s full-precision table UNet, calibrated on the
    inputs our methods see for ``settings`` (steps, scheduler, num_samples, seed, batch_size;
    ``model.guided``: prompts with guidance). The time includes collecting the data, as our
    methods' ``calib_seconds`` does. ``config``: see ``modelopt_quantize``."""
    check_peer_method(method)
    _mtq()  # fail before minutes of data collection
    started = time.perf_counter()
    scheduler = resolve_scheduler_name(settings.scheduler, model.scheduler_config)
    timesteps = sampler_timesteps(model.scheduler_config, settings.steps, scheduler)
    fp_sim = build_table_unet(model.unet, timesteps).eval()
    torch.manual_seed(settings.seed)
    data = _calibration_data(model, fp_sim, timesteps, settings, progress)
    peer = copy.deepcopy(fp_sim)
    modelopt_quantize(peer, method, calibration_loop(data, settings.batch_size), config=config)
    return PeerUNet(peer.eval(), method, list(timesteps), scheduler, time.perf_counter() - started)
