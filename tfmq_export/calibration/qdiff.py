"""``--method qdiff``: Q-Diffusion (Li et al., ICCV 2023), TFMQ-DM's main baseline, in our deployment.

Q-Diffusion quantizes the time-embedding layers like any other layer and reconstructs them with
targets that mix t with image data. That is what TFMQ-DM blames for the disturbed temporal
features (TFMQ-DM Sec. 3), so the baseline has to keep it even though our deployment turns the
temporal branch into a per-step table:

1. the temporal branch comes back as live modules (timestep -> time MLP -> every ResBlock's
   ``time_emb_proj``), and its Linear layers ``time_embedding.linear_2`` and every
   ``time_emb_proj`` are quantized (``linear_1`` stays FP, as in the papers' code:
   ``models.adapter.TIB_KEEP_FP``);
2. block reconstruction (AdaRound, BRECQ) over everything in execution order: ``linear_2`` as a
   block of its own, each ``time_emb_proj`` inside its ResBlock, whose output mixes t with the
   image; data uniform over the steps (every step of the calibration trajectories);
3. activation ranges over all steps, then the static activation scales are learned block by
   block (LSQ-style straight-through gradients; Q-Diffusion's second stage, ``act_iters`` per
   block, default iters // 4 like its 5,000 vs 20,000);
4. the table is computed from the quantized temporal branch (quantized weights and activations),
   so the baseline's temporal-feature disturbance reaches the deployed model
   (``temporal_table = "quantized"`` always; the table is ``temporal.TemporalBranch`` run on the
   live modules).

Shortcut splitting (Q-Diffusion's default, ``split_skip``, on unless the recipe turns it off): two
scales for the concatenated skip inputs of up-block ResBlocks' ``conv1`` and ``conv_shortcut``. The
split points come from the adapter (``UNetAdapter.concat_skip_splits``); the
second scales go into the artifact (``{layer}.input_split`` / ``input_scale_split``); the
simulation rebuilds them (``quant.modules.install_split_quantizers`` in
``simulation_from_artifact``) and the export writes them as ``Split -> (Q/DQ -> Conv) x 2 -> Add``
(``export.split_qdq.apply_split_qdq`` in ``build_onnx``), so the engine runs both halves in INT8.

SDXL (``text_time``): the ResBlocks' time input is h(t) + aug(text_embeds, time_ids), so their
``time_emb_proj`` are no part of the table; they stay float live layers in every method (as the
exported graph has them) and only the time MLP's ``linear_2`` is quantized and reconstructed here;
the table is the quantized MLP's h^(t) (``UNetAdapter.tib_quantized_names``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from tfmq_export.calibration import offload
from tfmq_export.calibration.activations import calibrate_activations
from tfmq_export.calibration.block_io import (
    Block,
    adapter_blocks,
    execution_order,
    forward_declared,
    uniform_subset,
)
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.reconstruction import ReconstructionOptions, Stage, reconstruct_blocks, weights_stage
from tfmq_export.calibration.result import BlockResult, MethodResult
from tfmq_export.calibration.resume import Checkpoint, run_fingerprint
from tfmq_export.calibration.weights import init_weight_scales
from tfmq_export.config import CalibrationSettings
from tfmq_export.device import module_device, shared_copy
from tfmq_export.models.adapter import UNetAdapter, replace_submodule
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import QuantLayer, SplitActQuantizer, make_quant_layer, split_tensors
from tfmq_export.temporal import TemporalBranch, TemporalTableUNet, build_table_unet, timestep_tensor

__all__ = [
    "StepToTimestep",
    "attach_live_temporal_branch",
    "enable_split_skip",
    "fold_temporal_branch",
    "live_temporal_features",
    "qdiff_blocks",
    "quantize_temporal_branch",
    "run",
]

# 1. the temporal branch as live modules ----------------------------------------------------------


class StepToTimestep(nn.Module):
    """``time_proj`` of a table UNet run live: table row -> the sampler's timestep -> the UNet's own
    sinusoidal embedding (so the live branch computes exactly ``compute_temporal_features``)."""

    def __init__(self, time_proj: nn.Module, timesteps: list[float]) -> None:
        super().__init__()
        self.time_proj = time_proj
        self.register_buffer("timesteps", timestep_tensor(timesteps))

    def forward(self, step_index: torch.Tensor) -> torch.Tensor:
        return self.time_proj(self.timesteps[step_index.long()])


def attach_live_temporal_branch(table_unet: TemporalTableUNet, source_unet: nn.Module) -> None:
    """Put copies of ``source_unet``'s temporal modules back into ``table_unet`` (in place; the copies
    share the float weights, ``device.shared_copy``: quantizing them swaps in layers with their own)."""
    unet = table_unet.unet
    unet.time_proj = StepToTimestep(shared_copy(source_unet.time_proj), table_unet.timesteps).to(
        module_device(unet))  # its timesteps buffer beside the UNet (--device)
    unet.time_embedding = shared_copy(source_unet.time_embedding)
    if table_unet.text_time:
        return  # SDXL: the ResBlocks' projections never left the table UNet (see ``run``)
    for proj in UNetAdapter(source_unet).temporal_projections():
        resnet = unet.get_submodule(proj.resnet_name)
        resnet.time_emb_proj = shared_copy(proj.resnet.time_emb_proj)
        resnet.skip_time_act = proj.resnet.skip_time_act


def quantize_temporal_branch(table_unet: TemporalTableUNet, source_unet: nn.Module, wbits: int,
                             abits: int) -> dict[str, QuantLayer]:
    """Swap the live branch's Linear layers (all but ``TIB_KEEP_FP``) for quantized ones."""
    layers: dict[str, QuantLayer] = {}
    for name in UNetAdapter(source_unet).tib_quantized_names():
        layer = make_quant_layer(table_unet.unet.get_submodule(name), wbits, abits, table_unet.num_steps)
        replace_submodule(table_unet.unet, name, layer)
        layers[name] = layer
    return layers


def live_temporal_features(table_unet: TemporalTableUNet) -> dict[str, torch.Tensor]:
    """{resnet: feature [T, C]} of the live branch for every table row (quantizers as they are)."""
    unet = table_unet.unet
    return TemporalBranch(unet, table_unet.timesteps, copy_modules=False, time_proj=unet.time_proj.time_proj).table()


def fold_temporal_branch(table_unet: TemporalTableUNet, tables: dict[str, torch.Tensor]) -> None:
    """Replace the live branch by table lookups again (in place), as the deployment has it."""
    TemporalTableUNet(table_unet.unet, tables, table_unet.timesteps, copy_unet=False)


# 2. blocks --------------------------------------------------------------------------------------


def qdiff_blocks(source_unet: nn.Module, tib_layers: dict[str, QuantLayer]) -> list[Block]:
    """The adapter's blocks, each ResBlock with its ``time_emb_proj``, plus the time MLP's
    quantized Linear as a block of its own (order: fixed later by ``execution_order``)."""
    blocks = adapter_blocks(source_unet)
    by_name = {b.name: i for i, b in enumerate(blocks)}
    extra: list[Block] = []
    for name in tib_layers:
        resnet = name.removesuffix(".time_emb_proj")
        if name.endswith(".time_emb_proj") and resnet in by_name:
            i = by_name[resnet]
            blocks[i] = Block(blocks[i].name, (*blocks[i].layer_names, name))
        else:
            extra.append(Block(name, (name,)))
    return extra + blocks


def enable_split_skip(sim: TemporalTableUNet, layers: dict[str, QuantLayer], data: CalibrationData) -> list[str]:
    """Q-Diffusion's shortcut splitting: ``conv1`` and ``conv_shortcut`` of every up-block ResBlock
    quantize the two halves of their concatenated input with separate scales (GroupNorm and SiLU
    before ``conv1`` keep the channel order, so the split point is the same)."""
    x, step, cond = next(data.batches(1))
    splits = UNetAdapter(sim.unet).concat_skip_splits(lambda: forward_declared(sim, x, step, cond))
    split_layers: list[str] = []
    for resnet, split in splits.items():
        for name in (f"{resnet}.conv1", f"{resnet}.conv_shortcut"):
            layer = layers.get(name)
            if layer is None or not layer.input_quantizer.enabled or split <= 0:
                continue
            old = layer.input_quantizer
            layer.input_quantizer = SplitActQuantizer(old.bits, sim.num_steps, split, old.grid).to(layer.weight.device)
            split_layers.append(name)
    return split_layers


# 3. the method -----------------------------------------------------------------------------------


def run(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    settings: CalibrationSettings,
    model: LoadedModel,
    work_dir: Path | None = None,
    progress: bool = True,
) -> MethodResult:
    """Calibrate ``sim`` in place the Q-Diffusion way; returns timings, the table kind, the split
    scales and the per-block report."""
    started = time.perf_counter()
    options = ReconstructionOptions.from_settings(settings, model.scheduler_config, data.timesteps)
    sim.requires_grad_(False)

    # 1. live, quantized temporal branch in the simulation; live FP branch in the reference
    fp_ref = build_table_unet(model.unet, data.timesteps, share_weights=True).eval().requires_grad_(False)
    attach_live_temporal_branch(fp_ref, model.unet)
    offload.attach(fp_ref)  # --offload: its blocks visit the device while they run
    attach_live_temporal_branch(sim, model.unet)
    tib_layers = quantize_temporal_branch(sim, model.unet, settings.wbits, settings.abits)
    all_layers = {**tib_layers, **layers}
    split_layers = enable_split_skip(sim, layers, data) if options.split_skip and settings.abits < 16 else []
    init_weight_scales(all_layers, settings.weight_init)
    blocks = execution_order(sim, qdiff_blocks(model.unet, tib_layers), data)
    checkpoint = Checkpoint(work_dir, run_fingerprint("qdiff", settings, model.fingerprint(),
                                                      [data.samples, data.step_index]))
    resumed = checkpoint.resumed_units

    # 2. weights: AdaRound block by block, the temporal layers inside the blocks
    weight_results, weight_seconds = weights_stage(sim, fp_ref, blocks, all_layers, data, options, checkpoint,
                                                   progress)

    # 3. activations: ranges over all steps, then learned static scales
    act_started = time.perf_counter()
    act_results: list[BlockResult] = []
    if settings.abits < 16:
        calibrate_activations(sim, all_layers, data, options.capture_batch_size, settings.static_scale_rule,
                              options.act_samples_per_step, options.seed, progress)
        if options.lsq_iters > 0:
            recon_data = uniform_subset(data, options.recon_samples, options.seed, pairs=options.guided)
            act_results = reconstruct_blocks(sim, fp_ref, blocks, all_layers, recon_data, options, Stage.ACT,
                                             options.lsq_iters, checkpoint, progress)
    act_seconds = time.perf_counter() - act_started

    # 4. the deployed table comes from the quantized temporal branch
    fold_temporal_branch(sim, live_temporal_features(sim))
    if not options.keep_checkpoints:
        checkpoint.remove()
    return MethodResult(
        tensors={k: v for n in split_layers for k, v in split_tensors(n, layers[n].input_quantizer).items()},
        timings={
            "method_seconds": time.perf_counter() - started,
            "weight_recon_seconds": weight_seconds,
            "act_calib_seconds": act_seconds,
        },
        temporal_table="quantized",
        blocks=[b.name for b in blocks],
        resumed_units=resumed,
        weights=weight_results,
        act=act_results,
    )
