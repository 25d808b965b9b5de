"""``--offload`` (GPU runs): the UNets stay in CPU memory, each top-level block visits the device
only while it runs, and the block being reconstructed stays there for its whole reconstruction.

An SD-1.5 UNet is 3.4 GB in float32 and a run holds two (the float weights, shared by the caller's
UNet and the float references, and the simulation's quantized layers; ``device.shared_copy``);
SDXL's are 10 GB each. With ``--offload`` a GPU holds one top-level block of one UNet at a time
(``conv_in``, ``down_blocks.i``, ``mid_block``, ``up_blocks.i``, ...), the calibration data, the
cached block inputs and targets, and the block being learned with its AdaRound variables and
Adam state (``BlockOffload.resident``), which no capture pass moves away.

The mechanism is diffusers' sequential CPU offload written out for this package (forward pre- and
post-hooks on the top-level blocks), with two differences that calibration needs:

- moves keep the CPU tensors: a block's parameters are put back by reference after it ran, so
  weights shared with the caller's UNet stay shared and are never copied back (nothing outside
  the resident block learns); buffers (activation statistics, written during a forward) are
  copied back;
- the hooks are placed at the first forward of the wrapped UNet, again at every forward for
  top-level modules swapped in since (qdiff's live temporal branch, quantized ``conv_in``), and a
  block left on the device by a capture pass that stopped inside it goes back at the next forward.

The run's pipeline opens ``offloading(device)``; the calibration code attaches its table UNets
(``attach``/``detach``) and keeps the block it learns on the device (``keep_resident``). Without
an open offload all three do nothing. A block's outputs stay on the device inside a UNet forward
(whose inputs the UNet's hook moved there); a block called directly with CPU inputs answers on
the CPU (qdiff computes its quantized table that way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from tfmq_export.device import module_device, to_device
from tfmq_export.temporal import TemporalTableUNet

__all__ = ["BlockOffload", "attach", "compute_device", "detach", "keep_resident", "offloading", "top_level_blocks"]

_ACTIVE: ContextVar[BlockOffload | None] = ContextVar("tfmq_offload", default=None)


def top_level_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's direct children, ``down_blocks`` / ``up_blocks`` (module lists) opened up; those
    without tensors (pass-throughs) left out."""
    found: list[nn.Module] = []
    for child in unet.children():
        found.extend(child.children() if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [child])
    return [m for m in found if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None]


def _first_device(value: Any) -> torch.device | None:
    """The device of the first tensor in ``value`` (tuples, lists, dicts searched in order)."""
    if torch.is_tensor(value):
        return value.device
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_device(item)
        if found is not None:
            return found
    return None


class BlockOffload:
    """Sequential offload of table UNets' top-level blocks to ``device`` (see the module docstring).

    Loading copies (``copy=True``) even when ``device`` is where the tensors already are, so the
    mechanism can be checked on a CPU-only machine (the pipeline refuses ``--offload`` there).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        #: unet -> (unet, its hook, {block: (block, its hooks)}); blocks are held so no id is reused
        self._roots: dict[int, tuple[nn.Module, Any, dict[int, tuple[nn.Module, list[Any]]]]] = {}
        self._loaded: dict[int, tuple[nn.Module, list[tuple[Any, ...]]]] = {}  # block -> (block, saved tensors)
        self._pinned: set[int] = set()
        self._callers: dict[int, torch.device | None] = {}

    # the UNets ------------------------------------------------------------------------------------

    def attach(self, unet: nn.Module) -> None:
        """Offload ``unet``'s top-level blocks from now on (it stays where it is until a block runs)."""
        if id(unet) in self._roots:
            return
        hook = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
        self._roots[id(unet)] = (unet, hook, {})
        self._hook_blocks(unet)

    def detach(self, unet: nn.Module) -> None:
        """Every block of ``unet`` back where it was, and no hooks left (before copying it)."""
        entry = self._roots.pop(id(unet), None)
        if entry is None:
            return
        self.evict_all()
        entry[1].remove()
        for _block, handles in entry[2].values():
            for handle in handles:
                handle.remove()

    def _hook_blocks(self, unet: nn.Module) -> None:
        blocks = self._roots[id(unet)][2]
        for block in top_level_blocks(unet):
            if id(block) not in blocks:
                blocks[id(block)] = (block, [block.register_forward_pre_hook(self._before_block, with_kwargs=True),
                                             block.register_forward_hook(self._after_block)])

    def _before_unet(self, unet: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.evict_all()  # a block a capture pass stopped inside is still on the device
        self._hook_blocks(unet)  # top-level modules swapped in since the last forward
        return to_device(args, self.device), to_device(kwargs, self.device)

    # one block ------------------------------------------------------------------------------------

    def _before_block(self, block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self._callers[id(block)] = _first_device((args, kwargs))
        self.load(block)
        return to_device(args, self.device), to_device(kwargs, self.device)

    def _after_block(self, block: nn.Module, _args: tuple, output: Any) -> Any:
        self.evict(block)
        caller = self._callers.pop(id(block), None)
        return output if caller is None or caller == self.device else to_device(output, caller)

    def _tensors(self, block: nn.Module) -> Iterator[tuple[nn.Module, str, bool]]:
        """(owner, name, is parameter) of every tensor of ``block`` outside resident modules."""
        stack = [block]
        while stack:
            module = stack.pop()
            if id(module) in self._pinned:
                continue
            yield from ((module, n, True) for n, p in module._parameters.items() if p is not None)
            yield from ((module, n, False) for n, b in module._buffers.items() if b is not None)
            stack.extend(m for m in module._modules.values() if m is not None)

    def load(self, block: nn.Module) -> None:
        """``block``'s tensors onto the device, its CPU tensors kept for ``evict``."""
        if id(block) in self._loaded:
            return
        saved: list[tuple[Any, ...]] = []
        seen: set[int] = set()
        for owner, name, is_param in self._tensors(block):
            tensor = owner._parameters[name] if is_param else owner._buffers[name]
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            moved = tensor.detach().to(self.device, copy=True)
            if is_param:
                saved.append((tensor, tensor.data))
                tensor.data = moved
            else:
                saved.append((owner, name, tensor))
                owner._buffers[name] = moved
        self._loaded[id(block)] = (block, saved)

    def evict(self, block: nn.Module) -> None:
        """``block`` back on its CPU tensors: parameters by reference (read-only outside the resident
        block), buffers with what the forward wrote into them."""
        entry = self._loaded.pop(id(block), None)
        if entry is None:
            return
        for item in entry[1]:
            if len(item) == 2:
                param, home = item
                param.data = home
                continue
            owner, name, home = item
            current = owner._buffers[name]
            if current is not None and current.shape == home.shape and current.dtype == home.dtype:
                home.copy_(current)
                owner._buffers[name] = home
            elif current is not None:  # replaced by one of another shape: take it as it is
                owner._buffers[name] = current.to(home.device)

    def evict_all(self) -> None:
        for block, _ in list(self._loaded.values()):
            self.evict(block)

    # the block being learned -------------------------------------------------------------------------

    @contextlib.contextmanager
    def resident(self, module: nn.Module) -> Iterator[None]:
        """``module`` on the device for the block (its AdaRound variables and Adam state are created
        there); capture passes leave it there; back to where it was after."""
        self.evict_all()
        home = module_device(module)
        module.to(self.device)
        self._pinned.add(id(module))
        try:
            yield
        finally:
            self._pinned.discard(id(module))
            module.to(home)


# the run's offload ------------------------------------------------------------------------------


@contextlib.contextmanager
def offloading(device: torch.device | None) -> Iterator[BlockOffload | None]:
    """Offload to ``device`` inside the block (None: no offload; ``attach`` and the rest do nothing)."""
    if device is None:
        yield None
        return
    offload = BlockOffload(device)
    token = _ACTIVE.set(offload)
    try:
        yield offload
    finally:
        for unet, *_ in list(offload._roots.values()):
            offload.detach(unet)
        _ACTIVE.reset(token)


def compute_device(default: torch.device) -> torch.device:
    """Where forwards compute: the offload's device when the run offloads, else ``default`` (the
    device of the modules, which then is where they compute)."""
    offload = _ACTIVE.get()
    return default if offload is None else offload.device


def attach(model: TemporalTableUNet) -> None:
    """Offload ``model``'s UNet when the run offloads."""
    offload = _ACTIVE.get()
    if offload is not None:
        offload.attach(model.unet)


def detach(model: TemporalTableUNet) -> None:
    """Undo ``attach`` (before ``model`` is copied: a copy must not carry the hooks)."""
    offload = _ACTIVE.get()
    if offload is not None:
        offload.detach(model.unet)


@contextlib.contextmanager
def keep_resident(model: TemporalTableUNet, name: str) -> Iterator[None]:
    """Module ``name`` of ``model``'s UNet on the device for the block, when the run offloads."""
    offload = _ACTIVE.get()
    if offload is None or id(model.unet) not in offload._roots:
        yield
        return
    with offload.resident(model.unet.get_submodule(name)):
        yield
