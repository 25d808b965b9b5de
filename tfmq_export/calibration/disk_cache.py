"""Block inputs and targets on disk, memory-mapped, when they exceed the memory budget.

``calibrate --cache-budget GB`` sets ``cache_mb`` and ``disk_cache``: a block whose cached inputs
or targets would exceed the budget is captured batch by batch into files under the run's work
folder (``torch.from_file(..., shared=True)``: an mmap), instead of into RAM chunks. The Adam loop
then draws its minibatches from all the data, as an unbounded cache would (the chunked RAM cache
spreads the iterations over chunks in turn), and the operating system keeps the hot pages.
RAM then holds one capture batch, the minibatch and the page cache the kernel can spare.

Tensors captured on a GPU are stored on the CPU side and a minibatch is moved back to the GPU
when it is indexed (``DeviceView``).
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DeviceView", "DiskSpill", "active_spill", "spill_to_disk"]

_ACTIVE: ContextVar[DiskSpill | None] = ContextVar("tfmq_disk_spill", default=None)


@dataclass
class DiskSpill:
    """Where spilled tensors go and above what size (bytes) a capture spills."""

    folder: Path
    budget_bytes: float
    _count: Iterator[int] = field(default_factory=itertools.count)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, nbytes: int) -> torch.Tensor:
        """A zero tensor of ``shape``: memory-mapped in a new file when ``nbytes`` exceeds the budget."""
        if nbytes <= self.budget_bytes:
            return torch.empty(shape, dtype=dtype)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{next(self._count):06d}.bin"
        numel = 1
        for size in shape:
            numel *= size
        return torch.from_file(str(path), shared=True, size=numel, dtype=dtype).view(shape)


def active_spill() -> DiskSpill | None:
    """The spill of the calibration in progress (None: everything in RAM, chunked)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def spill_to_disk(folder: Path | None, budget_bytes: float, enabled: bool = True) -> Iterator[None]:
    """Spill captures above ``budget_bytes`` into ``folder`` (a temporary one when None) for the
    duration of the block; the files are deleted after it."""
    if not enabled:
        yield
        return
    base = Path(tempfile.mkdtemp(prefix="tfmq-cache-")) if folder is None else Path(folder)
    token = _ACTIVE.set(DiskSpill(base, budget_bytes))
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        shutil.rmtree(base, ignore_errors=True)
        if folder is not None:  # the run's work folder goes too when nothing else is left in it
            with contextlib.suppress(OSError):
                base.parent.rmdir()


class DeviceView:
    """A CPU (memory-mapped) tensor whose indexed rows come back on ``device``."""

    def __init__(self, tensor: torch.Tensor, device: torch.device) -> None:
        self.tensor, self.device = tensor, device

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.tensor[index.cpu() if torch.is_tensor(index) else index].to(self.device)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def numel(self) -> int:
        return self.tensor.numel()
