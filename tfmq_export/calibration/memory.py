"""Peak memory per calibration stage, for the artifact's timings (docs/SCALING.md).

CPU: the process's peak resident set (``resource.getrusage``'s ``ru_maxrss``) when the stage ends.
It never decreases, so a stage's figure is the peak up to and including it: the stage where it
grows is the one that set it. CUDA: ``torch.cuda.max_memory_allocated`` of the stage alone (the
counter is reset when the stage starts).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator

import torch

__all__ = ["peak_rss_mb", "stage_memory"]


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def stage_memory(record: dict[str, float], stage: str, device: torch.device) -> Iterator[None]:
    """Record ``peak_rss_mb_{stage}`` (and ``peak_cuda_mb_{stage}`` on a GPU) into ``record``."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        record[f"peak_rss_mb_{stage}"] = round(peak_rss_mb(), 1)
        if cuda:
            record[f"peak_cuda_mb_{stage}"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
