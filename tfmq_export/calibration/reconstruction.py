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

Activation quantization is OFF while weights are reconstructed, as in the Q-Diffusion and TFMQ-DM
code: the ranges are then observed with the final integers, what the engine runs; ``recon_act_quant``
turns it on for experiments. Block inputs and targets are cached in chunks of at most ``cache_mb``,
the iterations spread over the chunks in turn (``block_io``); the minibatch loss is ``block_loss``'s.
The Adam loop (``optimise``) is the one TIAR (``tfmq``) uses too, on the temporal branch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tfmq_export import config
from tfmq_export.calibration.activations import act_quantizers, calibrate_activations
from tfmq_export.calibration.adaround import (
    AdaRound,
    AdaRoundSettings,
    RegularizerSchedule,
    attach_adaround,
    check_finite,
    freeze_adaround,
    lp_loss,
    rounding_optimizer,
)
from tfmq_export.calibration.block_io import (
    Block,
    CapturedCalls,
    TargetCache,
    capture_inputs,
    capture_outputs,
    subset,
    uniform_subset,
)
from tfmq_export.calibration.block_loss import block_loss, draw_minibatch, pair_order
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.offload import keep_resident
from tfmq_export.calibration.result import BlockResult
from tfmq_export.calibration.resume import Checkpoint, unit_seed
from tfmq_export.calibration.step_weights import step_loss_weights
from tfmq_export.config import CalibrationSettings, ExtraOptions
from tfmq_export.distributed import average_gradients
from tfmq_export.errors import TfmqError
from tfmq_export.quant.modules import ActMode, QuantLayer
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.temporal import TemporalTableUNet

__all__ = [
    "ReconstructionOptions",
    "Stage",
    "default_adaround_lr",
    "freeze_rounding",
    "optimise",
    "reconstruct_block",
    "reconstruct_blocks",
    "restore_unit",
    "weights_stage",
]


def default_adaround_lr(iters: int) -> float:
    """Adam rate of the rounding variables when no recipe sets one: 1e-2, or 3 / iters for budgets
    under 300. A rounding variable has to travel O(1) to flip and Adam moves it about lr per step,
    so the authors' 1e-3 (tuned for 20,000 iterations) leaves most roundings where they started in
    the budgets a CPU affords. Measured with tfmq W4A8 on digits-text (paired MSE to FP, seed 0):
    1,000 iterations at 1e-2 0.62e-3, at 3e-3 0.88e-3; 3,000 at 1e-3 1.42e-3 (docs/ANALYSIS.md)."""
    return max(1e-2, 3.0 / max(iters, 1))


# 1. options --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReconstructionOptions(ExtraOptions):
    """What reconstruction runs with: the typed ``extra`` options (``config.ExtraOptions``, validated
    there) plus the settings' iteration budget and seed, resolved."""

    iters: int
    seed: int = 0
    capture_batch_size: int = 64
    static_scale_rule: str = "max"
    adaround: AdaRoundSettings = field(default_factory=AdaRoundSettings)
    step_weights: tuple[float, ...] = ()  # loss weight of each table row (``step_weighting``); () = alike
    guidance_scale: float = 1.0  # the calibration's classifier-free guidance scale (``guided_loss``)

    @classmethod
    def from_settings(cls, settings: CalibrationSettings, scheduler_config: dict[str, Any] | None = None,
                      timesteps: Sequence[float] = ()) -> ReconstructionOptions:
        """Resolve ``settings`` (checked again: fields may have changed since they were built); the
        model's ``scheduler_config`` and the table's ``timesteps`` resolve ``step_weighting``."""
        settings.validate()
        extra = settings.options
        iters = settings.iters or config.DEFAULT_ITERS
        lr = default_adaround_lr(iters) if extra.adaround_lr is None else extra.adaround_lr
        weights: tuple[float, ...] = ()
        if extra.step_weighting:
            if scheduler_config is None or not timesteps:
                raise TfmqError("step_weighting needs the model's scheduler config and the sampler's timesteps")
            weights = step_loss_weights(scheduler_config, timesteps, extra.step_weighting)
        return cls(iters=iters, seed=settings.seed, capture_batch_size=settings.batch_size, step_weights=weights,
                   static_scale_rule=settings.static_scale_rule, guidance_scale=settings.guidance_scale or 1.0,
                   adaround=AdaRoundSettings(lr=lr, reg_weight=extra.adaround_reg, warmup=extra.adaround_warmup),
                   **asdict(extra))

    def adaround_for(self, iters: int) -> AdaRoundSettings:
        """AdaRound settings for a pass of ``iters`` iterations (TIAR may run another budget)."""
        if self.adaround_lr is not None:
            return self.adaround
        return replace(self.adaround, lr=default_adaround_lr(iters))

    @property
    def guided(self) -> bool:
        """Whether the block loss weighs the guided output's error (``guided_loss`` with guidance)."""
        return self.guided_loss > 0 and self.guidance_scale > 1

    @property
    def lsq_iters(self) -> int:
        return self.iters // 4 if self.act_iters is None else int(self.act_iters)

    @property
    def temporal_iters(self) -> int:
        return self.iters if self.tiar_iters is None else int(self.tiar_iters)


# 2. the one Adam loop (blocks here, the temporal branch in tfmq's TIAR) ----------------------------


def optimise(
    batch_loss: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    adas: dict[str, AdaRound],
    schedule: RegularizerSchedule,
    start: int,
    stop: int,
    where: str,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Adam iterations ``start .. stop - 1`` on ``batch_loss()`` (the reconstruction error of one
    minibatch) plus, after the warm-up, the rounding regulariser of ``adas`` (AdaRound eq. 24,
    weighted and annealed by ``schedule``). Returns the reconstruction losses; stops with one line
    naming ``where`` when the first one is not finite."""
    losses: list[float] = []
    for it in range(start, stop):
        with torch.enable_grad():
            rec = batch_loss()
            loss = rec
            weight = schedule.weight(it)
            if adas and weight > 0:
                beta = schedule.beta(it)
                loss = rec + weight * sum(a.regularizer(beta) for a in adas.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        average_gradients(p for group in optimizer.param_groups for p in group["params"])  # ranks: mean
        optimizer.step()
        losses.append(float(rec.detach()))
        if it == 0:
            check_finite(torch.tensor(losses[-1]), where)
        if on_step is not None:
            on_step(it, losses[-1])
    return losses


def freeze_rounding(qlayers: dict[str, QuantLayer], adas: dict[str, AdaRound]) -> dict[str, torch.Tensor]:
    """Freeze the learned hard rounding of every layer in ``adas``; {``{name}.weight_int``: integers}."""
    return {f"{name}.weight_int": freeze_adaround(qlayers[name], ada) for name, ada in adas.items()}


# 3. one block --------------------------------------------------------------------------------------


class Stage(str, Enum):
    """What a reconstruction pass learns."""

    WEIGHTS = "weights"
    ACT = "act"
    JOINT = "joint"  # rounding and activation scales together, activation quantization on


def _act_scales(qlayers: dict[str, QuantLayer]) -> list[torch.Tensor]:
    scales = [aq.scale for aq in act_quantizers(qlayers).values()]
    for scale in scales:
        scale.requires_grad_(True)
    return scales


def _learnables(stage: Stage, qlayers: dict[str, QuantLayer]) -> tuple[list[torch.Tensor], dict[str, AdaRound]]:
    if stage is Stage.ACT:
        return _act_scales(qlayers), {}
    adas = {n: attach_adaround(layer) for n, layer in qlayers.items() if layer.weight_quantizer.enabled}
    return [a.alpha for a in adas.values()], adas


def _optimizer(stage: Stage, params: list[torch.Tensor], qlayers: dict[str, QuantLayer],
               options: ReconstructionOptions) -> torch.optim.Optimizer:
    """Adam over what ``stage`` learns; the joint stage adds the activation scales at their own rate."""
    if stage is Stage.ACT:
        return torch.optim.Adam(params, lr=options.act_lr)
    if stage is Stage.JOINT and (scales := _act_scales(qlayers)):
        return torch.optim.Adam([{"params": params, "lr": options.adaround.lr},
                                 {"params": scales, "lr": options.act_lr}])
    return rounding_optimizer(params, options.adaround.lr)


def _set_drop(qlayers: dict[str, QuantLayer], prob: float, generator: torch.Generator | None) -> None:
    """QDrop on (or off, ``prob`` 0) for the block's activation quantizers."""
    for layer in qlayers.values():
        layer.input_quantizer.drop_prob, layer.input_quantizer.drop_generator = prob, generator


def _finish(stage: Stage, qlayers: dict[str, QuantLayer], adas: dict[str, AdaRound]) -> dict[str, torch.Tensor]:
    """Freeze what was learned; return the tensors the checkpoint keeps."""
    _set_drop(qlayers, 0.0, None)
    out = freeze_rounding(qlayers, adas)
    if stage is Stage.WEIGHTS:
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
            layers[base].weight_quantizer.freeze_integers(value, base)
        elif kind == "input_scale":
            quantizers[base].set_scale(value, base)
        else:
            raise TfmqError(f"checkpoint holds an unknown tensor {key}")


def _chunk_size(sim: TemporalTableUNet, fp_ref: TemporalTableUNet, block: Block, data: CalibrationData,
                order: torch.Tensor, options: ReconstructionOptions) -> int:
    """Inputs per cached chunk: as many as ``cache_mb`` holds (inputs + targets), at least a minibatch."""
    if options.disk_cache:  # one chunk; what exceeds cache_mb is memory-mapped on disk (block_io.spill_to_disk)
        return len(data)
    probe = subset(data, order[:1])
    per_sample = capture_inputs(sim, block.name, probe.batches(1)).nbytes
    per_sample += capture_outputs(fp_ref, block.name, probe.batches(1)).numel() * 4
    return max(options.recon_batch_size, int(options.cache_mb * 2**20 // max(per_sample, 1)))


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
    optimizer = _optimizer(stage, params, qlayers, options)
    if stage is Stage.JOINT and options.qdrop > 0:
        _set_drop(qlayers, options.qdrop, generator)
    schedule = RegularizerSchedule(iters, options.adaround)

    def on_step(it: int, loss: float) -> None:
        if bar is not None and (it % 50 == 0 or it == iters - 1):
            bar.set_postfix(block=block.name, loss=f"{loss:.4g}", refresh=False)

    # 1. chunks of the data that fit the cache (whole guidance pairs with the guided loss)
    guided = options.guided and data.paired
    order = pair_order(data, generator) if guided else torch.randperm(len(data), generator=generator)
    chunk = _chunk_size(sim, fp_ref, block, data, order, options)
    chunk += chunk % 2 if guided else 0
    starts = list(range(0, len(data), chunk))
    all_targets = target_cache.get(block.name) if target_cache is not None else None
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
        batch -= batch % 2 if guided else 0
        probe_index = torch.arange(batch)
        if c == 0:
            before = _eval_loss(module, inputs, targets, probe_index, adas)

        # 2. learn on minibatches of the cached chunk
        step_weights = (None if not options.step_weights else
                        torch.tensor(options.step_weights, dtype=targets.dtype, device=targets.device)[
                            part.step_index.to(targets.device)])

        def batch_loss(inputs: CapturedCalls = inputs, targets: torch.Tensor = targets, size: int = len(part),
                       batch: int = batch, step_weights: torch.Tensor | None = step_weights) -> torch.Tensor:
            index, weight = draw_minibatch(size, batch, generator, guided)  # this rank's share
            args, kwargs = inputs.select(index)
            sample_weights = None if step_weights is None else step_weights[index]
            scale = options.guidance_scale if guided else None
            return weight * block_loss(module(*args, **kwargs), targets[index], sample_weights, scale,
                                       options.guided_loss)

        optimise(batch_loss, optimizer, adas, schedule, it, stop, block.name, on_step)
        it = max(it, stop)
        if c == len(starts) - 1:
            after = _eval_loss(module, inputs, targets, probe_index, adas)
        del inputs, targets, batch_loss
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


# 4. all blocks -------------------------------------------------------------------------------------


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
        with keep_resident(sim, block.name):  # --offload: the block and its Adam state stay on the device
            result, frozen = reconstruct_block(sim, fp_ref, block, layers, data, options, stage, iters, generator,
                                               bar, target_cache)
        results.append(result)
        checkpoint.save(unit, frozen, {"seed": seed, **vars(result)})
    return results


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
    recon_data = uniform_subset(data, options.recon_samples, options.seed, pairs=options.guided)
    if options.recon_act_quant:
        calibrate_activations(sim, layers, data, options.capture_batch_size, "max", options.act_samples_per_step,
                              options.seed, progress)
    else:
        set_act_mode(layers, ActMode.DISABLED)
    results = reconstruct_blocks(sim, fp_ref, blocks, layers, recon_data, options, Stage.WEIGHTS, options.iters,
                                 checkpoint, progress)
    return results, time.perf_counter() - started
