"""Block reconstruction (BRECQ, Li et al., ICLR 2021), the machinery qdiff and tfmq share.

For every block (ResBlock, attention / transformer block, up/down sampler; other quantized layers
one by one, as ``UNetAdapter.reconstruction_blocks`` lists them), in execution order:
1. inputs: the block's call arguments, captured with a hook from the already-quantized network
   (earlier blocks carry their learned integers) on calibration samples;
2. targets: the block's output in the full-precision network (a separate table UNet) on the same
   samples;
3. learn, with Adam on minibatches drawn from the cache, what the stage learns:
   ``weights`` the AdaRound rounding of every weight in the block (loss: block-output error +
   rounding regulariser), ``act`` the static activation scales (LSQ-style straight-through
   gradients, Q-Diffusion's second stage);
4. freeze (hard rounding into ``weight_int``; scales stay) and checkpoint.

Activation quantization is OFF while weights are reconstructed (``act_quant=False``), as in the
Q-Diffusion and TFMQ-DM code: the activation ranges are then observed with the final integers,
which is what the engine will run, and at A8 the activation error is small beside W4's. The
option ``recon_act_quant`` turns it on (static scales from a min-max pass with round-to-nearest
weights) for experiments.

Block inputs and targets are cached in memory in chunks of at most ``cache_mb``; with more data
than that, the iterations are spread over the chunks in turn. Full-precision targets are also
computed for several consecutive blocks per FP pass (``TargetCache``, another ``cache_mb`` at most).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tfmq_export.calibration.adaround import (
    AdaRound,
    AdaRoundSettings,
    RegularizerSchedule,
    attach_adaround,
    check_finite,
    freeze_adaround,
    lp_loss,
)
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.minmax import act_quantizers, observe_activations, set_static_scales
from tfmq_export.calibration.resume import Checkpoint, unit_seed
from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.quant.modules import ActMode, QuantLayer
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.quant.steps import observing_steps
from tfmq_export.temporal import TemporalTableUNet

#: Iterations per block when ``--iters`` is not given (0): the digits preset (calib/digits-*.json).
DEFAULT_ITERS = 300


def default_adaround_lr(iters: int) -> float:
    """The authors' 1e-3 for budgets of thousands of iterations (they use 20,000); shorter budgets get
    a larger rate, 3 / iters: Adam moves a variable by about lr per step, and a rounding variable
    has to travel O(1) to flip. Measured on digits W4A8 with 300 iterations: block loss 0.54x of
    round-to-nearest at 1e-2 against 0.89x at 1e-3 (100 iterations)."""
    return max(1e-3, 3.0 / max(iters, 1))


# 1. options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconstructionOptions:
    """Reconstruction settings: ``CalibrationSettings`` fields plus the keys of its ``extra`` dict.

    extra keys (all optional): ``recon_batch_size`` (minibatch, the authors' 32; 8 for SD),
    ``recon_samples`` (calibration inputs used for reconstruction, uniform over steps; 0 = all),
    ``act_samples_per_step`` (inputs per step for activation ranges; 0 = all; the authors' 256),
    ``cache_mb`` (memory for cached block inputs + targets), ``recon_act_quant`` (bool),
    ``act_iters`` (qdiff's activation-scale iterations per block; default iters // 4, the ratio of
    Q-Diffusion's 5,000 to 20,000), ``act_lr`` (4e-5, BRECQ's LSQ rate), ``tiar_iters`` (tfmq;
    default iters), ``split_skip`` (qdiff: two scales for concatenated skip inputs),
    ``step_factors`` (tfmq: every activation quantizer keeps its per-step min-max range, deployed
    as per-step factors around one static scale; ``quant.modules.StepFactorActQuantizer``),
    ``keep_checkpoints`` (keep ``.work`` after a successful run), ``adaround_lr`` (Adam rate of the
    rounding variables; default ``default_adaround_lr(iters)``).
    """

    iters: int
    seed: int = 0
    capture_batch_size: int = 64
    recon_batch_size: int = 32
    recon_samples: int = 0
    act_samples_per_step: int = 0
    cache_mb: float = 1024.0
    recon_act_quant: bool = False
    act_iters: int | None = None
    act_lr: float = 4e-5
    tiar_iters: int | None = None
    split_skip: bool = True
    step_factors: bool = False
    keep_checkpoints: bool = False
    adaround_lr: float | None = None
    static_scale_rule: str = "max"
    adaround: AdaRoundSettings = field(default_factory=AdaRoundSettings)

    EXTRA_KEYS = ("recon_batch_size", "recon_samples", "act_samples_per_step", "cache_mb", "recon_act_quant",
                  "act_iters", "act_lr", "tiar_iters", "split_skip", "step_factors", "keep_checkpoints",
                  "adaround_lr")

    @classmethod
    def from_settings(cls, settings: Any) -> ReconstructionOptions:
        """Read ``CalibrationSettings``; refuse unknown or nonsensical values with a clear message."""
        if settings.iters < 0:
            raise TfmqError(
                f"--iters {settings.iters}: {settings.method} needs a non-negative number of iterations per block "
                f"(0 = the default {DEFAULT_ITERS}; the authors use 20000 on a GPU)"
            )
        extra = dict(settings.extra or {})
        unknown = sorted(set(extra) - set(cls.EXTRA_KEYS))
        if unknown:
            raise TfmqError(f"unknown calibration option(s) {unknown}; known: {', '.join(cls.EXTRA_KEYS)}")
        types = {f.name: f.type for f in fields(cls)}
        for key, value in extra.items():
            expected = types[key]
            if value is None and "None" in expected:
                continue
            if "bool" in expected:
                if not isinstance(value, bool):
                    raise TfmqError(f"calibration option {key} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise TfmqError(f"calibration option {key} must be a non-negative number, got {value!r}")
            elif "float" not in expected and not isinstance(value, int):
                raise TfmqError(f"calibration option {key} must be a whole number, got {value!r}")
        lr = extra.get("adaround_lr")
        if extra.get("recon_batch_size", 1) < 1 or extra.get("cache_mb", 1) <= 0 or (lr is not None and lr <= 0):
            raise TfmqError("recon_batch_size must be >= 1, cache_mb and adaround_lr > 0")
        iters = settings.iters or DEFAULT_ITERS
        options = cls(iters=iters, seed=settings.seed, capture_batch_size=settings.batch_size,
                      static_scale_rule=settings.static_scale_rule,
                      adaround=AdaRoundSettings(lr=default_adaround_lr(iters) if lr is None else float(lr)), **extra)
        return options

    def adaround_for(self, iters: int) -> AdaRoundSettings:
        """AdaRound settings for a pass of ``iters`` iterations (TIAR may run another budget)."""
        if self.adaround_lr is not None:
            return self.adaround
        return AdaRoundSettings(lr=default_adaround_lr(iters))

    @property
    def lsq_iters(self) -> int:
        return self.iters // 4 if self.act_iters is None else int(self.act_iters)

    @property
    def temporal_iters(self) -> int:
        return self.iters if self.tiar_iters is None else int(self.tiar_iters)


# 2. blocks and their order -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """A reconstruction unit: a module of the UNet and the quantized layers inside it."""

    name: str
    layer_names: tuple[str, ...]


def adapter_blocks(unet: nn.Module) -> list[Block]:
    """The adapter's reconstruction blocks of the full-precision UNet, as names."""
    return [Block(b.name, b.layer_names) for b in UNetAdapter(unet).reconstruction_blocks()]


class _StopForward(Exception):
    """Raised by a capture hook: nothing after the block is needed."""


def _forward(model: TemporalTableUNet, x: torch.Tensor, step: torch.Tensor, cond: torch.Tensor | None) -> None:
    with observing_steps(step):
        model(x, step, cond)


@torch.no_grad()
def execution_order(model: TemporalTableUNet, blocks: list[Block], data: CalibrationData) -> list[Block]:
    """``blocks`` sorted by the order of their first call in one forward (module definition order
    is not execution order: e.g. a down block's resnets run before its downsampler, but up blocks
    are defined after the mid block and some UNets define attention before resnets).

    Refuses a block that is never called or called more than once per forward: its inputs could
    not be captured as one call.
    """
    calls: dict[str, int] = {b.name: 0 for b in blocks}
    order: list[str] = []
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple) -> None:
            if calls[name] == 0:
                order.append(name)
            calls[name] += 1

        return fn

    try:
        for block in blocks:
            handles.append(model.unet.get_submodule(block.name).register_forward_pre_hook(hook(block.name)))
        x, step, cond = next(data.batches(1))
        _forward(model, x, step, cond)
    finally:
        for handle in handles:
            handle.remove()
    bad = {name: n for name, n in calls.items() if n != 1}
    if bad:
        raise TfmqError(f"reconstruction blocks must run exactly once per UNet call; call counts {bad}")
    by_name = {b.name: b for b in blocks}
    return [by_name[name] for name in order]


# 3. caching block inputs and targets -------------------------------------------------------------


@dataclass
class CapturedCalls:
    """The arguments of many calls of one block, with the batch-shaped tensors concatenated.

    ``args`` / ``kwargs`` hold ``_Slot(i)`` where a batched tensor was, constants elsewhere.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tensors: list[torch.Tensor]

    def __len__(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def select(self, index: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        def fill(value: Any) -> Any:
            return self.tensors[value.index][index] if isinstance(value, _Slot) else value

        return tuple(fill(a) for a in self.args), {k: fill(v) for k, v in self.kwargs.items()}


@dataclass(frozen=True)
class _Slot:
    index: int


def _same_constant(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def _collate(calls: list[tuple[tuple[Any, ...], dict[str, Any]]], sizes: list[int], where: str) -> CapturedCalls:
    """Concatenate tensors whose first dimension is the batch; other values must agree across calls."""
    first_args, first_kwargs = calls[0]
    keys = [("a", i) for i in range(len(first_args))] + [("k", k) for k in first_kwargs]
    tensors: list[torch.Tensor] = []
    merged: dict[tuple[str, Any], Any] = {}
    for key in keys:
        values = [(a[key[1]] if key[0] == "a" else kw[key[1]]) for a, kw in calls]
        batched = all(torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n for v, n in zip(values, sizes))
        if batched:
            merged[key] = _Slot(len(tensors))
            tensors.append(torch.cat([v.detach() for v in values]))
            continue
        same = all(_same_constant(v, values[0]) for v in values)
        if not same:
            raise TfmqError(f"{where}: call argument {key[1]!r} is neither batched nor constant; cannot cache it")
        merged[key] = values[0]
    args = tuple(merged[("a", i)] for i in range(len(first_args)))
    kwargs = {k: merged[("k", k)] for k in first_kwargs}
    return CapturedCalls(args, kwargs, tensors)


@torch.no_grad()
def capture_inputs(model: TemporalTableUNet, name: str, batches: Iterable[tuple]) -> CapturedCalls:
    """The call arguments of block ``name`` in ``model`` (forwards stop at the block)."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((args, dict(kwargs)))
        raise _StopForward

    handle = model.unet.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
    sizes = _run_to_block(model, name, batches, handle)
    return _collate(calls, sizes, name)


@torch.no_grad()
def capture_outputs(model: TemporalTableUNet, name: str, batches: Iterable[tuple]) -> torch.Tensor:
    """The output of block ``name`` in ``model``, concatenated over the batches."""
    outputs: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not torch.is_tensor(output):
            raise TfmqError(f"block {name} returns {type(output).__name__}; reconstruction needs one tensor")
        outputs.append(output.detach())
        raise _StopForward

    _run_to_block(model, name, batches, model.unet.get_submodule(name).register_forward_hook(hook))
    return torch.cat(outputs)


def _run_to_block(model: TemporalTableUNet, name: str, batches: Iterable[tuple], handle: Any) -> list[int]:
    """Run every batch up to block ``name``, whose hook (``handle``) records and stops the pass;
    returns the batch sizes and removes the hook."""
    sizes: list[int] = []
    try:
        for x, step, cond in batches:
            sizes.append(x.shape[0])
            try:
                _forward(model, x, step, cond)
            except _StopForward:
                continue
            raise TfmqError(f"block {name} was not called by the UNet")
    finally:
        handle.remove()
    return sizes


class TargetCache:
    """Full-precision block outputs for every calibration input, several blocks per FP pass.

    Targets do not depend on anything learned, so one FP forward serves a run of consecutive
    blocks (per-block capture costs one FP forward up to each block: O(B^2) block evaluations for
    B blocks). At most ``budget_bytes`` of targets are held at a time; a block whose targets alone
    exceed it gets ``None`` and is captured chunk by chunk instead.
    """

    def __init__(self, fp_ref: TemporalTableUNet, blocks: list[Block], data: CalibrationData, budget_bytes: float,
                 batch_size: int) -> None:
        self.fp_ref, self.data, self.budget, self.batch_size = fp_ref, data, budget_bytes, batch_size
        self.names = [b.name for b in blocks]
        self.cache: dict[str, torch.Tensor] = {}
        self._sizes: dict[str, int] | None = None

    @torch.no_grad()
    def _bytes_per_sample(self) -> dict[str, int]:
        if self._sizes is None:
            sizes: dict[str, int] = {}
            handles = [
                self.fp_ref.unet.get_submodule(name).register_forward_hook(
                    lambda m, a, out, name=name: sizes.__setitem__(name, out.numel() * out.element_size()))
                for name in self.names
            ]
            try:
                _forward(self.fp_ref, *next(self.data.batches(1)))
            finally:
                for handle in handles:
                    handle.remove()
            self._sizes = sizes
        return self._sizes

    @torch.no_grad()
    def get(self, name: str) -> torch.Tensor | None:
        """[N, ...] targets of block ``name`` for ``data`` in its own order, or None (too large)."""
        if name in self.cache:
            return self.cache[name]
        sizes = self._bytes_per_sample()
        group: list[str] = []
        total = 0
        for other in self.names[self.names.index(name):]:
            need = sizes[other] * len(self.data)
            if total + need > self.budget:
                break
            group.append(other)
            total += need
        if not group:
            return None
        self.cache = {}
        outputs: dict[str, list[torch.Tensor]] = {n: [] for n in group}

        def hook(block: str, last: bool):
            def fn(module: nn.Module, args: tuple, output: Any) -> None:
                if not torch.is_tensor(output):
                    raise TfmqError(f"block {block} returns {type(output).__name__}; reconstruction needs one tensor")
                outputs[block].append(output.detach())
                if last:
                    raise _StopForward

            return fn

        handles = [self.fp_ref.unet.get_submodule(n).register_forward_hook(hook(n, n == group[-1])) for n in group]
        try:
            for x, step, cond in self.data.batches(self.batch_size):
                with contextlib.suppress(_StopForward):
                    _forward(self.fp_ref, x, step, cond)
        finally:
            for handle in handles:
                handle.remove()
        self.cache = {n: torch.cat(v) for n, v in outputs.items()}
        return self.cache[name]


def subset(data: CalibrationData, index: torch.Tensor) -> CalibrationData:
    """The calibration inputs at ``index`` (any order)."""
    return CalibrationData(
        data.samples[index], data.step_index[index],
        None if data.conditions is None else data.conditions[index], data.timesteps,
    )


def uniform_subset(data: CalibrationData, total: int, seed: int) -> CalibrationData:
    """About ``total`` inputs, the same number from every step (``total`` 0 = everything)."""
    if total <= 0 or total >= len(data):
        return data
    return data.per_step_subset(max(1, math.ceil(total / len(data.timesteps))), seed)


# 4. one block -------------------------------------------------------------------------------------


class Stage(str, Enum):
    """What a reconstruction pass learns."""

    WEIGHTS = "weights"
    ACT = "act"


@dataclass
class BlockResult:
    """Block-output loss on a fixed minibatch before learning (round-to-nearest weights, or the
    initial scales) and after (the frozen result)."""

    name: str
    loss_before: float
    loss_after: float
    iters: int
    chunks: int
    capture_seconds: float = 0.0
    train_seconds: float = 0.0


def _learnables(stage: Stage, qlayers: dict[str, QuantLayer]) -> tuple[list[torch.Tensor], dict[str, AdaRound]]:
    if stage is Stage.WEIGHTS:
        adas = {n: attach_adaround(layer) for n, layer in qlayers.items() if layer.weight_quantizer.enabled}
        return [a.alpha for a in adas.values()], adas
    scales = [aq.scale for aq in act_quantizers(qlayers).values()]
    for scale in scales:
        scale.requires_grad_(True)
    return scales, {}


def _finish(stage: Stage, qlayers: dict[str, QuantLayer], adas: dict[str, AdaRound]) -> dict[str, torch.Tensor]:
    """Freeze what was learned; return the tensors the checkpoint keeps."""
    out: dict[str, torch.Tensor] = {}
    if stage is Stage.WEIGHTS:
        for name, ada in adas.items():
            out[f"{name}.weight_int"] = freeze_adaround(qlayers[name], ada)
        return out
    for key, aq in act_quantizers(qlayers).items():
        aq.scale.requires_grad_(False)
        value = aq.scale.detach().clone()
        if not torch.isfinite(value) or value <= 0:
            raise TfmqError(f"{key}: the learned activation scale became {float(value)}; lower act_lr")
        out[f"{key}.input_scale"] = value
    return out


def restore_unit(tensors: dict[str, torch.Tensor], layers: dict[str, QuantLayer]) -> None:
    """Apply a checkpointed unit's tensors (integers or activation scales) to the simulation."""
    quantizers = act_quantizers(layers)
    for key, value in tensors.items():
        base, _, kind = key.rpartition(".")
        if kind == "weight_int":
            layers[base].weight_quantizer.freeze_integers(value)
        elif kind == "input_scale":
            quantizers[base].set_scale(value)
        else:
            raise TfmqError(f"checkpoint holds an unknown tensor {key}")


def reconstruct_block(
    sim: TemporalTableUNet,
    fp_ref: TemporalTableUNet,
    block: Block,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    options: ReconstructionOptions,
    stage: Stage,
    iters: int,
    generator: torch.Generator,
    bar: Any = None,
    target_cache: TargetCache | None = None,
) -> tuple[BlockResult, dict[str, torch.Tensor]]:
    """Learn one block (see the module docstring); returns its result and the frozen tensors."""
    module = sim.unet.get_submodule(block.name)
    qlayers = {n: layers[n] for n in block.layer_names}
    params, adas = _learnables(stage, qlayers)
    if not params:
        return BlockResult(block.name, float("nan"), float("nan"), 0, 0), _finish(stage, qlayers, adas)
    lr = options.adaround.lr if stage is Stage.WEIGHTS else options.act_lr
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = RegularizerSchedule(iters, options.adaround)

    # 1. chunks of the data that fit the cache
    order = torch.randperm(len(data), generator=generator)
    probe = subset(data, order[:1])
    per_sample = capture_inputs(sim, block.name, probe.batches(1)).nbytes
    per_sample += capture_outputs(fp_ref, block.name, probe.batches(1)).numel() * 4
    chunk = max(options.recon_batch_size, int(options.cache_mb * 2**20 // max(per_sample, 1)))
    starts = list(range(0, len(data), chunk))
    all_targets = target_cache.get(block.name) if target_cache is not None else None
    losses: list[float] = []
    before = after = float("nan")
    it = 0
    capture_seconds = 0.0
    started = time.perf_counter()
    for c, start in enumerate(starts):
        part = subset(data, order[start : start + chunk])
        capture_started = time.perf_counter()
        inputs = capture_inputs(sim, block.name, part.batches(options.capture_batch_size))
        if all_targets is not None:
            targets = all_targets[order[start : start + chunk]]
        else:
            targets = capture_outputs(fp_ref, block.name, part.batches(options.capture_batch_size))
        capture_seconds += time.perf_counter() - capture_started
        stop = iters * (c + 1) // len(starts)
        batch = min(options.recon_batch_size, len(part))
        probe_index = torch.arange(batch)
        if c == 0:
            before = _eval_loss(module, inputs, targets, probe_index, adas)
        # 2. learn on minibatches of the cached chunk
        while it < stop:
            index = torch.randperm(len(part), generator=generator)[:batch]
            args, kwargs = inputs.select(index)
            with torch.enable_grad():
                rec = lp_loss(module(*args, **kwargs), targets[index])
                loss = rec
                weight = schedule.weight(it)
                if adas and weight > 0:
                    beta = schedule.beta(it)
                    loss = rec + weight * sum(a.regularizer(beta) for a in adas.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            losses.append(float(rec.detach()))
            if it == 0:
                check_finite(torch.tensor(losses[-1]), block.name)
            if bar is not None and (it % 50 == 0 or it == iters - 1):
                bar.set_postfix(block=block.name, loss=f"{losses[-1]:.4g}", refresh=False)
            it += 1
        if c == len(starts) - 1:
            after = _eval_loss(module, inputs, targets, probe_index, adas)
        del inputs, targets
    check_finite(torch.tensor(after), block.name)
    frozen = _finish(stage, qlayers, adas)
    train_seconds = time.perf_counter() - started - capture_seconds
    return BlockResult(block.name, before, after, iters, len(starts), capture_seconds, train_seconds), frozen


@torch.no_grad()
def _eval_loss(module: nn.Module, inputs: CapturedCalls, targets: torch.Tensor, index: torch.Tensor,
               adas: dict[str, AdaRound]) -> float:
    """Block loss on ``index`` with hard rounding (what would be frozen now)."""
    for ada in adas.values():
        ada.soft = False
    args, kwargs = inputs.select(index)
    loss = float(lp_loss(module(*args, **kwargs), targets[index]))
    for ada in adas.values():
        ada.soft = True
    return loss


# 5. all blocks ------------------------------------------------------------------------------------


def reconstruct_blocks(
    sim: TemporalTableUNet,
    fp_ref: TemporalTableUNet,
    blocks: list[Block],
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    options: ReconstructionOptions,
    stage: Stage,
    iters: int,
    checkpoint: Checkpoint,
    progress: bool = True,
) -> list[BlockResult]:
    """Reconstruct ``blocks`` (already in execution order) one after another; finished blocks of
    a resumed run are replayed from the checkpoint instead of learned."""
    results: list[BlockResult] = []
    target_cache = TargetCache(fp_ref, blocks, data, options.cache_mb * 2**20, options.capture_batch_size)
    bar = tqdm(blocks, desc=f"reconstruct {stage.value}", disable=not progress, unit="block")
    for block in bar:
        unit = f"{stage.value}:{block.name}"
        if checkpoint.done(unit):
            restore_unit(checkpoint.load(unit), layers)
            info = checkpoint.info(unit)
            results.append(BlockResult(**{k: v for k, v in info.items() if k != "seed"}))
            continue
        seed = unit_seed(options.seed, stage.value, block.name)
        generator = torch.Generator().manual_seed(seed)
        result, frozen = reconstruct_block(sim, fp_ref, block, layers, data, options, stage, iters, generator, bar,
                                           target_cache)
        results.append(result)
        checkpoint.save(unit, frozen, {"seed": seed, **vars(result)})
    return results


# 6. activation ranges -----------------------------------------------------------------------------


def reset_act_statistics(layers: dict[str, QuantLayer]) -> None:
    """Forget observed ranges (before observing again with the final weights)."""
    for layer in layers.values():
        for aq in [layer.input_quantizer, *act_quantizers({"_": layer}).values()]:
            aq.step_min.fill_(float("inf"))
            aq.step_max.fill_(float("-inf"))
            aq.step_count.zero_()
        layer.output_absmax.zero_()


def calibrate_activations(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    options: ReconstructionOptions,
    rule: str,
    progress: bool = True,
) -> None:
    """Per-step ranges of every activation quantizer (FSC statistics), then one static scale each
    by ``rule``; leaves the quantizers quantizing."""
    reset_act_statistics(layers)
    if options.act_samples_per_step > 0:
        data = data.per_step_subset(options.act_samples_per_step, options.seed)
    observe_activations(sim, layers, data, options.capture_batch_size, progress)
    set_static_scales(sim, layers, data, options.capture_batch_size, rule, progress)


def weights_stage(
    sim: TemporalTableUNet,
    fp_ref: TemporalTableUNet,
    blocks: list[Block],
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    options: ReconstructionOptions,
    checkpoint: Checkpoint,
    progress: bool = True,
) -> tuple[list[BlockResult], float]:
    """AdaRound every block, activation quantization on or off as ``options.recon_act_quant`` says.
    Returns the results and the wall time."""
    started = time.perf_counter()
    recon_data = uniform_subset(data, options.recon_samples, options.seed)
    if options.recon_act_quant:
        calibrate_activations(sim, layers, data, options, "max", progress)
    else:
        set_act_mode(layers, ActMode.DISABLED)
    results = reconstruct_blocks(sim, fp_ref, blocks, layers, recon_data, options, Stage.WEIGHTS, options.iters,
                                 checkpoint, progress)
    return results, time.perf_counter() - started


__all__ = [
    "Block",
    "BlockResult",
    "CapturedCalls",
    "ReconstructionOptions",
    "Stage",
    "TargetCache",
    "adapter_blocks",
    "calibrate_activations",
    "capture_inputs",
    "capture_outputs",
    "default_adaround_lr",
    "execution_order",
    "reconstruct_block",
    "reconstruct_blocks",
    "reset_act_statistics",
    "restore_unit",
    "subset",
    "uniform_subset",
    "weights_stage",
]
