"""Quantizers and quantized Conv2d / Linear for the torch simulation.

State lives in registered buffers (so ``state_dict`` round-trips without a dummy forward) and
modes are explicit (ModelOpt style): an activation quantizer is ``disabled``, ``observing``
(records per-step ranges, passes values through) or ``quantizing``. The simulation computes
what the exported Q/DQ graph computes: ``conv(DQ(Q(x)), DQ(q_w)) + b``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from tfmq_export.quant import grids
from tfmq_export.quant.grids import QuantizerError
from tfmq_export.quant.steps import current_steps


class ActMode(str, Enum):
    DISABLED = "disabled"
    OBSERVING = "observing"
    QUANTIZING = "quantizing"


class ActQuantizer(nn.Module):
    """Per-tensor symmetric activation quantizer with per-step range statistics.

    Buffers: ``scale`` (0 until calibrated), ``step_min`` / ``step_max`` [num_steps] (running
    min / max of the input per table row), ``output_absmax`` of the owning layer's output
    (used by the onnxruntime target to quantize Conv outputs). ``grid``: ``config.ACT_GRIDS``.
    """

    def __init__(self, bits: int, num_steps: int, grid: str = "int8") -> None:
        super().__init__()
        grids.act_range(8, grid)  # an unknown grid stops here
        self.bits, self.grid = bits, grid
        self.mode = ActMode.DISABLED
        #: QDrop (Wei et al., ICLR 2022) while a block is reconstructed: each element keeps its float
        #: value with this probability (only under autograd, i.e. in the reconstruction loss)
        self.drop_prob = 0.0
        self.drop_generator: torch.Generator | None = None
        self.register_buffer("scale", torch.zeros(()))
        self.register_buffer("step_min", torch.full((num_steps,), float("inf")))
        self.register_buffer("step_max", torch.full((num_steps,), float("-inf")))
        self.register_buffer("step_count", torch.zeros(num_steps, dtype=torch.int64))

    @property
    def enabled(self) -> bool:
        return self.bits < 16

    @property
    def qrange(self) -> tuple[int, int]:
        return grids.act_range(self.bits, self.grid)

    def set_scale(self, scale: torch.Tensor | float, where: str = "activation quantizer") -> None:
        """Set the static scale; ``where`` names the layer in the error."""
        value = torch.as_tensor(scale, dtype=torch.float32)
        if value.numel() != 1 or not torch.isfinite(value) or value <= 0:
            raise QuantizerError(f"{where}: activation scale must be one positive finite number, got "
                                 f"{value.flatten()[:4].tolist()}")
        self.scale.copy_(value.reshape(()))

    def step_absmax(self) -> torch.Tensor:
        """max(|min|, |max|) per table row; NaN for rows never observed."""
        absmax = torch.maximum(self.step_min.abs(), self.step_max.abs())
        return torch.where(self.step_count > 0, absmax, torch.full_like(absmax, float("nan")))

    def observe(self, x: torch.Tensor) -> None:
        steps = current_steps()
        flat = x.detach().reshape(x.shape[0], -1).float()
        if steps is None or steps.numel() != x.shape[0]:
            # rows cannot be attributed (no step context, or batch folded): credit every declared row
            rows = steps.unique() if steps is not None else torch.arange(self.step_min.numel())
            lo = flat.min().expand(rows.numel())
            hi = flat.max().expand(rows.numel())
        else:
            rows, lo, hi = steps, flat.amin(dim=1), flat.amax(dim=1)
        rows = rows.to(self.step_min.device)
        self.step_min.scatter_reduce_(0, rows, lo, reduce="amin")
        self.step_max.scatter_reduce_(0, rows, hi, reduce="amax")
        self.step_count.scatter_add_(0, rows, torch.ones_like(rows))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.mode is ActMode.DISABLED:
            return x
        if self.mode is ActMode.OBSERVING:
            self.observe(x)
            return x
        qmin, qmax = self.qrange
        out = grids.fake_quantize(x, self.scale, qmin, qmax)
        if self.drop_prob > 0 and torch.is_grad_enabled():
            keep_float = torch.rand(x.shape, generator=self.drop_generator, device=x.device) < self.drop_prob
            out = torch.where(keep_float, x, out)
        return out

    def extra_repr(self) -> str:
        grid = "" if self.grid == "int8" else f", grid={self.grid}"
        return f"bits={self.bits}{grid}, mode={self.mode.value}, scale={float(self.scale):.4g}"


#: A rounding function: (weight, per-channel scale view) -> integer-valued float tensor.
RoundingFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric weight quantizer.

    ``scale`` [O] is set by a calibrator. Integer weights come from round-to-nearest unless a
    calibrator froze learned ones into ``weight_int`` (AdaRound): then those are used as they
    are, which is what the exported graph stores. ``rounding`` lets a calibrator plug a soft,
    differentiable rounding in while it learns.
    """

    def __init__(self, bits: int, out_channels: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("scale", torch.zeros(out_channels))
        self.register_buffer("weight_int", torch.zeros(0, dtype=torch.int8))
        self.rounding: RoundingFn | None = None

    @property
    def enabled(self) -> bool:
        return self.bits < 16

    @property
    def qrange(self) -> tuple[int, int]:
        return grids.weight_range(self.bits)

    @property
    def is_calibrated(self) -> bool:
        return bool((self.scale > 0).all())

    def set_scale(self, scale: torch.Tensor, where: str = "weight quantizer") -> None:
        """Set the per-channel scales; ``where`` names the layer in the error."""
        if scale.shape != self.scale.shape:
            raise QuantizerError(f"{where}: weight scale shape {tuple(scale.shape)} != {tuple(self.scale.shape)}")
        if not torch.isfinite(scale).all() or (scale <= 0).any():
            raise QuantizerError(f"{where}: weight scales must be positive and finite (are the weights finite?)")
        self.scale.copy_(scale)

    def freeze_integers(self, weight_int: torch.Tensor, where: str = "weight quantizer") -> None:
        """Store learned integer weights; the float weight is no longer used for rounding."""
        qmin, qmax = self.qrange
        if weight_int.min() < qmin or weight_int.max() > qmax:
            raise QuantizerError(f"{where}: integer weights outside [{qmin}, {qmax}]")
        self.weight_int = weight_int.to(self.scale.device, torch.int8).clone()  # a checkpoint's are on the CPU

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The integers the export writes (int8 tensor, on the bits' grid)."""
        if self.weight_int.numel():
            return self.weight_int
        qmin, qmax = self.qrange
        return grids.quantize(weight, grids.channel_view(self.scale, weight), qmin, qmax).to(torch.int8)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        scale = grids.channel_view(self.scale, weight)
        if self.rounding is not None:
            return self.rounding(weight, scale) * scale
        if self.weight_int.numel():
            return self.weight_int.to(weight.dtype) * scale
        qmin, qmax = self.qrange
        return grids.fake_quantize(weight, scale, qmin, qmax)

    def extra_repr(self) -> str:
        frozen = ", frozen" if self.weight_int.numel() else ""
        return f"bits={self.bits}, channels={self.scale.numel()}{frozen}"


class QuantLayer(nn.Module):
    """Common part of QuantConv2d / QuantLinear: the two quantizers and output statistics."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, wbits: int, abits: int, out_channels: int, num_steps: int, act_grid: str = "int8") -> None:
        super().__init__()
        self.weight_quantizer = WeightQuantizer(wbits, out_channels)
        self.input_quantizer = ActQuantizer(abits, num_steps, act_grid)
        self.register_buffer("output_absmax", torch.zeros(()))

    def _track_output(self, y: torch.Tensor) -> None:
        if self.input_quantizer.mode is ActMode.OBSERVING:
            self.output_absmax.copy_(torch.maximum(self.output_absmax, y.detach().abs().max()))

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)


class QuantConv2d(QuantLayer):
    """Conv2d whose input and weight pass through quantizers."""

    def __init__(self, conv: nn.Conv2d, wbits: int, abits: int, num_steps: int) -> None:
        if conv.padding_mode != "zeros":
            raise QuantizerError(f"Conv2d with padding_mode={conv.padding_mode!r}: only zero padding is supported")
        super().__init__(wbits, abits, conv.out_channels, num_steps)
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.input_quantizer(x), self.quantized_weight(), self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        self._track_output(y)
        return y


class QuantLinear(QuantLayer):
    """Linear whose input and weight pass through quantizers; ``act_grid``: its input's grid."""

    def __init__(self, linear: nn.Linear, wbits: int, abits: int, num_steps: int, act_grid: str = "int8") -> None:
        super().__init__(wbits, abits, linear.out_features, num_steps, act_grid)
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)
        self._track_output(y)
        return y


def make_quant_layer(module: nn.Module, wbits: int, abits: int, num_steps: int,
                     linear_act_grid: str = "int8") -> QuantLayer:
    """The quantized stand-in for ``module``, on its device (quantizer buffers included); a Linear's
    input takes ``linear_act_grid``, a Conv2d's the int8 grid."""
    if isinstance(module, nn.Conv2d):
        return QuantConv2d(module, wbits, abits, num_steps).to(module.weight.device)
    if isinstance(module, nn.Linear):
        return QuantLinear(module, wbits, abits, num_steps, linear_act_grid).to(module.weight.device)
    raise QuantizerError(f"cannot quantize {type(module).__name__} (only Conv2d and Linear)")


# --- added for tfmq (FSC) and qdiff (split skip quantization) -------------------------------------


class PerStepActQuantizer(ActQuantizer):
    """Activation quantizer with one scale per table row (FSC, finite set calibration).

    In ``quantizing`` mode every batch row is quantized with the min-max scale of its own step
    (``step_absmax[t] / qmax``), which is exact for a finite set of steps. It needs the rows
    declared with ``observing_steps``. Used inside the temporal branch, which the deployment folds
    into the per-step table; a static engine cannot carry per-step scales elsewhere.
    """

    def step_scales(self) -> torch.Tensor:
        """[T] scales; rows never observed get NaN (using them is an error)."""
        return torch.clamp(self.step_absmax(), min=1e-8) / grids.symmetric_qmax(self.qrange)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.mode is not ActMode.QUANTIZING:
            return super().forward(x)
        steps = current_steps()
        if steps is None or steps.numel() != x.shape[0]:
            raise QuantizerError("per-step activation quantization needs observing_steps(step_index), "
                                 "one row per sample")
        scale = self.step_scales()[steps.to(self.step_min.device)]
        if not torch.isfinite(scale).all():
            raise QuantizerError("per-step activation quantization of a step that was never observed")
        qmin, qmax = self.qrange
        return grids.fake_quantize(x, scale.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype), qmin, qmax)


class SplitActQuantizer(ActQuantizer):
    """Per-tensor quantizer with a second scale for the channels from ``split`` on.

    Q-Diffusion's shortcut-splitting: an up-block ResBlock's input is ``cat([h, skip], dim=1)``
    and the two halves have very different ranges. ``scale`` covers channels [0, split) and
    ``scale_split`` channels [split, C); each half keeps its own per-step statistics
    (``step_min`` / ``step_max`` for the first, ``split_step_min`` / ``split_step_max`` for the
    second). In ONNX this is Split -> two Q/DQ -> Concat (``tfmq_export.export.split_qdq``).
    """

    def __init__(self, bits: int, num_steps: int, split: int, grid: str = "int8") -> None:
        super().__init__(bits, num_steps, grid)
        if split <= 0:
            raise QuantizerError(f"split channel must be positive, got {split}")
        self.split = split
        self.second = ActQuantizer(bits, num_steps, grid)

    @property
    def scale_split(self) -> torch.Tensor:
        return self.second.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] <= self.split:
            raise QuantizerError(f"input with {x.shape[1] if x.dim() > 1 else 0} channels cannot split at {self.split}")
        self.second.mode = self.mode
        self.second.drop_prob, self.second.drop_generator = self.drop_prob, self.drop_generator
        first = super().forward(x[:, : self.split])
        return torch.cat([first, self.second(x[:, self.split :])], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, split={self.split}, scale_split={float(self.second.scale):.4g}"


def split_tensors(name: str, quantizer: SplitActQuantizer) -> dict[str, torch.Tensor]:
    """Artifact tensors of a split input (``{name}.input_split``: first channel of the second
    half; ``{name}.input_scale_split`` and its per-step statistics)."""
    return {
        f"{name}.input_split": torch.tensor(quantizer.split, dtype=torch.int64),
        f"{name}.input_scale_split": quantizer.second.scale.detach().float().clone(),
        f"{name}.input_split_step_min": quantizer.second.step_min.detach().float().clone(),
        f"{name}.input_split_step_max": quantizer.second.step_max.detach().float().clone(),
    }


def install_split_quantizers(layers: dict[str, QuantLayer], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Give every layer with ``{name}.input_split`` in ``tensors`` a calibrated ``SplitActQuantizer``
    (first-half scale and statistics copied from its current quantizer, which must be loaded first).
    For ``simulation_from_artifact``; returns the names of the split layers."""
    done: list[str] = []
    for name, layer in layers.items():
        key = f"{name}.input_split"
        if key not in tensors:
            continue
        old = layer.input_quantizer
        new = SplitActQuantizer(old.bits, old.step_min.numel(), int(tensors[key]), old.grid)
        new.second.set_scale(tensors[f"{name}.input_scale_split"], f"layer {name} (split input)")
        new.second.step_min.copy_(tensors[f"{name}.input_split_step_min"])
        new.second.step_max.copy_(tensors[f"{name}.input_split_step_max"])
        swap_input_quantizer(layer, new)
        done.append(name)
    return done


def swap_input_quantizer(layer: QuantLayer, new: ActQuantizer) -> None:
    """Give ``layer`` the input quantizer ``new``, carrying over the old one's state (scale, per-step
    ranges; buffers only ``new`` has are kept) and mode; its grid must be the old one's."""
    old = layer.input_quantizer
    if new.grid != old.grid:
        raise QuantizerError(f"input quantizer on grid {new.grid} cannot replace one on grid {old.grid}")
    new.to(old.scale.device).load_state_dict(old.state_dict(), strict=False)
    new.mode = old.mode
    layer.input_quantizer = new


class StepFactorActQuantizer(ActQuantizer):
    """FSC for every activation in a static engine: quantize ``x / r_t`` with the one static scale,
    multiply the result by ``r_t``, where ``r_t = (step t's min-max scale) / static scale``.

    So step t is quantized on its own min-max grid, as the authors' fake-quant code does, while
    the Q/DQ scale stays a build-time constant. The graph carries ``r_t`` and ``1 / r_t`` as
    per-step tables gathered by ``step_index``: ``Mul(x, 1/r_t) -> Q/DQ -> Conv/MatMul (no bias)
    -> Mul(r_t) -> Add(bias)`` (``export.qdq``); the layer is linear, so that equals this module
    followed by the layer. Needs the rows declared (``observing_steps``).
    """

    def __init__(self, bits: int, num_steps: int, grid: str = "int8") -> None:
        super().__init__(bits, num_steps, grid)
        self.register_buffer("step_factor", torch.ones(num_steps))
        self.register_buffer("step_factor_inv", torch.ones(num_steps))

    def set_step_factors(self, factors: torch.Tensor) -> None:
        factors = factors.detach().float().reshape(-1)
        if factors.numel() != self.step_factor.numel() or not bool((torch.isfinite(factors) & (factors > 0)).all()):
            raise QuantizerError(f"step factors must be {self.step_factor.numel()} positive finite values")
        self.step_factor.copy_(factors)
        self.step_factor_inv.copy_(1.0 / factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.mode is not ActMode.QUANTIZING:
            return super().forward(x)
        steps = current_steps()
        if steps is None or steps.numel() != x.shape[0]:
            raise QuantizerError("per-step factors need observing_steps(step_index), one row per sample")
        shape = (-1, *([1] * (x.dim() - 1)))
        steps = steps.to(self.step_factor.device)
        inv = self.step_factor_inv[steps].reshape(shape).to(x.dtype)
        return super().forward(x * inv) * self.step_factor[steps].reshape(shape).to(x.dtype)


def step_factors(quantizer: ActQuantizer) -> torch.Tensor:
    """``r_t`` of a calibrated quantizer: each step's min-max scale over the static scale (1 for a
    step that was never observed)."""
    per_step = torch.clamp(quantizer.step_absmax(), min=1e-8) / grids.symmetric_qmax(quantizer.qrange)
    factors = per_step / quantizer.scale.detach().float()
    return torch.where(torch.isfinite(factors), factors, torch.ones_like(factors)).float()


def install_step_factor_quantizers(layers: dict[str, QuantLayer], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Swap in a ``StepFactorActQuantizer`` (same state) for every layer with ``{name}.input_step_factor``
    in ``tensors``; returns their names (for ``simulation_from_artifact``)."""
    installed: list[str] = []
    for name, layer in layers.items():
        key = f"{name}.input_step_factor"
        if key not in tensors:
            continue
        old = layer.input_quantizer
        new = StepFactorActQuantizer(old.bits, old.step_min.numel(), old.grid)
        new.set_step_factors(tensors[key])
        swap_input_quantizer(layer, new)
        installed.append(name)
    return installed


__all__ = [
    "ActMode",
    "ActQuantizer",
    "PerStepActQuantizer",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "RoundingFn",
    "SplitActQuantizer",
    "StepFactorActQuantizer",
    "WeightQuantizer",
    "install_split_quantizers",
    "install_step_factor_quantizers",
    "make_quant_layer",
    "split_tensors",
    "step_factors",
    "swap_input_quantizer",
]
