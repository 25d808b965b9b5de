"""The temporal table: TFMQ's Temporal Information Block precomputed per sampler step.

g_i(h(t)) — sinusoidal embedding -> time MLP h -> SiLU -> time_emb_proj_i — depends on the
step t alone, and t comes from the sampler's finite set of steps. So every ResBlock's temporal
feature is computed once per step and stored as a table row; the deployed UNet looks rows up by
``step_index`` (a Gather in ONNX). It costs no compute and carries no quantization error; the
journal version of TFMQ-DM calls this cache-based maintenance.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from tfmq_export.device import module_device, shared_copy
from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.quant.steps import observing_steps


def timestep_tensor(timesteps: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Timesteps as the UNet's ``time_proj`` takes them: int64 when all whole (DDIM, PNDM: the
    values of every earlier table), float32 when one is fractional (Euler, karras sigmas)."""
    values = timesteps.tolist() if torch.is_tensor(timesteps) else list(timesteps)
    whole = all(float(v).is_integer() for v in values)
    return torch.as_tensor(values, dtype=torch.long if whole else torch.float32).reshape(-1)


#: the table key of SDXL's h(t) (a ``text_time`` UNet has this one table instead of one per ResBlock)
TIME_EMBEDDING_TABLE = "time_embedding"


class TemporalBranch(nn.Module):
    """The TIB alone: table rows -> {resnet: g_i(h(t))} for the sampler's timesteps.

    Notation (TFMQ-DM): t a sampler timestep (a table row), h(t) the time MLP's output, g_i(.) =
    nonlinearity -> ``time_emb_proj`` of ResBlock i. Holds the UNet's ``time_proj``,
    ``time_embedding`` and every ResBlock's nonlinearity + ``time_emb_proj`` (copies by default,
    so calibration can swap quantized layers in; the copies share the weights' storage,
    ``device.shared_copy``; ``copy_modules=False`` computes with the UNet's own modules).
    ``time_proj`` replaces the UNet's sinusoidal embedding module (a UNet whose ``time_proj`` was
    wrapped, as qdiff's live branch does, passes the inner one). The one implementation of the
    temporal features: the table, TIAR's targets and qdiff's quantized table all come from
    ``forward``.

    SDXL (``text_time``): diffusers adds the added-condition embedding to the time embedding
    before the ResBlocks (``emb = h(t) + aug(text_embeds, time_ids)``), so g_i sees the
    conditions and is no function of t. The branch then ends at the time MLP: it yields
    ``{TIME_EMBEDDING_TABLE: h(t)}``, its Linear layers are the MLP's only, and the ResBlocks'
    projections stay live (float) layers of the UNet, which ``aug`` reaches at run time.
    """

    def __init__(self, unet: nn.Module, timesteps: Sequence[int] | torch.Tensor, copy_modules: bool = True,
                 time_proj: nn.Module | None = None) -> None:
        super().__init__()
        take = shared_copy if copy_modules else (lambda module: module)
        adapter = UNetAdapter(unet)
        self.text_time = adapter.has_text_time
        projections = [] if self.text_time else adapter.temporal_projections()
        self.time_proj = take(unet.time_proj if time_proj is None else time_proj)
        self.time_embedding = take(unet.time_embedding)
        self.resnet_names = [p.resnet_name for p in projections]
        self.acts = nn.ModuleList(
            nn.Identity() if p.resnet.skip_time_act else take(p.resnet.nonlinearity) for p in projections
        )
        self.projs = nn.ModuleList(take(p.resnet.time_emb_proj) for p in projections)
        self.register_buffer("timesteps", timestep_tensor(timesteps))
        #: UNet name of every Linear layer here -> (parent module, attribute), for swapping layers
        self.linear_slots: dict[str, tuple[nn.Module, str]] = {
            f"time_embedding.{attr}": (self.time_embedding, attr)
            for attr, module in self.time_embedding.named_children() if isinstance(module, nn.Linear)
        }
        self.linear_slots.update({f"{name}.time_emb_proj": (self.projs, str(i))
                                  for i, name in enumerate(self.resnet_names)})
        self.to(module_device(unet))  # the timesteps buffer where the UNet's modules are (--device)

    @property
    def num_steps(self) -> int:
        return self.timesteps.numel()

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """{resnet: g_i(h(t)) [len(rows), C]} for the table rows ``rows`` (declared for per-step
        quantizers inside)."""
        rows = rows.long().reshape(-1)
        with observing_steps(rows):
            param = next(self.parameters())
            t_emb = self.time_proj(self.timesteps[rows.to(self.timesteps.device)]).to(param.device, param.dtype)
            emb = self.time_embedding(t_emb)
            if self.text_time:
                return {TIME_EMBEDDING_TABLE: emb.float()}
            return {name: proj(act(emb)).float() for name, act, proj in zip(self.resnet_names, self.acts, self.projs)}

    def table(self) -> dict[str, torch.Tensor]:
        """Every row: {resnet: [T, C]} (on the CPU)."""
        with torch.no_grad():
            return {k: v.cpu() for k, v in self(torch.arange(self.num_steps)).items()}


@torch.no_grad()
def compute_temporal_features(unet: nn.Module, timesteps: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
    """{resnet name: g_i(h(t)) for every t} as [T, C] (or [T, 2C] for scale-shift ResBlocks).

    Runs the UNet's own TIB modules, so a UNet whose TIB layers were swapped for quantized
    ones yields the quantized table. SDXL: ``{TIME_EMBEDDING_TABLE: h(t)}`` alone (the ResBlocks'
    time input is h(t) + aug(text_embeds, time_ids), see ``TemporalBranch``).
    """
    return TemporalBranch(unet, timesteps, copy_modules=False).table()


class _StepIndexPassthrough(nn.Module):
    """Stands in for ``time_proj``: hands the step index on instead of a sinusoidal embedding."""

    def forward(self, step_index: torch.Tensor) -> torch.Tensor:
        return step_index


class _EmbeddingPassthrough(nn.Module):
    """Stands in for ``time_embedding``: the MLP is folded into the tables."""

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        # diffusers calls time_embedding(t_emb, timestep_cond); there is no condition to fold here
        return x


class TemporalTableLookup(nn.Module):
    """Replaces a ResBlock's ``time_emb_proj``: returns its precomputed feature for the step."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.detach().float().clone())

    def forward(self, step_index: torch.Tensor) -> torch.Tensor:
        # diffusers casts the time embedding to the model dtype; step indices < 2**24 stay exact
        return self.table[step_index.long()]


class TimeEmbeddingLookup(TemporalTableLookup):
    """Replaces SDXL's ``time_embedding`` MLP: the row of h(t) for the step (diffusers calls it
    with the step index, cast to float by ``get_time_embed``, and a ``timestep_cond``)."""

    def forward(self, step_index: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return self.table[step_index.long()]


class OutputCorrection(nn.Module):
    """Subtracts the per-step correction of the output (``calibration.output_correction``): a table
    [T, C, H, W] or [T, C, 1, 1] gathered by the step index, as the temporal tables are."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        if table.dim() != 4:
            raise TfmqError(f"an output correction is [steps, C, H, W] or [steps, C, 1, 1], got {list(table.shape)}")
        self.register_buffer("table", table.detach().float().clone())

    def forward(self, output: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        want = self.table.shape[1:]
        got = output.shape[1:]
        if len(got) != 3 or got[0] != want[0] or any(w not in (1, g) for w, g in zip(want[1:], got[1:], strict=True)):
            raise TfmqError(f"the artifact's output correction is for outputs of shape {list(want)} per sample; this "
                            f"UNet call gives {list(got)} (a per-pixel correction needs the calibration's resolution)")
        return output - self.table[step_index.long()].to(output.dtype)


def table_module_name(key: str) -> str:
    """The UNet module a table replaces: SDXL's ``time_embedding`` MLP, else ``{resnet}.time_emb_proj``."""
    return key if key == TIME_EMBEDDING_TABLE else f"{key}.time_emb_proj"


def pack_added_conditions(encoder_hidden_states: torch.Tensor, text_embeds: torch.Tensor,
                          time_ids: torch.Tensor) -> torch.Tensor:
    """SDXL's added conditions as one extra token [B, 1, D] after ``encoder_hidden_states``.

    Calibration data and methods carry one condition tensor per sample; the table UNet unpacks
    it (``unpack_added_conditions``) before the UNet runs, so no layer ever sees the extra token.
    """
    extra = torch.cat([text_embeds, time_ids], dim=-1)
    dim = encoder_hidden_states.shape[-1]
    if extra.shape[-1] > dim:
        raise TfmqError(f"text_embeds + time_ids ({extra.shape[-1]} values) do not fit a {dim}-wide token")
    token = torch.nn.functional.pad(extra, (0, dim - extra.shape[-1])).unsqueeze(1)
    return torch.cat([encoder_hidden_states, token.to(encoder_hidden_states.dtype)], dim=1)


def unpack_added_conditions(packed: torch.Tensor, text_embeds_dim: int) -> tuple[torch.Tensor, ...]:
    """(encoder_hidden_states, text_embeds, time_ids) from ``pack_added_conditions``'s tensor."""
    token = packed[:, -1]
    return packed[:, :-1], token[:, :text_embeds_dim], token[:, text_embeds_dim : text_embeds_dim + 6]


class TemporalTableUNet(nn.Module):
    """A UNet whose temporal branch is a per-step table: ``forward(sample, step_index[, ehs])``.

    This is the function the ONNX graph computes, and, with quantized layers swapped in, the
    torch simulation of it. It owns a copy of the UNet, so the caller's model is untouched;
    ``share_weights``: the copy's parameters share storage with the caller's (``device.shared_copy``:
    calibration's float references, which nothing writes in place).
    """

    def __init__(
        self,
        unet: nn.Module,
        tables: dict[str, torch.Tensor],
        timesteps: Sequence[int],
        copy_unet: bool = True,
        share_weights: bool = False,
        output_correction: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        #: per-step correction of the output (``calibration.output_correction``); None: none
        self.output_correction = None if output_correction is None else OutputCorrection(output_correction)
        if copy_unet:
            self.unet = shared_copy(unet) if share_weights else copy.deepcopy(unet)
        else:
            self.unet = unet
        self.timesteps = timestep_tensor(timesteps).tolist()
        self.is_conditional = type(unet).__name__ == "UNet2DConditionModel"
        adapter = UNetAdapter(self.unet)
        #: SDXL (``text_time``): h(t) is the table, the ResBlock projections stay in the graph
        self.text_time = adapter.has_text_time
        self.text_embeds_dim = adapter.text_embeds_dim
        if self.text_time:
            self._install_time_embedding_table(tables)
            self.declares_steps = False
            self.to(module_device(unet))  # the table where the UNet is (--device)
            return
        projections = adapter.temporal_projections()
        missing = {p.resnet_name for p in projections} - set(tables)
        if missing:
            raise TfmqError(f"temporal table lacks rows for {sorted(missing)[:3]}...")
        for proj in projections:
            table = tables[proj.resnet_name]
            if table.shape[0] != len(self.timesteps):
                raise TfmqError(
                    f"temporal table for {proj.resnet_name} has {table.shape[0]} rows, expected {len(self.timesteps)}"
                )
            proj.resnet.time_emb_proj = TemporalTableLookup(table)
            proj.resnet.skip_time_act = True
        self.unet.time_proj = _StepIndexPassthrough()
        self.unet.time_embedding = _EmbeddingPassthrough()
        #: True when quantizers inside need the table row of every sample (per-step factors)
        self.declares_steps = False
        self.to(module_device(unet))  # the tables where the UNet is (--device)

    def _install_time_embedding_table(self, tables: dict[str, torch.Tensor]) -> None:
        table = tables.get(TIME_EMBEDDING_TABLE)
        if table is None or table.shape[0] != len(self.timesteps):
            raise TfmqError(f"the temporal table of this text_time UNet needs {TIME_EMBEDDING_TABLE!r} with "
                            f"{len(self.timesteps)} rows (an artifact of another model?)")
        self.unet.time_proj = _StepIndexPassthrough()
        self.unet.time_embedding = TimeEmbeddingLookup(table)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def forward(
        self, sample: torch.Tensor, step_index: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``text_embeds``/``time_ids``: SDXL's added conditions (None: packed into the conditions,
        ``pack_added_conditions``, as calibration data carries them)."""
        if not self.is_conditional:
            return self._forward(sample, step_index, {})
        if encoder_hidden_states is None:
            raise TfmqError("this UNet is conditional: encoder_hidden_states is required")
        kwargs: dict[str, object] = {"encoder_hidden_states": encoder_hidden_states}
        if self.text_time:
            if text_embeds is None or time_ids is None:
                encoder_hidden_states, text_embeds, time_ids = unpack_added_conditions(
                    encoder_hidden_states, self.text_embeds_dim)
            kwargs = {"encoder_hidden_states": encoder_hidden_states,
                      "added_cond_kwargs": {"text_embeds": text_embeds, "time_ids": time_ids}}
        return self._forward(sample, step_index, kwargs)

    def _forward(self, sample: torch.Tensor, step_index: torch.Tensor, kwargs: dict[str, object]) -> torch.Tensor:
        step_index = step_index.to(sample.device)  # the sampling loop's rows are CPU tensors
        if self.declares_steps:  # per-step quantizers inside (tfmq's step factors), SDXL included
            with observing_steps(step_index):
                output = self.unet(sample, step_index, return_dict=False, **kwargs)[0]
        else:
            output = self.unet(sample, step_index, return_dict=False, **kwargs)[0]
        return output if self.output_correction is None else self.output_correction(output, step_index)


def build_table_unet(unet: nn.Module, timesteps: Sequence[float], share_weights: bool = False) -> TemporalTableUNet:
    """The full-precision table UNet for the given sampler timesteps (``share_weights``: see
    ``TemporalTableUNet``)."""
    return TemporalTableUNet(unet, compute_temporal_features(unet, timesteps), timesteps,
                             share_weights=share_weights)


__all__ = [
    "TIME_EMBEDDING_TABLE",
    "OutputCorrection",
    "TemporalBranch",
    "TemporalTableLookup",
    "TemporalTableUNet",
    "TimeEmbeddingLookup",
    "build_table_unet",
    "compute_temporal_features",
    "pack_added_conditions",
    "table_module_name",
    "timestep_tensor",
    "unpack_added_conditions",
]
