"""Peak memory per calibration stage, for the artifact's timings (docs/SCALING.md).

CPU: the process's peak resident set (``resource.getrusage``'s ``ru_maxrss``) when the stage ends.
It never decreases, so a stage's figure is the peak up to and including it: the stage where it
grows is the one that set it. CUDA: ``torch.cuda.max_memory_allocated`` of the stage alone (the
counter is reset when the stage starts).

Model copies: ``float_parameter_storages`` lists the storage behind every live float parameter,
so a test or a benchmark can count how many copies of a UNet's weights a run holds (the run
shares one set of float weights between the caller's UNet and its float references,
``device.shared_copy``; the simulation's quantized layers hold their own).
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
from collections.abc import Iterator

import torch

__all__ = ["float_parameter_storages", "peak_rss_mb", "stage_memory"]


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


def float_parameter_storages() -> dict[tuple[str, int], int]:
    """{(device, storage address): bytes} of every live floating-point ``nn.Parameter`` (found by the
    garbage collector), each storage once however many parameters view it."""
    found: dict[tuple[str, int], int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Parameter) and obj.is_floating_point():
            storage = obj.untyped_storage()
            found[(str(storage.device), storage.data_ptr())] = storage.nbytes()
    return found
