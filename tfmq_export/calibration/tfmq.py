"""``--method tfmq``: TFMQ-DM (Huang et al., CVPR 2024), in a table deployment.

Notation: t a sampler timestep (a table row), h(t) the time MLP's output, g_i(.) = SiLU ->
``time_emb_proj`` of ResBlock i, g_i(h(t)) its temporal feature; ^ marks quantized.

1. TIB (Temporal Information Block): the time MLP + every ResBlock's projection, taken from the
   adapter into a standalone ``temporal.TemporalBranch`` (it depends on t alone).
2. TIAR (temporal information aware reconstruction, paper Sec. 4.2): AdaRound of the TIB's Linear
   layers (``time_embedding.linear_2`` + every ``time_emb_proj``; ``linear_1`` stays FP) with
   loss  sum_i || g_i(h(t)) - g^_i(h^(t)) ||^2  over the sampler's timesteps. t is the only
   data, so an iteration costs one pass of a few small Linear layers. The Adam loop is
   ``reconstruction.optimise``, the one the blocks use.
3. FSC (finite set calibration, Sec. 4.3): the TIB's activation ranges per timestep with plain
   min-max (exact for a finite set). The deployed table is then either the FP features
   (``temporal_table = "fp"``: the table carries no quantization error at all) or the quantized
   TIB's (``"quantized"``: TIAR integers + per-step activation quantization), and the per-step
   ranges of the temporal features (the table rows) go into the artifact.
4. The TIB is frozen (it is a table in the simulation); the rest of the network is
   block-reconstructed with AdaRound as in qdiff, without the temporal layers and without a
   learned-activation stage. Every activation quantizer keeps per-step statistics
   (``step_min`` / ``step_max``), and the static engine scale comes from ``static_scale_rule``:
   ``max`` (no step clips) or ``mse`` (least quantization error summed over the steps).

SDXL (``text_time``): diffusers feeds the ResBlocks ``emb = h(t) + aug(text_embeds, time_ids)``,
so g_i depends on the conditions and only h(t) is a function of t. The TIB is then the time MLP
alone (``temporal.TemporalBranch``): TIAR's loss is || h(t) - h^(t) ||^2 (AdaRound of
``linear_2``), FSC ranges its input per step, the table is h(t) (or h^(t)), and the ResBlocks'
``time_emb_proj`` stay float layers of the graph on the live sum. The block stage sees the added
conditions: they travel packed with the conditions of every calibration input.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tfmq_export.calibration import offload
from tfmq_export.calibration.activations import calibrate_activations
from tfmq_export.calibration.adaround import (
    AdaRound,
    RegularizerSchedule,
    attach_adaround,
    lp_loss,
    rounding_optimizer,
)
from tfmq_export.calibration.block_io import adapter_blocks, execution_order, uniform_subset
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.qdiff import enable_split_skip
from tfmq_export.calibration.reconstruction import (
    ReconstructionOptions,
    Stage,
    freeze_rounding,
    optimise,
    reconstruct_blocks,
    restore_unit,
    weights_stage,
)
from tfmq_export.calibration.result import MethodResult, TiarResult
from tfmq_export.calibration.resume import Checkpoint, run_fingerprint, unit_seed
from tfmq_export.calibration.weights import init_weight_scales
from tfmq_export.config import CalibrationSettings
from tfmq_export.device import module_device
from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import TIB_KEEP_FP
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import (
    ActMode,
    ActQuantizer,
    PerStepActQuantizer,
    QuantLayer,
    make_quant_layer,
    split_tensors,
    step_factors,
)
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.temporal import TemporalBranch, TemporalTableLookup, TemporalTableUNet, table_module_name

__all__ = [
    "finite_set_calibration",
    "install_table",
    "quantize_branch",
    "run",
    "step_ranges",
    "temporal_error",
    "tiar",
]

# 1. the temporal information block ---------------------------------------------------------------


def quantize_branch(branch: TemporalBranch, wbits: int, abits: int) -> dict[str, QuantLayer]:
    """Swap the branch's Linear layers (all but ``TIB_KEEP_FP``) for quantized ones whose activation
    quantizers keep one scale per step (FSC)."""
    layers: dict[str, QuantLayer] = {}
    for name, (parent, attr) in branch.linear_slots.items():
        if name in TIB_KEEP_FP:
            continue
        layer = make_quant_layer(getattr(parent, attr), wbits, abits, branch.num_steps)
        layer.input_quantizer = PerStepActQuantizer(abits, branch.num_steps).to(layer.weight.device)
        setattr(parent, attr, layer)
        layers[name] = layer
    return layers


def temporal_error(branch: TemporalBranch, reference: dict[str, torch.Tensor]) -> float:
    """TIAR's objective: sum_i ||g_i - g^_i||^2, summed over the features, averaged over steps."""
    feats = branch.table()
    return float(lp_loss(torch.cat([feats[n] for n in reference], 1), torch.cat(list(reference.values()), 1)))


# 2. TIAR ----------------------------------------------------------------------------------------


def tiar(
    branch: TemporalBranch,
    layers: dict[str, QuantLayer],
    targets: dict[str, torch.Tensor],
    options: ReconstructionOptions,
    iters: int,
    generator_seed: int,
    progress: bool = True,
) -> tuple[TiarResult, dict[str, torch.Tensor]]:
    """Learn the rounding of the TIB's Linear layers against the FP temporal features; returns the
    errors before/after and the frozen integers.

    Every iteration sees every timestep (the data is the T table rows; no minibatch sampling
    needed, so the seed only documents the unit). Activation quantization is off, as in the
    weight stage of the rest of the network; FSC follows.
    """
    set_act_mode(layers, ActMode.DISABLED)
    rows = torch.arange(branch.num_steps)
    names = list(targets)
    target = torch.cat([targets[n] for n in names], 1).to(module_device(branch))  # table() is on the CPU
    before = temporal_error(branch, targets)  # round-to-nearest weights
    adas: dict[str, AdaRound] = {n: attach_adaround(layer) for n, layer in layers.items()
                                 if layer.weight_quantizer.enabled}
    if adas:
        settings = options.adaround_for(iters)
        optimizer = rounding_optimizer([a.alpha for a in adas.values()], settings.lr)

        def batch_loss() -> torch.Tensor:
            feats = branch(rows)
            return lp_loss(torch.cat([feats[n] for n in names], 1), target)

        with tqdm(total=iters, desc="TIAR", disable=not progress, leave=False) as bar:

            def on_step(it: int, loss: float) -> None:
                bar.update(1)
                if it % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

            optimise(batch_loss, optimizer, adas, RegularizerSchedule(iters, settings), 0, iters, "TIAR", on_step)
    frozen = freeze_rounding(layers, adas)
    return TiarResult(before, temporal_error(branch, targets), generator_seed), frozen


# 3. FSC -----------------------------------------------------------------------------------------


@torch.no_grad()
def finite_set_calibration(branch: TemporalBranch, layers: dict[str, QuantLayer]) -> None:
    """Per-step min-max ranges of the TIB's activation quantizers over all T steps, then quantize
    every step with its own scale (exact for the finite set)."""
    set_act_mode(layers, ActMode.OBSERVING)
    branch(torch.arange(branch.num_steps))
    for layer in layers.values():
        aq = layer.input_quantizer
        aq.mode = ActMode.QUANTIZING if aq.enabled else ActMode.DISABLED


def step_ranges(table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FSC statistics of the temporal features: per-row min / max of every table."""
    out: dict[str, torch.Tensor] = {}
    for name, rows in table.items():
        out[f"fsc.{name}.step_min"] = rows.amin(dim=1)
        out[f"fsc.{name}.step_max"] = rows.amax(dim=1)
    return out


def install_table(sim: TemporalTableUNet, table: dict[str, torch.Tensor]) -> None:
    """Overwrite the simulation's temporal table rows (same shapes)."""
    for name, rows in table.items():
        lookup = sim.unet.get_submodule(table_module_name(name))
        if not isinstance(lookup, TemporalTableLookup) or lookup.table.shape != rows.shape:
            raise TfmqError(f"{name}: the simulation has no temporal table of shape {tuple(rows.shape)}")
        lookup.table.copy_(rows)


def _tib_tensors(tib_layers: dict[str, QuantLayer]) -> dict[str, torch.Tensor]:
    """The quantized TIB's FSC ranges and integers, for the artifact (``tib.*``)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in tib_layers.items():
        if layer.input_quantizer.enabled:
            tensors[f"tib.{name}.input_step_min"] = layer.input_quantizer.step_min.clone()
            tensors[f"tib.{name}.input_step_max"] = layer.input_quantizer.step_max.clone()
        if layer.weight_quantizer.enabled:
            tensors[f"tib.{name}.weight_int"] = layer.weight_quantizer.integer_weight(layer.weight).clone()
            tensors[f"tib.{name}.weight_scale"] = layer.weight_quantizer.scale.clone()
    return tensors


# 4. the method -----------------------------------------------------------------------------------


def run(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    settings: CalibrationSettings,
    model: LoadedModel,
    work_dir: Path | None = None,
    progress: bool = True,
) -> MethodResult:
    """Calibrate ``sim`` in place the TFMQ-DM way; returns timings, the table kind, the FSC
    statistics (``tensors``: per-step ranges of the temporal features and of the TIB inputs) and
    the report."""
    started = time.perf_counter()
    options = ReconstructionOptions.from_settings(settings, model.scheduler_config, data.timesteps)
    sim.requires_grad_(False)
    checkpoint = Checkpoint(work_dir, run_fingerprint("tfmq", settings, model.fingerprint(),
                                                      [data.samples, data.step_index]))
    resumed = checkpoint.resumed_units

    # 1. TIB: FP reference features and the quantized branch
    tiar_started = time.perf_counter()
    device = offload.compute_device(module_device(model.unet))  # --offload: the GPU (a few Linear layers)
    fp_branch = TemporalBranch(model.unet, data.timesteps).requires_grad_(False).eval().to(device)
    targets = fp_branch.table()
    branch = TemporalBranch(model.unet, data.timesteps).requires_grad_(False).eval().to(device)
    tib_layers = quantize_branch(branch, settings.wbits, settings.abits)
    init_weight_scales(tib_layers, settings.weight_init)

    # 2. TIAR (one checkpoint unit)
    seed = unit_seed(options.seed, "tiar", "tib")
    if checkpoint.done("tiar"):
        restore_unit(checkpoint.load("tiar"), tib_layers)
        tiar_result = TiarResult(**checkpoint.info("tiar"))
    else:
        tiar_result, frozen = tiar(branch, tib_layers, targets, options, options.temporal_iters, seed, progress)
        checkpoint.save("tiar", frozen, vars(tiar_result))

    # 3. FSC on the TIB, and the deployed table
    finite_set_calibration(branch, tib_layers)
    table = branch.table() if settings.temporal_table == "quantized" else targets
    install_table(sim, table)
    tiar_seconds = time.perf_counter() - tiar_started

    # 4. the rest of the network, TIB out of the loop (it is a table in ``sim`` and ``fp_ref``)
    fp_ref = TemporalTableUNet(model.unet, targets, data.timesteps, share_weights=True).eval().requires_grad_(False)
    offload.attach(fp_ref)  # --offload: its blocks visit the device while they run
    quantize_acts = settings.abits < 16
    split_layers = enable_split_skip(sim, layers, data) if options.split_skip and quantize_acts else []
    init_weight_scales(layers, settings.weight_init)
    blocks = execution_order(sim, adapter_blocks(model.unet), data)
    joint = options.joint_act and quantize_acts
    act_started = time.perf_counter()
    if joint:  # FSC statistics first (round-to-nearest weights): they initialise the learned scales
        calibrate_activations(sim, layers, data, options.capture_batch_size, settings.static_scale_rule,
                              options.act_samples_per_step, options.seed, progress)
    act_seconds = time.perf_counter() - act_started
    if joint:
        started_joint = time.perf_counter()
        recon_data = uniform_subset(data, options.recon_samples, options.seed, pairs=options.guided)
        weight_results = reconstruct_blocks(sim, fp_ref, blocks, layers, recon_data, options, Stage.JOINT,
                                            options.iters, checkpoint, progress)
        weight_seconds = time.perf_counter() - started_joint
    else:
        weight_results, weight_seconds = weights_stage(sim, fp_ref, blocks, layers, data, options, checkpoint,
                                                       progress)
    act_started = time.perf_counter()
    if quantize_acts and not joint:
        calibrate_activations(sim, layers, data, options.capture_batch_size, settings.static_scale_rule,
                              options.act_samples_per_step, options.seed, progress)
    act_seconds += time.perf_counter() - act_started
    if not options.keep_checkpoints:
        checkpoint.remove()

    tensors = step_ranges(table)
    tensors.update({k: v for n in split_layers for k, v in split_tensors(n, layers[n].input_quantizer).items()})
    if options.step_factors and settings.abits < 16:  # FSC for every activation, deployable as factors
        tensors.update({f"{name}.input_step_factor": step_factors(layer.input_quantizer)
                        for name, layer in layers.items()
                        if type(layer.input_quantizer) is ActQuantizer and layer.input_quantizer.enabled})
    tensors.update(_tib_tensors(tib_layers))
    return MethodResult(
        tensors=tensors,
        timings={
            "method_seconds": time.perf_counter() - started,
            "tiar_seconds": tiar_seconds,
            "weight_recon_seconds": weight_seconds,
            "act_calib_seconds": act_seconds,
        },
        temporal_table=settings.temporal_table,
        blocks=[b.name for b in blocks],
        resumed_units=resumed,
        weights=weight_results,
        tiar=tiar_result,
        temporal_error_quantized_table=temporal_error(branch, targets),
    )
