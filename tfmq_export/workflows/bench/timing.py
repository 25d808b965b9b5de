"""Side-by-side UNet benchmarks: several backends and precisions measured in one run.

Variants are timed round-robin (each round calls every (batch, variant) pair once), so machine
drift hits all of them alike; compare them as ratios from the same run. A short pause between calls (``pause_ms``)
lets one backend's worker threads stop spinning before the next backend starts: onnxruntime's and
OpenMP's pools busy-wait after a call, and on a 2-core machine that steals the next variant's
cores. Full DDIM sampling runs (``sampling_runs``) take turns step by step. Peak memory is measured
per variant in a fresh subprocess (a process's peak RSS never goes down, so it cannot be read per
variant inside one process). JSON follows the CONTRACT in ARCHITECTURE.md, with extra fields.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner
from tfmq_export.errors import TfmqError

__all__ = [
    "BACKENDS", "Variant", "bench_inputs", "machine_info", "make_runner", "peak_memory_mb", "quiet_rounds", "run_bench",
    "write_json",
]

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


@dataclass(frozen=True)
class Variant:
    """One thing to time: a backend running a model file (or the torch model) at a precision.

    ``timesteps`` are the sampler's timesteps (rows of the temporal table); the torch variant
    builds its table from them so that it computes what the exported graphs compute at the same
    ``step_index``. ``target`` is the export target of the graph (``tensorrt``/``onnxruntime``).
    """

    backend: str
    precision: str
    path: str  # .onnx / .xml / .plan, or a MODEL name for torch
    label: str = ""
    timesteps: tuple[int, ...] = ()
    target: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.backend}:{self.precision}"


def make_runner(variant: Variant, threads: int | None, model: Any = None) -> Runner:
    """Instantiate the runner of a variant (backends import lazily).

    ``model`` is an already loaded ``LoadedModel`` for the torch variant, which the runner then
    consumes: its UNet becomes the table UNet in place (no copy: SD-1.5 is 3.4 GB in FP32). By
    default the torch variant loads ``variant.path``.
    """
    if variant.backend == "onnxruntime":
        from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(variant.path, variant.precision, threads=threads)
    if variant.backend == "openvino":
        from tfmq_export.backends.openvino.runner import OpenVINORunner

        return OpenVINORunner(variant.path, variant.precision, threads=threads)
    if variant.backend == "tensorrt":
        from tfmq_export.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner(variant.path, variant.precision)
    if variant.backend == "torch":
        from tfmq_export.backends.torch.runner import TorchRunner
        from tfmq_export.models.loading import load_model
        from tfmq_export.sampling import sampler_timesteps
        from tfmq_export.temporal import TemporalTableUNet, compute_temporal_features

        loaded = model if model is not None else load_model(variant.path)
        timesteps = list(variant.timesteps) or sampler_timesteps(loaded.scheduler_config, 10)
        tables = compute_temporal_features(loaded.unet, timesteps)
        table_unet = TemporalTableUNet(loaded.unet, tables, timesteps, copy_unet=False)
        return TorchRunner(table_unet, variant.precision, threads=threads)
    raise TfmqError(f"unknown backend {variant.backend!r} (choose {', '.join(BACKENDS)})")


def bench_inputs(sample_shape: tuple[int, ...], batch: int, cond_shape: tuple[int, int] | None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Seeded UNet inputs: x ~ N(0, 1) (what the sampler starts from), step 0, a random condition."""
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, *sample_shape), dtype=np.float32)
    step = np.zeros(batch, dtype=np.int64)
    cond = None if cond_shape is None else rng.standard_normal((batch, *cond_shape), dtype=np.float32)
    return sample, step, cond


def _versions() -> dict[str, str]:
    """Installed versions of the runtimes (from package metadata: nothing is imported)."""
    from importlib import metadata

    versions = {}
    for name in ("torch", "onnxruntime", "openvino", "nncf", "tensorrt"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_info(threads: int | None) -> dict[str, Any]:
    """What a CPU timing depends on: the CPU and its int8 ISA, cores, threads, load, versions."""
    from tfmq_export.io import machine_info as engine_machine_info

    info = engine_machine_info()
    return {**info, "cores": info["cpu_count"], "threads": threads, "load_avg": list(os.getloadavg()),
            **_versions()}


def peak_memory_mb(variant: Variant, sample_shape: tuple[int, ...], batch: int,
                   cond_shape: tuple[int, int] | None, threads: int | None) -> float:
    """Peak RSS (MB) of a fresh process that loads the variant and runs it twice."""
    payload = json.dumps({"variant": asdict(variant), "sample_shape": list(sample_shape), "batch": batch,
                          "cond_shape": None if cond_shape is None else list(cond_shape), "threads": threads})
    code = "import sys; from tfmq_export.workflows.bench.timing import _memory_probe; _memory_probe(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise TfmqError(f"memory probe for {variant.name} failed: {last}")
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


def _memory_probe(payload: str) -> None:
    args = json.loads(payload)
    spec = args["variant"]
    variant = Variant(**{**spec, "timesteps": tuple(spec.get("timesteps", ()))})
    cond = None if args["cond_shape"] is None else tuple(args["cond_shape"])
    inputs = bench_inputs(tuple(args["sample_shape"]), args["batch"], cond)
    with make_runner(variant, args["threads"]) as runner:
        runner.infer(*inputs)
        runner.infer(*inputs)
    print(_peak_rss_mb())


@dataclass
class _Timings:
    """What one variant accumulates at one batch size."""

    calls_ms: list[float] = field(default_factory=list)
    sampling_s: list[float] = field(default_factory=list)
    output: np.ndarray | None = None
    final: np.ndarray | None = None


#: a round counts as quiet when its typical call is at most this much slower than the pairs' fastest
QUIET_TOLERANCE = 1.15


def quiet_rounds(times_ms: np.ndarray, tolerance: float = QUIET_TOLERANCE) -> np.ndarray:
    """Mask of the rounds that other jobs on the machine did not slow down.

    ``times_ms`` is [rounds, pairs]: one call of every (batch, variant) pair per round. A round's
    slowdown is the median over pairs of (its time / that pair's fastest time); another job
    starting on a shared machine slows every pair of the rounds it overlaps, so such rounds stand
    out as a whole, while one variant's own jitter does not move the median. The rule never looks
    at a single variant, so it cannot favour one.
    """
    slowdown = np.median(times_ms / times_ms.min(axis=0, keepdims=True), axis=1)
    return slowdown <= tolerance


def _rel_error(out: np.ndarray | None, ref: np.ndarray | None) -> float | None:
    if out is None or ref is None:
        return None
    out64, ref64 = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), 1e-30))


def _pause(ms: float) -> None:
    if ms > 0:
        time.sleep(ms / 1000.0)


def _sample_lockstep(runners: list[Runner], scheduler_config: dict[str, Any], num_steps: int, latents: np.ndarray,
                     cond: np.ndarray | None, pause_ms: float) -> list[tuple[float, np.ndarray]]:
    """Full DDIM sampling with every runner, the runners taking turns step by step.

    Each runner's time is the sum of its own steps (UNet call + scheduler update), so a load spike
    on the machine costs every variant about the same instead of whichever was sampling then (a
    10-step run of a slow variant lasts many seconds). The math is ``sampling.ddim_sample``'s:
    DDIMScheduler, eta 0, ``step_index`` = the row of the temporal table. Returns (seconds, x_0).
    """
    import torch

    from tfmq_export.sampling import make_scheduler

    schedulers = [make_scheduler(scheduler_config, num_steps) for _ in runners]
    xs = [torch.from_numpy(latents.copy()) for _ in runners]
    seconds = [0.0] * len(runners)
    batch = latents.shape[0]
    for i, t in enumerate(schedulers[0].timesteps):
        step_index = np.full(batch, i, dtype=np.int64)
        for k, (runner, scheduler) in enumerate(zip(runners, schedulers)):
            _pause(pause_ms)
            start = time.perf_counter()
            noise = runner.infer(xs[k].numpy(), step_index, cond)
            xs[k] = scheduler.step(torch.from_numpy(noise), t, xs[k], eta=0.0).prev_sample
            seconds[k] += time.perf_counter() - start
    return [(sec, x.numpy()) for sec, x in zip(seconds, xs)]


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
    *,
    sampling_runs: int = 0,
    scheduler_config: dict[str, Any] | None = None,
    pause_ms: float = 0.0,
    torch_model: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time every variant at every batch size, round-robin; returns the CONTRACT JSON dict.

    One round calls every (batch, variant) pair once; ``iters`` rounds follow ``warmup`` calls
    of each pair. Ratios between variants are meaningful within one run; on a shared machine check
    ``load_avg_1min_before_after`` (other jobs distort multi-threaded kernels unevenly) and
    ``latency_ms_median_quiet``: the median over the rounds ``quiet_rounds`` kept (every call is
    also listed, in round order, in ``latency_ms_all``).

    Per run: UNet latency per call (median, p90, mean, min), ``images_per_s`` and its basis, peak
    memory, ``model_bytes`` and, when ``reference`` names a variant, ``rel_error_vs_reference``:
    the relative L2 error of the UNet output against that variant on the same inputs (0 for the
    reference itself). With ``sampling_runs`` > 0 (needs ``scheduler_config``), every variant
    also runs full ``num_steps``-step DDIM sampling that many times, step by step in turns, and
    ``images_per_s`` is measured as batch / median sampling time; otherwise it is derived as
    batch / (num_steps x median UNet latency), the scheduler's own work being negligible next
    to the UNet's. ``torch_model`` is a loaded model for the torch variant (not loaded again).
    """
    from tqdm.auto import tqdm

    if iters < 1 or warmup < 0 or sampling_runs < 0 or any(b < 1 for b in batches):
        raise TfmqError("iters and batch sizes must be positive, warmup and sampling runs not negative")
    if sampling_runs and scheduler_config is None:
        raise TfmqError("sampling runs need the sampler's scheduler config")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise TfmqError(f"variant labels must be unique, got {names}")
    if reference is not None and reference not in names:
        raise TfmqError(f"reference {reference!r} is not one of the variants {names}")

    load_avg_start = list(os.getloadavg())
    runs: list[dict[str, Any]] = []
    runners: list[Runner] = []
    load_seconds: dict[str, float] = {}
    try:
        for variant in tqdm(variants, desc="loading variants", disable=not progress, leave=False):
            start = time.perf_counter()
            runner = make_runner(variant, threads, torch_model if variant.backend == "torch" else None)
            runner.activate()
            runners.append(runner)
            load_seconds[variant.name] = time.perf_counter() - start
        inputs = {b: bench_inputs(sample_shape, b, cond_shape, seed) for b in batches}
        acc = {(v.name, b): _Timings() for v in variants for b in batches}
        for batch in batches:
            for variant, runner in zip(variants, runners):
                for _ in range(max(warmup, 1)):
                    acc[variant.name, batch].output = runner.infer(*inputs[batch])
        load_before = os.getloadavg()[0]
        # 1. UNet calls: every (batch, variant) once per round, so a load change hits all of them
        for _ in tqdm(range(iters), desc="UNet calls", disable=not progress, leave=False):
            for batch in batches:
                for variant, runner in zip(variants, runners):
                    _pause(pause_ms)
                    runner.infer(*inputs[batch])
                    acc[variant.name, batch].calls_ms.append(runner.last_inference_ms)
        # 2. full sampling runs, the variants taking turns step by step
        for _ in tqdm(range(sampling_runs), desc="sampling", disable=not progress, leave=False):
            for batch in batches:
                sample, _, cond = inputs[batch]
                results = _sample_lockstep(runners, scheduler_config or {}, num_steps, sample, cond, pause_ms)
                for variant, (seconds, final) in zip(variants, results):
                    acc[variant.name, batch].sampling_s.append(seconds)
                    acc[variant.name, batch].final = final
        # the 1-minute load average around the timing: other jobs on the machine show here
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        pairs = [(v.name, b) for b in batches for v in variants]
        quiet = quiet_rounds(np.array([[acc[p].calls_ms[r] for p in pairs] for r in range(iters)]))
        for batch in batches:
            ref = acc[reference, batch] if reference else None
            for variant, runner in zip(variants, runners):
                row = _row(variant, runner, batch, acc[variant.name, batch], ref, num_steps, iters, warmup,
                           load_seconds[variant.name])
                ms = np.asarray(acc[variant.name, batch].calls_ms)
                row.update({
                    "load_avg_1min_before_after": load,
                    "quiet_rounds": int(quiet.sum()),
                    "latency_ms_median_quiet": float(np.median(ms[quiet])) if quiet.any() else None,
                    "latency_ms_all": [round(float(t), 2) for t in ms],
                })
                runs.append(row)
    finally:
        for runner in runners:
            runner.deactivate()
        # the torch runner keeps its weights after deactivate: drop every runner before the probes
        runners.clear()
        gc.collect()
    load_avg_end = list(os.getloadavg())
    if measure_memory:
        by_name = {v.name: v for v in variants}
        for row in tqdm(runs, desc="peak memory", disable=not progress, leave=False):
            row["peak_mem_mb"] = peak_memory_mb(by_name[row["label"]], sample_shape, row["batch"], cond_shape,
                                                threads)
    machine = {**machine_info(threads), "load_avg_start": load_avg_start, "load_avg_end": load_avg_end}
    return {"runs": runs, "machine": machine, "reference": reference, "sample_shape": list(sample_shape),
            "settings": {"iters": iters, "warmup": warmup, "sampling_runs": sampling_runs, "pause_ms": pause_ms,
                         "num_steps": num_steps, "batches": list(batches), "seed": seed},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _row(variant: Variant, runner: Runner, batch: int, acc: _Timings, ref: _Timings | None, num_steps: int,
         iters: int, warmup: int, load_s: float) -> dict[str, Any]:
    """One CONTRACT run row (plus extra fields) from a variant's timings at one batch size."""
    ms = np.asarray(acc.calls_ms)
    median = float(np.median(ms))
    derived = batch / (num_steps * median / 1000.0)
    row: dict[str, Any] = {
        "backend": variant.backend,
        "precision": variant.precision,
        "label": variant.name,
        "batch": batch,
        "latency_ms_median": median,
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_min": float(ms.min()),
        "images_per_s": derived,
        "images_per_s_basis": f"derived: batch / ({num_steps} steps x median UNet latency)",
        "images_per_s_derived": derived,
        "sampling_steps": num_steps,
        "peak_mem_mb": None,
        "model_bytes": runner.model_bytes(),
        "iters": iters,
        "warmup": warmup,
        "load_s": round(load_s, 3),
        "path": variant.path,
        "target": variant.target or None,
    }
    if acc.sampling_s:
        sampling = float(np.median(acc.sampling_s))
        row.update({
            "sampling_s_median": sampling,
            "sampling_s_all": [round(s, 4) for s in acc.sampling_s],
            "images_per_s": batch / sampling,
            "images_per_s_basis": f"measured: batch / median full DDIM sampling time ({num_steps} steps)",
        })
    if ref is not None:
        row["rel_error_vs_reference"] = _rel_error(acc.output, ref.output)
        if acc.final is not None:
            row["sampling_rel_error_vs_reference"] = _rel_error(acc.final, ref.final)
    return row


def write_json(result: dict[str, Any], path: Path) -> None:
    """Write the bench JSON atomically (a crashed run leaves the previous file whole)."""
    from tfmq_export.io import atomic_write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(result, indent=2) + "\n")
