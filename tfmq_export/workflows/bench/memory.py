"""Peak memory of one bench variant, measured in a fresh process.

A process's peak RSS never goes down, so it cannot be read per variant inside the process that
timed them all: each variant is loaded and run twice in its own ``python -c`` child, which prints
its peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from tfmq_export.errors import TfmqError
from tfmq_export.workflows.bench.plan import Variant, bench_inputs, variant_runner

__all__ = ["memory_probe_main", "peak_memory_mb"]


def peak_memory_mb(variant: Variant, sample_shape: tuple[int, ...], batch: int,
                   cond_shape: tuple[int, int] | None, threads: int | None) -> float:
    """Peak RSS (MB) of a fresh process that loads the variant and runs it twice."""
    payload = json.dumps({"variant": asdict(variant), "sample_shape": list(sample_shape), "batch": batch,
                          "cond_shape": None if cond_shape is None else list(cond_shape), "threads": threads})
    return run_memory_probe("tfmq_export.workflows.bench.memory", "memory_probe_main", payload, variant.name, 1800)


def run_memory_probe(module: str, function: str, payload: str, label: str, timeout: int) -> float:
    """Run ``module.function(payload)`` in a fresh Python process and return the peak RSS (MB) it prints last.

    A fresh process is the only way to see one variant's peak alone; its last stdout line is the figure.
    """
    code = f"import sys; from {module} import {function} as probe; probe(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TfmqError(f"memory probe for {label} failed: {last}")
    return float(proc.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak RSS in MB.

    ``VmHWM`` of /proc/self/status where there is one: ``getrusage``'s ``ru_maxrss`` survives
    ``execve`` on Linux, so a probe forked from a 20 GB bench process would report 20 GB.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def memory_probe_main(payload: str) -> None:
    """The child's side of ``peak_memory_mb``: load, run twice, print the peak RSS in MB."""
    args = json.loads(payload)
    spec = args["variant"]
    variant = Variant(**{**spec, "timesteps": tuple(spec.get("timesteps", ()))})
    cond = None if args["cond_shape"] is None else tuple(args["cond_shape"])
    inputs = bench_inputs(tuple(args["sample_shape"]), args["batch"], cond)
    with variant_runner(variant, args["threads"]) as runner:
        runner.infer(*inputs)
        runner.infer(*inputs)
    print(_peak_rss_mb())
