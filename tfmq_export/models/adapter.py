"""Model adapter for diffusers UNets: where the temporal branch, the quantizable layers and the
reconstruction blocks are.

Algorithms never inspect architectures themselves (no ``hasattr(block, 'attn1')`` in a
calibrator); they ask the adapter. The Temporal Information Block (TIB) of TFMQ-DM is
``time_proj`` + ``time_embedding`` + every ResBlock's ``nonlinearity -> time_emb_proj``: its
output depends on the timestep alone, so the exporter turns it into a per-step table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tfmq_export.errors import TfmqError

#: Kept in full precision, as in the paper's released code: the first and the output conv.
DEFAULT_KEEP_FP: tuple[str, ...] = ("conv_in", "conv_out")

#: Kept in full precision inside the temporal branch, as in the papers' released code: the first
#: time-embedding Linear (TFMQ-DM's TIAR and Q-Diffusion's baseline both leave it FP).
TIB_KEEP_FP: tuple[str, ...] = ("time_embedding.linear_1",)

#: Module classes that form one reconstruction block (BRECQ granularity).
_BLOCK_CLASSES = ("ResnetBlock2D", "Attention", "BasicTransformerBlock", "Downsample2D", "Upsample2D")


@dataclass(frozen=True)
class TemporalProjection:
    """One ResBlock's time projection g_i: SiLU -> Linear applied to the time embedding."""

    resnet_name: str
    resnet: nn.Module

    @property
    def proj_name(self) -> str:
        return f"{self.resnet_name}.time_emb_proj"


@dataclass(frozen=True)
class ReconstructionBlock:
    """A block reconstructed as a unit, and the quantized layers inside it."""

    name: str
    module: nn.Module
    layer_names: tuple[str, ...]


class UNetAdapter:
    """Finds the TIB, quantizable Conv2d/Linear layers and reconstruction blocks of a UNet."""

    def __init__(self, unet: nn.Module, keep_fp: tuple[str, ...] = DEFAULT_KEEP_FP) -> None:
        self.unet = unet
        self.keep_fp = keep_fp
        self._check_supported()

    # 1. checks
    def _check_supported(self) -> None:
        cfg = self.unet.config
        name = type(self.unet).__name__
        if name not in ("UNet2DModel", "UNet2DConditionModel"):
            raise TfmqError(f"unsupported UNet class {name}")
        for key in ("class_embed_type", "addition_embed_type", "time_embedding_act_fn", "time_cond_proj_dim"):
            if key == "addition_embed_type" and self.has_text_time:
                continue  # SDXL: the added conditioning stays a graph input, h(t) alone becomes the table
            if getattr(cfg, key, None) is not None:
                raise TfmqError(
                    f"{name} with {key}={getattr(cfg, key)!r}: the time embedding then depends on more than the "
                    "timestep, so it cannot become a per-step table; this model is not supported"
                )
        if getattr(cfg, "num_class_embeds", None):
            raise TfmqError(f"{name} with class embeddings is not supported (the temporal table depends on t only)")
        for rname, resnet in self.temporal_projections_raw():
            norm = getattr(resnet, "time_embedding_norm", "default")
            if norm not in ("default", "scale_shift"):
                raise TfmqError(f"{rname}: time_embedding_norm={norm!r} is not supported")

    @property
    def has_text_time(self) -> bool:
        """SDXL's ``text_time`` added conditioning (pooled text embeddings + size/crop time ids)."""
        return getattr(self.unet.config, "addition_embed_type", None) == "text_time"

    @property
    def text_embeds_dim(self) -> int:
        """Width of SDXL's pooled ``text_embeds`` input (0 without ``text_time``)."""
        if not self.has_text_time:
            return 0
        cfg = self.unet.config
        return int(cfg.projection_class_embeddings_input_dim) - 6 * int(cfg.addition_time_embed_dim)

    def temporal_projections_raw(self) -> list[tuple[str, nn.Module]]:
        return [
            (name, module)
            for name, module in self.unet.named_modules()
            if type(module).__name__ == "ResnetBlock2D" and getattr(module, "time_emb_proj", None) is not None
        ]

    # 2. the temporal information block
    def temporal_projections(self) -> list[TemporalProjection]:
        """Every ResBlock with a time projection, in execution order."""
        return [TemporalProjection(name, module) for name, module in self.temporal_projections_raw()]

    def tib_linear_names(self) -> list[str]:
        """Linear layers inside the TIB, the ones TIAR reconstructs. SDXL: the time MLP's only; the
        ResBlocks' ``time_emb_proj`` see h(t) + aug(text_embeds, time_ids), so they are no part of
        the table and stay float layers of the graph (for every method)."""
        return [
            name
            for name, module in self.unet.named_modules()
            if isinstance(module, nn.Linear) and self._in_tib(name)
            and not (self.has_text_time and name.endswith(".time_emb_proj"))
        ]

    def tib_quantized_names(self) -> list[str]:
        """The TIB's Linear layers that methods quantizing the temporal branch quantize (all but
        ``TIB_KEEP_FP``)."""
        return [name for name in self.tib_linear_names() if name not in TIB_KEEP_FP]

    def _in_tib(self, name: str) -> bool:
        return name.startswith("time_embedding.") or name.endswith(".time_emb_proj") or name.startswith("time_proj")

    # 3. quantizable layers
    def quantizable_layers(self) -> dict[str, nn.Module]:
        """Conv2d/Linear layers outside the TIB and outside ``keep_fp``, in definition order."""
        layers: dict[str, nn.Module] = {}
        for name, module in self.unet.named_modules():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            if self._in_tib(name) or name.startswith("add_embedding.") or any(
                    fnmatch.fnmatch(name, pat) for pat in self.keep_fp):
                continue
            layers[name] = module
        return layers

    # 4. reconstruction blocks
    def reconstruction_blocks(self) -> list[ReconstructionBlock]:
        """ResBlocks, attention / transformer blocks and up/down samplers as blocks; every other
        quantized layer as a block of its own. Order follows the module tree, so blocks nearer
        the input come first (their outputs feed the later ones)."""
        layers = self.quantizable_layers()
        claimed: set[str] = set()
        blocks: list[ReconstructionBlock] = []
        for name, module in self.unet.named_modules():
            if type(module).__name__ not in _BLOCK_CLASSES:
                continue
            if any(name.startswith(b.name + ".") for b in blocks):
                continue  # nested inside a block already listed (e.g. Attention inside a transformer block)
            inner = tuple(n for n in layers if n.startswith(name + ".") and n not in claimed)
            if not inner:
                continue
            claimed.update(inner)
            blocks.append(ReconstructionBlock(name, module, inner))
        for name, module in layers.items():
            if name not in claimed:
                blocks.append(ReconstructionBlock(name, module, (name,)))
        order = {name: i for i, (name, _) in enumerate(self.unet.named_modules())}
        blocks.sort(key=lambda b: order[b.name])
        return blocks


    # 5. concatenated skip inputs
    @torch.no_grad()
    def concat_skip_splits(self, run: Callable[[], Any]) -> dict[str, int]:
        """{up-block ResBlock: channel where its skip half starts}, read while ``run()`` calls the UNet once.

        diffusers' up blocks feed ResBlock i with ``cat([h, res_hidden_states_tuple[-1 - i]], dim=1)``,
        so the skip half starts at ``in_channels - skip channels`` (Q-Diffusion's shortcut splitting
        quantizes the two halves with separate scales).
        """
        splits: dict[str, int] = {}
        handles = []

        def hook(index: int):
            def fn(module: nn.Module, args: tuple, kwargs: dict) -> None:
                skips = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
                for i, resnet in enumerate(module.resnets):
                    splits[f"up_blocks.{index}.resnets.{i}"] = int(resnet.in_channels - skips[-1 - i].shape[1])

            return fn

        try:
            for index, block in enumerate(getattr(self.unet, "up_blocks", [])):
                if getattr(block, "resnets", None) is not None:
                    handles.append(block.register_forward_pre_hook(hook(index), with_kwargs=True))
            run()
        finally:
            for handle in handles:
                handle.remove()
        return splits


def get_submodule_parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule called ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    return parent, attr


def replace_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, attr = get_submodule_parent(root, name)
    setattr(parent, attr, new)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "DEFAULT_KEEP_FP",
    "TIB_KEEP_FP",
    "ReconstructionBlock",
    "TemporalProjection",
    "UNetAdapter",
    "count_parameters",
    "replace_submodule",
]

