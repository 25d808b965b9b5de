"""``--method tfmq``: TFMQ-DM (Huang et al., CVPR 2024; docs TFMQ.md), in a table deployment.

Notation: t a sampler timestep (a table row), h(t) the time MLP's output, g_i(.) = SiLU ->
``time_emb_proj`` of ResBlock i, g_i(h(t)) its temporal feature; ^ marks quantized.

1. TIB (Temporal Information Block): the time MLP + every ResBlock's projection, taken from the
   adapter into a standalone ``TemporalBranch`` (it depends on t alone).
2. TIAR (temporal information aware reconstruction, paper Sec. 4.2): AdaRound of the TIB's Linear
   layers (``time_embedding.linear_2`` + every ``time_emb_proj``; ``linear_1`` stays FP) with
   loss  sum_i || g_i(h(t)) - g^_i(h^(t)) ||^2  over the sampler's timesteps. t is the only
   data, so an iteration costs one pass of a few small Linear layers.
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
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tfmq_export.calibration.adaround import (
    AdaRound,
    RegularizerSchedule,
    attach_adaround,
    check_finite,
    freeze_adaround,
    lp_loss,
)
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.minmax import init_weight_scales
from tfmq_export.calibration.reconstruction import (
    ReconstructionOptions,
    adapter_blocks,
    calibrate_activations,
    execution_order,
    restore_unit,
    weights_stage,
)
from tfmq_export.calibration.resume import Checkpoint, run_fingerprint, unit_seed
from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.quant.modules import (
    ActMode,
    ActQuantizer,
    PerStepActQuantizer,
    QuantLayer,
    make_quant_layer,
    step_factors,
)
from tfmq_export.quant.simulate import set_act_mode
from tfmq_export.quant.steps import observing_steps
from tfmq_export.temporal import TemporalTableLookup, TemporalTableUNet

TEMPORAL_TABLES = ("fp", "quantized")

#: Kept in full precision inside the TIB (the paper: the first time-embedding Linear).
TIB_KEEP_FP = ("time_embedding.linear_1",)

# 1. the temporal information block ---------------------------------------------------------------


class TemporalBranch(nn.Module):
    """The TIB alone: table rows -> {resnet: g_i(h(t))} for the sampler's timesteps.

    Holds copies of the UNet's ``time_proj``, ``time_embedding`` and every ResBlock's
    nonlinearity + ``time_emb_proj``, and computes exactly what ``compute_temporal_features``
    computes, but differentiably and with quantized layers swapped in by ``quantize``.
    """

    def __init__(self, unet: nn.Module, timesteps: list[int]) -> None:
        super().__init__()
        projections = UNetAdapter(unet).temporal_projections()
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.resnet_names = [p.resnet_name for p in projections]
        self.acts = nn.ModuleList(
            nn.Identity() if p.resnet.skip_time_act else copy.deepcopy(p.resnet.nonlinearity) for p in projections
        )
        self.projs = nn.ModuleList(copy.deepcopy(p.resnet.time_emb_proj) for p in projections)
        self.register_buffer("timesteps", torch.tensor(timesteps, dtype=torch.long))

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def linear_names(self) -> dict[str, tuple[nn.Module, str]]:
        """{UNet name of a TIB Linear: (parent here, attribute)}; names as the adapter gives them."""
        names: dict[str, tuple[nn.Module, str]] = {}
        for attr, module in self.time_embedding.named_children():
            if isinstance(module, (nn.Linear, QuantLayer)):
                names[f"time_embedding.{attr}"] = (self.time_embedding, attr)
        for i, resnet in enumerate(self.resnet_names):
            names[f"{resnet}.time_emb_proj"] = (self.projs, str(i))
        return names

    def quantize(self, wbits: int, abits: int) -> dict[str, QuantLayer]:
        """Swap the Linear layers (all but ``TIB_KEEP_FP``) for quantized ones whose activation
        quantizers keep one scale per step (FSC)."""
        layers: dict[str, QuantLayer] = {}
        for name, (parent, attr) in self.linear_names().items():
            if name in TIB_KEEP_FP:
                continue
            layer = make_quant_layer(getattr(parent, attr), wbits, abits, self.num_steps)
            layer.input_quantizer = PerStepActQuantizer(abits, self.num_steps)
            setattr(parent, attr, layer)
            layers[name] = layer
        return layers

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = rows.long().reshape(-1)
        with observing_steps(rows):
            param = next(self.parameters())
            t_emb = self.time_proj(self.timesteps[rows.to(self.timesteps.device)]).to(param.dtype)
            emb = self.time_embedding(t_emb)
            return {name: proj(act(emb)).float() for name, act, proj in zip(self.resnet_names, self.acts, self.projs)}

    def table(self) -> dict[str, torch.Tensor]:
        """Every row: {resnet: [T, C]}."""
        with torch.no_grad():
            return {k: v.cpu() for k, v in self(torch.arange(self.num_steps)).items()}


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
) -> dict[str, Any]:
    """Learn the rounding of the TIB's Linear layers against the FP temporal features.

    Every iteration sees every timestep (the data is the T table rows; no minibatch sampling
    needed, so the seed only documents the unit). Activation quantization is off, as in the
    weight stage of the rest of the network; FSC follows. Returns before/after errors.
    """
    set_act_mode(layers, ActMode.DISABLED)
    rows = torch.arange(branch.num_steps)
    names = list(targets)
    target = torch.cat([targets[n] for n in names], 1)
    before = temporal_error(branch, targets)  # round-to-nearest weights
    adas: dict[str, AdaRound] = {n: attach_adaround(layer) for n, layer in layers.items()
                                 if layer.weight_quantizer.enabled}
    if adas:
        settings = options.adaround_for(iters)
        optimizer = torch.optim.Adam([a.alpha for a in adas.values()], lr=settings.lr)
        schedule = RegularizerSchedule(iters, settings)
        bar = tqdm(range(iters), desc="TIAR", disable=not progress, leave=False)
        for it in bar:
            feats = branch(rows)
            rec = lp_loss(torch.cat([feats[n] for n in names], 1), target)
            loss = rec
            if schedule.weight(it) > 0:
                beta = schedule.beta(it)
                loss = rec + schedule.weight(it) * sum(a.regularizer(beta) for a in adas.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if it == 0:
                check_finite(rec.detach(), "TIAR")
            if it % 50 == 0:
                bar.set_postfix(loss=f"{float(rec.detach()):.4g}", refresh=False)
    frozen = {f"{n}.weight_int": freeze_adaround(layers[n], a) for n, a in adas.items()}
    after = temporal_error(branch, targets)
    return {"frozen": frozen, "error_before": before, "error_after": after, "seed": generator_seed}


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
        lookup = sim.unet.get_submodule(f"{name}.time_emb_proj")
        if not isinstance(lookup, TemporalTableLookup) or lookup.table.shape != rows.shape:
            raise TfmqError(f"{name}: the simulation has no temporal table of shape {tuple(rows.shape)}")
        lookup.table.copy_(rows)


# 4. the method -----------------------------------------------------------------------------------


def run(
    sim: TemporalTableUNet,
    layers: dict[str, QuantLayer],
    data: CalibrationData,
    settings: Any,
    model: Any,
    work_dir: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate ``sim`` in place the TFMQ-DM way; returns timings, the table kind and the FSC
    statistics (``tensors``: per-step ranges of the temporal features and of the TIB inputs)."""
    started = time.perf_counter()
    options = ReconstructionOptions.from_settings(settings)
    if settings.temporal_table not in TEMPORAL_TABLES:
        raise TfmqError(f"--temporal-table {settings.temporal_table!r}: choose fp or quantized")
    sim.requires_grad_(False)
    checkpoint = Checkpoint(work_dir, run_fingerprint("tfmq", settings, model.fingerprint(),
                                                      [data.samples, data.step_index]))
    resumed = checkpoint.resumed_units

    # 1. TIB: FP reference features and the quantized branch
    tiar_started = time.perf_counter()
    fp_branch = TemporalBranch(model.unet, data.timesteps).requires_grad_(False).eval()
    targets = fp_branch.table()
    branch = TemporalBranch(model.unet, data.timesteps).requires_grad_(False).eval()
    tib_layers = branch.quantize(settings.wbits, settings.abits)
    init_weight_scales(tib_layers, settings.weight_init)

    # 2. TIAR (one checkpoint unit)
    seed = unit_seed(options.seed, "tiar", "tib")
    if checkpoint.done("tiar"):
        restore_unit(checkpoint.load("tiar"), tib_layers)
        tiar_info = checkpoint.info("tiar")
    else:
        result = tiar(branch, tib_layers, targets, options, options.temporal_iters, seed, progress)
        tiar_info = {k: v for k, v in result.items() if k != "frozen"}
        checkpoint.save("tiar", result["frozen"], tiar_info)

    # 3. FSC on the TIB, and the deployed table
    finite_set_calibration(branch, tib_layers)
    quantized_table = branch.table()
    table = quantized_table if settings.temporal_table == "quantized" else targets
    install_table(sim, table)
    tiar_seconds = time.perf_counter() - tiar_started

    # 4. the rest of the network, TIB out of the loop (it is a table in ``sim`` and ``fp_ref``)
    fp_ref = TemporalTableUNet(model.unet, targets, data.timesteps).eval().requires_grad_(False)
    init_weight_scales(layers, settings.weight_init)
    blocks = execution_order(sim, adapter_blocks(model.unet), data)
    weight_results, weight_seconds = weights_stage(sim, fp_ref, blocks, layers, data, options, checkpoint, progress)
    act_started = time.perf_counter()
    if settings.abits < 16:
        calibrate_activations(sim, layers, data, options, settings.static_scale_rule, progress)
    act_seconds = time.perf_counter() - act_started
    if not options.keep_checkpoints:
        checkpoint.remove()

    tensors = step_ranges(table)
    if options.step_factors and settings.abits < 16:  # FSC for every activation, deployable as factors
        tensors.update({f"{name}.input_step_factor": step_factors(layer.input_quantizer)
                        for name, layer in layers.items()
                        if type(layer.input_quantizer) is ActQuantizer and layer.input_quantizer.enabled})
    for name, layer in tib_layers.items():
        if layer.input_quantizer.enabled:
            tensors[f"tib.{name}.input_step_min"] = layer.input_quantizer.step_min.clone()
            tensors[f"tib.{name}.input_step_max"] = layer.input_quantizer.step_max.clone()
        if layer.weight_quantizer.enabled:
            tensors[f"tib.{name}.weight_int"] = layer.weight_quantizer.integer_weight(layer.weight).clone()
            tensors[f"tib.{name}.weight_scale"] = layer.weight_quantizer.scale.clone()
    return {
        "timings": {
            "method_seconds": time.perf_counter() - started,
            "tiar_seconds": tiar_seconds,
            "weight_recon_seconds": weight_seconds,
            "act_calib_seconds": act_seconds,
        },
        "temporal_table": settings.temporal_table,
        "tensors": tensors,
        "report": {
            "blocks": [b.name for b in blocks],
            "resumed_units": resumed,
            "tiar": tiar_info,
            "temporal_error_quantized_table": temporal_error(branch, targets),
            "weights": [vars(r) for r in weight_results],
        },
    }


__all__ = [
    "TEMPORAL_TABLES",
    "TIB_KEEP_FP",
    "TemporalBranch",
    "finite_set_calibration",
    "install_table",
    "run",
    "step_ranges",
    "temporal_error",
    "tiar",
]
