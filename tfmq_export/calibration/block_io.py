"""Block inputs and targets for reconstruction: which blocks, in which order, and their cached I/O.

1. blocks: the adapter's reconstruction blocks (``Block``), sorted by execution order;
2. capture: a block's call arguments in the quantized simulation, and its output in the
   full-precision reference, with hooks that stop the forward at the block (``capture_inputs``,
   ``capture_outputs``);
3. target cache: full-precision block outputs for several consecutive blocks per FP pass
   (``TargetCache``, at most ``cache_mb``), since targets do not depend on anything learned.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tfmq_export.calibration.data import CalibrationData
from tfmq_export.calibration.disk_cache import DeviceView, DiskSpill, active_spill
from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.quant.steps import observing_steps
from tfmq_export.temporal import TemporalTableUNet

__all__ = [
    "Block",
    "CapturedCalls",
    "TargetCache",
    "adapter_blocks",
    "capture_inputs",
    "capture_outputs",
    "execution_order",
    "forward_declared",
    "subset",
    "uniform_subset",
]

# 1. blocks and their order -----------------------------------------------------------------------


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


def forward_declared(model: TemporalTableUNet, x: torch.Tensor, step: torch.Tensor,
                     cond: torch.Tensor | None) -> None:
    """One forward of ``model`` with the table rows declared (per-step quantizers need them)."""
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
        def fn(_module: nn.Module, _args: tuple) -> None:
            if calls[name] == 0:
                order.append(name)
            calls[name] += 1

        return fn

    try:
        for block in blocks:
            handles.append(model.unet.get_submodule(block.name).register_forward_pre_hook(hook(block.name)))
        x, step, cond = next(data.batches(1))
        forward_declared(model, x, step, cond)
    finally:
        for handle in handles:
            handle.remove()
    bad = {name: n for name, n in calls.items() if n != 1}
    if bad:
        raise TfmqError(f"reconstruction blocks must run exactly once per UNet call; call counts {bad}")
    by_name = {b.name: b for b in blocks}
    return [by_name[name] for name in order]


# 2. caching block inputs and targets -------------------------------------------------------------


@dataclass
class CapturedCalls:
    """The arguments of many calls of one block, with the batch-shaped tensors concatenated.

    ``args`` / ``kwargs`` hold ``_Slot(i)`` where a batched tensor was, constants elsewhere.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tensors: list[torch.Tensor]
    device: torch.device | None = None  # set when ``tensors`` live on the CPU side (disk_cache) for this device

    def __len__(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def select(self, index: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        def fill(value: Any) -> Any:
            if not isinstance(value, _Slot):
                return value
            if self.device is None:
                return self.tensors[value.index][index]
            return self.tensors[value.index][index.cpu()].to(self.device)

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
    spill = active_spill()
    if spill is not None:  # --cache-budget: stream into (memory-mapped) storage, batch by batch
        return _capture_inputs_streamed(model, name, list(batches), spill)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((args, dict(kwargs)))
        raise _StopForward

    handle = model.unet.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True)
    sizes = _run_to_block(model, name, batches, handle)
    return _collate(calls, sizes, name)


@torch.no_grad()
def capture_outputs(model: TemporalTableUNet, name: str, batches: Iterable[tuple]) -> torch.Tensor:
    """The output of block ``name`` in ``model``, concatenated over the batches."""
    spill = active_spill()
    if spill is not None:
        return _capture_outputs_streamed(model, name, list(batches), spill)
    outputs: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
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
                forward_declared(model, x, step, cond)
            except _StopForward:
                continue
            raise TfmqError(f"block {name} was not called by the UNet")
    finally:
        handle.remove()
    return sizes


def _destination(spill: DiskSpill, value: torch.Tensor, total: int) -> torch.Tensor:
    shape = (total, *value.shape[1:])
    return spill.empty(shape, value.dtype, total * value[0].numel() * value.element_size())


@torch.no_grad()
def _capture_inputs_streamed(model: TemporalTableUNet, name: str, batches: list[tuple],
                             spill: DiskSpill) -> CapturedCalls:
    """``capture_inputs`` writing every call into storage sized for all of them (memory-mapped
    above the budget), so at most one batch of arguments is held at a time."""
    total = sum(b[0].shape[0] for b in batches)
    state: dict[str, Any] = {"offset": 0, "captured": None}

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        n = batches[state["calls"]][0].shape[0]
        flat = [("a", i, v) for i, v in enumerate(args)] + [("k", k, v) for k, v in kwargs.items()]
        if state["captured"] is None:  # the first call decides which values are batched
            slots: dict[tuple[str, Any], Any] = {}
            tensors: list[torch.Tensor] = []
            device = None
            for kind, key, value in flat:
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
                    slots[(kind, key)] = _Slot(len(tensors))
                    tensors.append(_destination(spill, value, total))
                    device = value.device
                else:
                    slots[(kind, key)] = value
            args_out = tuple(slots[("a", i)] for i in range(len(args)))
            state["captured"] = CapturedCalls(args_out, {k: slots[("k", k)] for k in kwargs}, tensors,
                                              None if device is None or device.type == "cpu" else device)
        captured: CapturedCalls = state["captured"]
        values = list(captured.args) + list(captured.kwargs.values())
        for (_kind, key, value), slot in zip(flat, values):
            if isinstance(slot, _Slot):
                captured.tensors[slot.index][state["offset"] : state["offset"] + n] = value.detach().cpu() \
                    if captured.device is not None else value.detach()
            elif not _same_constant(value, slot):
                raise TfmqError(f"{name}: call argument {key!r} is neither batched nor constant; cannot cache it")
        state["offset"] += n
        raise _StopForward

    _run_streamed(model, name, batches, state, model.unet.get_submodule(name).register_forward_pre_hook(
        hook, with_kwargs=True))
    return state["captured"]


@torch.no_grad()
def _capture_outputs_streamed(model: TemporalTableUNet, name: str, batches: list[tuple],
                              spill: DiskSpill) -> torch.Tensor | DeviceView:
    """``capture_outputs`` into storage for all of them (memory-mapped above the budget)."""
    total = sum(b[0].shape[0] for b in batches)
    state: dict[str, Any] = {"offset": 0, "captured": None}

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        if not torch.is_tensor(output):
            raise TfmqError(f"block {name} returns {type(output).__name__}; reconstruction needs one tensor")
        if state["captured"] is None:
            state["captured"] = _destination(spill, output, total)
            state["device"] = output.device
        n = output.shape[0]
        state["captured"][state["offset"] : state["offset"] + n] = output.detach().to(state["captured"].device)
        state["offset"] += n
        raise _StopForward

    _run_streamed(model, name, batches, state, model.unet.get_submodule(name).register_forward_hook(hook))
    if state["device"].type != "cpu" and state["captured"].device.type == "cpu":
        return DeviceView(state["captured"], state["device"])
    return state["captured"]


def _run_streamed(model: TemporalTableUNet, name: str, batches: list[tuple], state: dict[str, Any],
                  handle: Any) -> None:
    """``_run_to_block`` that tells the hook which batch it sees (``state["calls"]``)."""
    state["calls"] = 0
    try:
        for x, step, cond in batches:
            try:
                forward_declared(model, x, step, cond)
            except _StopForward:
                state["calls"] += 1
                continue
            raise TfmqError(f"block {name} was not called by the UNet")
    finally:
        handle.remove()


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
                    lambda _m, _a, out, name=name: sizes.__setitem__(name, out.numel() * out.element_size()))
                for name in self.names
            ]
            try:
                forward_declared(self.fp_ref, *next(self.data.batches(1)))
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
            def fn(_module: nn.Module, _args: tuple, output: Any) -> None:
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
                    forward_declared(self.fp_ref, x, step, cond)
        finally:
            for handle in handles:
                handle.remove()
        self.cache = {n: torch.cat(v) for n, v in outputs.items()}
        return self.cache[name]


def subset(data: CalibrationData, index: torch.Tensor) -> CalibrationData:
    """The calibration inputs at ``index`` (any order)."""
    return data.select(index)


def uniform_subset(data: CalibrationData, total: int, seed: int, pairs: bool = False) -> CalibrationData:
    """About ``total`` inputs, the same number from every step (``total`` 0 = everything); ``pairs``:
    whole guidance pairs (``CalibrationData.per_step_pairs``) where the data has them."""
    if total <= 0 or total >= len(data):
        return data
    per_step = max(1, math.ceil(total / len(data.timesteps)))
    if pairs and data.paired:
        return data.per_step_pairs(per_step, seed)
    return data.per_step_subset(per_step, seed)
