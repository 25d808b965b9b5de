"""Relative L2 error: the one definition every comparison in the project reports.

``rel_l2(value, reference) = ||value - reference||_2 / ||reference||_2``, computed in float64 so a
float32 output compared with a float32 reference does not lose digits in the sums. The reference
is always the second argument (torch FP32, the literal Q/DQ graph, the simulation). When the
reference is all zeros the ratio is 0 if the value is too, else infinite: never NaN.

``ErrorStats`` accumulates the same quantity (plus max |value - reference|) over many arrays,
e.g. all samples of one temporal-table row, without keeping them.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ErrorStats", "rel_l2"]


class ErrorStats:
    """Running sums for ``max |a - b|`` and ``||a - b|| / ||b||`` over several (a, b) pairs."""

    def __init__(self) -> None:
        self.count = 0
        self.max_abs = 0.0
        self.sq_diff = 0.0
        self.sq_ref = 0.0

    def add(self, value: ArrayLike, reference: ArrayLike) -> ErrorStats:
        """Add one pair (any shape, the same for both); returns ``self`` for chaining."""
        ref = np.asarray(reference, dtype=np.float64)
        diff = np.asarray(value, dtype=np.float64) - ref
        self.count += 1
        self.max_abs = max(self.max_abs, float(np.abs(diff).max()) if diff.size else 0.0)
        self.sq_diff += float(np.sum(diff * diff))
        self.sq_ref += float(np.sum(ref * ref))
        return self

    @property
    def rel_l2(self) -> float:
        """Relative L2 error over every pair added so far."""
        if self.sq_ref == 0.0:
            return 0.0 if self.sq_diff == 0.0 else math.inf
        return math.sqrt(self.sq_diff / self.sq_ref)


def rel_l2(value: ArrayLike, reference: ArrayLike) -> float:
    """``||value - reference|| / ||reference||`` in float64 (torch tensors: pass ``.numpy()``)."""
    return ErrorStats().add(value, reference).rel_l2
