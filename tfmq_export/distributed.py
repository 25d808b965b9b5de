"""Data parallelism on ``torch.distributed``: rank and world, set-up from torchrun's environment,
the few collectives calibration and sampling use, rank-0-only writes and a settings agreement check.

Nothing here is home-made transport: ``torchrun`` (or ``tfmq-export calibrate --workers N``, which
calls torch's elastic launcher) starts the processes and sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; ``init_from_env`` opens the process group with
gloo on the CPU and NCCL on CUDA. Every helper is a no-op in a single process (no group, world 1),
so one-process runs compute exactly what they computed before this module existed.

Why every rank ends with the same state: ranks start from the same model (checked by
``check_agreement``), draw the same minibatch indices from the same seeded generators and apply
the same averaged gradients, so they stay in lockstep; only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch

from tfmq_export.errors import TfmqError

__all__ = [
    "all_gather_objects",
    "all_reduce_",
    "average_gradients",
    "barrier",
    "broadcast_object",
    "check_agreement",
    "init_from_env",
    "is_writer",
    "my_share",
    "rank",
    "rank_device",
    "run_on_writer",
    "world_size",
]

T = TypeVar("T")

#: seconds a collective waits for a missing rank before failing (torch's default is 30 minutes)
TIMEOUT_ENV = "TFMQ_DIST_TIMEOUT"


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _active() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return _dist().get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return _dist().get_rank() if _active() else 0


def is_writer() -> bool:
    """True on the one process that writes checkpoints, artifacts and reports (rank 0)."""
    return rank() == 0


def init_from_env(device: torch.device | str | None = None) -> int:
    """Join the process group torchrun describes in the environment; returns the world size.

    Without ``WORLD_SIZE`` > 1 (a plain run) nothing happens. The backend follows the device: NCCL
    for CUDA, gloo for the CPU. Calling it twice is harmless."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    dist = _dist()
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world_size()
    if not dist.is_available():
        raise TfmqError("WORLD_SIZE is set but this torch build has no torch.distributed; run one process")
    cuda = torch.device(device).type == "cuda" if device is not None else False
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    try:
        dist.init_process_group(backend=backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise TfmqError(f"cannot join the process group ({backend}): {str(exc).splitlines()[0]}") from exc
    return world_size()


def rank_device(device: torch.device) -> torch.device:
    """A plain ``cuda`` under several ranks means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if _active():
        _dist().barrier()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place over the ranks (``sum``, ``min``, ``max``); returns it."""
    if not _active():
        return tensor
    dist = _dist()
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    buffer = tensor.to(_comm_device())
    dist.all_reduce(buffer, op=ops[op])
    if buffer is not tensor:
        tensor.copy_(buffer)
    return tensor


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every gradient by its mean over the ranks, in one all-reduce (a missing gradient
    counts as zeros). Between ``backward`` and ``optimizer.step``; a no-op in one process."""
    if not _active():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_(flat, "sum")
    flat /= world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in one process."""
    if not _active():
        return [value]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, value)
    return out


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not _active():
        return value
    box = [value]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def my_share(items: Sequence[T]) -> list[T]:
    """This rank's items (round robin: rank r takes r, r + world, ...); all of them in one process."""
    return list(items[rank()::world_size()])


def run_on_writer(write: Callable[[], None]) -> None:
    """Run ``write`` on rank 0 only, then let every rank pass only after it finished; a failure on
    rank 0 stops every rank with rank 0's message (no rank waits forever on a barrier)."""
    error = None
    if is_writer():
        try:
            write()
        except Exception as exc:  # reported to every rank below, then raised here as well
            error = exc
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise TfmqError(f"rank 0 failed to write: {message}")


def _first_difference(mine: Any, theirs: Any, path: str = "") -> str | None:
    """The first key path where two JSON-like values differ (None when they agree)."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted(set(mine) | set(theirs), key=str):
            found = _first_difference(mine.get(key), theirs.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if json.dumps(mine, sort_keys=True, default=str) != json.dumps(theirs, sort_keys=True, default=str):
        return f"{path or 'value'} ({json.dumps(theirs, default=str)} on rank 0, {json.dumps(mine, default=str)}"
    return None


def check_agreement(what: dict[str, Any]) -> None:
    """Stop every rank with one line when any rank's ``what`` (settings, model fingerprint...)
    differs from rank 0's: data-parallel ranks must run the same command on the same model."""
    values = all_gather_objects(what)
    for other, value in enumerate(values[1:], start=1):
        found = _first_difference(value, values[0])
        if found is not None:
            raise TfmqError(f"ranks disagree on {found} on rank {other}); start every rank with the same command, "
                            "model and data")
