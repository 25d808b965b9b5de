"""Which sampler step each row of the batch belongs to, for per-step activation statistics.

FSC (finite set calibration) keeps activation ranges per timestep. The quantizers are deep
inside the UNet and do not see ``step_index``, so the calibration loop declares it around
each forward: ``with observing_steps(step_index): model(x, step_index)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_current_steps: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("tfmq_steps", default=None)


@contextlib.contextmanager
def observing_steps(step_index: torch.Tensor) -> Iterator[None]:
    """Declare the table row of every batch element for the forwards inside the block."""
    token = _current_steps.set(step_index.detach().long().reshape(-1))
    try:
        yield
    finally:
        _current_steps.reset(token)


def current_steps() -> torch.Tensor | None:
    """The step indices declared by the innermost ``observing_steps``, or None."""
    return _current_steps.get()


__all__ = ["current_steps", "observing_steps"]
