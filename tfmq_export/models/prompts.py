"""Prompts -> UNet conditions, as diffusers' ``encode_prompt`` computes them.

Split in three so the torch pipeline (calibration) and the exported one (``sample DIR``) share
every step but the text encoder call itself:

1. ``tokenize``: padding to the tokenizer's ``model_max_length``, truncation with a warning;
2. ``encoder_outputs``: what a pipeline takes from one CLIP text encoder (SD: the last hidden
   state; SDXL: the penultimate hidden state, and the second encoder's projected pooled output);
3. ``combine``: per-encoder outputs -> the UNet's named conditions (SDXL: hidden states
   concatenated, ``text_embeds`` and ``time_ids`` added; zero negatives when no negative prompt).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tfmq_export.contract import (
    INPUT_CONDITIONS,
    INPUT_TEXT_EMBEDS,
    INPUT_TIME_IDS,
    TEXT_LAST_HIDDEN,
    TEXT_PENULTIMATE_HIDDEN,
    TEXT_POOLED,
)
from tfmq_export.errors import TfmqError
from tfmq_export.models.guidance import GuidedConditions
from tfmq_export.models.pipeline import PipelineParts, TextEncoderPair

__all__ = ["combine", "encode_guided", "encoder_outputs", "read_prompts", "tokenize", "xl_time_ids"]

log = logging.getLogger(__name__)


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file; an empty or binary file is refused."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TfmqError(f"cannot read --prompts {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise TfmqError(f"--prompts {path} is not a text file (one prompt per line, UTF-8)")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TfmqError(f"--prompts {path} holds no prompt (one prompt per line)")
    return prompts


def tokenize(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """int64 ids [N, model_max_length]; longer prompts are cut with a warning, as diffusers does.

    The warning is one logged line (diffusers logs its own with ``logger.warning`` too): no
    ``warnings`` source-line echo, the cut-off text ``repr``-quoted so it cannot break the line.
    """
    max_length = int(tokenizer.model_max_length)
    ids = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True).input_ids
    full = tokenizer(list(texts), padding="longest", verbose=False).input_ids  # no warning of its own: ours
    for text, row in zip(texts, full):
        if len(row) > max_length:
            removed = tokenizer.decode(row[max_length - 1 : -1])
            log.warning("warning: the prompt %r is longer than the tokenizer's %d tokens; this part was cut off: %r",
                        text[:40], max_length, removed)
    return np.asarray(ids, dtype=np.int64)


def encoder_outputs(pair: TextEncoderPair, input_ids: torch.Tensor, xl: bool) -> dict[str, torch.Tensor]:
    """What the pipeline takes from one text encoder (names as the exported stage outputs)."""
    out = pair.encoder(input_ids, output_hidden_states=xl)
    if not xl:
        return {TEXT_LAST_HIDDEN: out[0]}
    result = {TEXT_PENULTIMATE_HIDDEN: out.hidden_states[-2]}
    if pair.with_projection:
        result[TEXT_POOLED] = out.text_embeds
    return result


def xl_time_ids(parts: PipelineParts, unet_sample_size: int) -> torch.Tensor:
    """SDXL's ``add_time_ids`` [1, 6]: original size, crop (0, 0), target size, at the default size."""
    size = unet_sample_size * parts.vae_scale_factor()
    return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)


def combine(per_encoder: list[dict[str, torch.Tensor]], time_ids: torch.Tensor | None = None,
            zeros: bool = False) -> dict[str, torch.Tensor]:
    """The UNet's named conditions from each encoder's outputs (``zeros``: SDXL's zero negatives)."""
    if time_ids is None:  # SD 1.x / 2.x: one encoder
        (only,) = per_encoder
        return {INPUT_CONDITIONS: only[TEXT_LAST_HIDDEN]}
    hidden = torch.cat([out[TEXT_PENULTIMATE_HIDDEN] for out in per_encoder], dim=-1)
    pooled = per_encoder[-1][TEXT_POOLED]
    if zeros:
        hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
    return {INPUT_CONDITIONS: hidden, INPUT_TEXT_EMBEDS: pooled,
            INPUT_TIME_IDS: time_ids.expand(hidden.shape[0], -1).clone()}


@torch.no_grad()
def encode_guided(parts: PipelineParts, prompts: Sequence[str], negative_prompt: str | None,
                  guidance_scale: float, unet_sample_size: int) -> GuidedConditions:
    """Both halves' conditions for ``prompts`` with the folder's own tokenizers and text encoders."""
    negatives = [negative_prompt or ""] * len(prompts)
    xl = parts.is_xl
    time_ids = xl_time_ids(parts, unet_sample_size) if xl else None
    halves = []
    for texts in (list(prompts), negatives):
        outs = [encoder_outputs(pair, torch.from_numpy(tokenize(pair.tokenizer, texts)), xl)
                for pair in parts.text_encoders()]
        halves.append(outs)
    zero_negative = xl and negative_prompt is None and parts.force_zeros_for_empty_prompt()
    cond = combine(halves[0], time_ids)
    uncond = combine(halves[1], time_ids, zeros=zero_negative)
    return GuidedConditions(cond, uncond, float(guidance_scale), tuple(prompts), negative_prompt)
