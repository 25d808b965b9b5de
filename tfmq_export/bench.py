"""Side-by-side UNet benchmarks: several backends and precisions measured in one run.

Variants are timed round-robin (one call of each in turn, repeated), so machine drift hits all
of them alike; compare them as ratios from the same run. Peak memory is measured per variant in
a fresh subprocess (a process's peak RSS never goes down, so it cannot be read per variant
inside one process). JSON follows the CONTRACT in ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.errors import TfmqError
from tfmq_export.runtimes.base import Runner

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class Variant:
    """One thing to time: a backend running a model file (or the torch model) at a precision."""

    backend: str
    precision: str
    path: str  # .onnx / .xml / .plan, or a MODEL name for torch
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.backend}:{self.precision}"


def make_runner(variant: Variant, threads: int | None) -> Runner:
    """Instantiate the runner of a variant (backends import lazily)."""
    if variant.backend == "onnxruntime":
        from tfmq_export.runtimes.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(variant.path, variant.precision, threads=threads)
    if variant.backend == "openvino":
        from tfmq_export.runtimes.openvino_runner import OpenVINORunner

        return OpenVINORunner(variant.path, variant.precision, threads=threads)
    if variant.backend == "tensorrt":
        from tfmq_export.runtimes.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(variant.path, variant.precision)
    if variant.backend == "torch":
        from tfmq_export.models.loading import load_model
        from tfmq_export.runtimes.torch_runner import TorchRunner
        from tfmq_export.sampling import sampler_timesteps
        from tfmq_export.temporal import build_table_unet

        model = load_model(variant.path)
        table = build_table_unet(model.unet, sampler_timesteps(model.scheduler_config, 10))
        return TorchRunner(table, variant.precision, threads=threads)
    raise TfmqError(f"unknown backend {variant.backend!r} (choose {', '.join(BACKENDS)})")


def bench_inputs(sample_shape: tuple[int, ...], batch: int, cond_shape: tuple[int, int] | None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, *sample_shape), dtype=np.float32)
    step = np.zeros(batch, dtype=np.int64)
    cond = None if cond_shape is None else rng.standard_normal((batch, *cond_shape), dtype=np.float32)
    return sample, step, cond


def machine_info(threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "platform": platform.platform()}


def peak_memory_mb(variant: Variant, sample_shape, batch: int, cond_shape, threads: int | None) -> float:
    """Peak RSS of a fresh process that loads the variant and runs it twice."""
    payload = json.dumps({"variant": variant.__dict__, "sample_shape": list(sample_shape), "batch": batch,
                          "cond_shape": None if cond_shape is None else list(cond_shape), "threads": threads})
    code = "import sys; from tfmq_export.bench import _memory_probe; _memory_probe(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise TfmqError(f"memory probe for {variant.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _memory_probe(payload: str) -> None:
    import resource

    args = json.loads(payload)
    variant = Variant(**args["variant"])
    cond = None if args["cond_shape"] is None else tuple(args["cond_shape"])
    inputs = bench_inputs(tuple(args["sample_shape"]), args["batch"], cond)
    with make_runner(variant, args["threads"]) as runner:
        runner.infer(*inputs)
        runner.infer(*inputs)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def run_bench(
    variants: list[Variant],
    sample_shape: tuple[int, ...],
    num_steps: int,
    batches: list[int],
    iters: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    cond_shape: tuple[int, int] | None = None,
    reference: str | None = None,
    measure_memory: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every variant at every batch size, round-robin; returns the CONTRACT JSON dict.

    ``images_per_s`` is batch / (num_steps x median UNet latency): a full sampling run spends
    its time in the UNet calls (the scheduler update is negligible next to them). When
    ``reference`` names a variant, every run also reports its output's relative L2 error
    against that variant on the same inputs.
    """
    from tqdm.auto import tqdm

    runs: list[dict[str, Any]] = []
    runners = [make_runner(v, threads) for v in variants]
    for runner in runners:
        runner.activate()
    try:
        for batch in batches:
            inputs = bench_inputs(sample_shape, batch, cond_shape)
            outputs = {}
            for variant, runner in zip(variants, runners):
                for _ in range(warmup):
                    outputs[variant.name] = runner.infer(*inputs)
            times: dict[str, list[float]] = {v.name: [] for v in variants}
            for _ in tqdm(range(iters), desc=f"bench batch {batch}", disable=not progress, leave=False):
                for variant, runner in zip(variants, runners):
                    runner.infer(*inputs)
                    times[variant.name].append(runner.last_inference_ms)
            ref = outputs.get(reference) if reference else None
            for variant, runner in zip(variants, runners):
                ms = np.asarray(times[variant.name])
                median = float(np.median(ms))
                row: dict[str, Any] = {
                    "backend": variant.backend,
                    "precision": variant.precision,
                    "label": variant.name,
                    "batch": batch,
                    "latency_ms_median": median,
                    "latency_ms_p90": float(np.percentile(ms, 90)),
                    "images_per_s": batch / (num_steps * median / 1000.0),
                    "sampling_steps": num_steps,
                    "peak_mem_mb": None,
                    "model_bytes": runner.model_bytes(),
                    "iters": iters,
                }
                if ref is not None:
                    out = outputs[variant.name]
                    row["rel_error_vs_reference"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
                runs.append(row)
    finally:
        for runner in runners:
            runner.deactivate()
    if measure_memory:
        for row, variant in zip(runs, [v for _ in batches for v in variants]):
            row["peak_mem_mb"] = peak_memory_mb(variant, sample_shape, row["batch"], cond_shape, threads)
    return {"runs": runs, "machine": machine_info(threads), "reference": reference,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
