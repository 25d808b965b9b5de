"""Side-by-side UNet timing: several backends and precisions measured in one run, round-robin.

Variants are timed round-robin (each round calls every (batch, variant) pair once), so machine
drift hits all of them alike; compare them as ratios from the same run. A short pause between
calls (``pause_ms``) lets one backend's worker threads stop spinning before the next backend
starts: onnxruntime's and OpenMP's pools busy-wait after a call, and on a 2-core machine that
steals the next variant's cores. Full DDIM sampling runs (``sampling_runs``) take turns step by
step. Peak memory is measured per variant in a fresh subprocess (``memory.py``).
"""

from __future__ import annotations

import gc
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tfmq_export.backends.base import Runner
from tfmq_export.errors import TfmqError
from tfmq_export.workflows.bench.memory import peak_memory_mb
from tfmq_export.workflows.bench.plan import Variant, bench_inputs, variant_runner
from tfmq_export.workflows.bench.report import Timings, machine_info, run_row

if TYPE_CHECKING:
    import torch

__all__ = ["QUIET_TOLERANCE", "quiet_rounds", "run_bench", "sample_lockstep"]

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


def _pause(ms: float) -> float:
    """Sleep ``ms`` milliseconds; returns the seconds actually slept."""
    if ms <= 0:
        return 0.0
    start = time.perf_counter()
    time.sleep(ms / 1000.0)
    return time.perf_counter() - start


class _FanOut:
    """A denoiser over a stacked batch: chunk k (``batch`` samples) goes to runner k, in turn.

    Each runner's own UNet calls are timed; pauses between them are counted apart so that they
    can be left out of the sampling time.
    """

    def __init__(self, runners: list[Runner], batch: int, pause_ms: float) -> None:
        self.runners = runners
        self.batch = batch
        self.pause_ms = pause_ms
        self.seconds = [0.0] * len(runners)
        self.paused = 0.0

    def __call__(self, x: torch.Tensor, step_index: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        import torch

        outs = []
        for k, runner in enumerate(self.runners):
            part = slice(k * self.batch, (k + 1) * self.batch)
            self.paused += _pause(self.pause_ms)
            start = time.perf_counter()
            ehs = None if cond is None else cond[part].numpy()
            noise = runner.infer(x[part].numpy(), step_index[part].numpy(), ehs)
            outs.append(torch.from_numpy(noise))
            self.seconds[k] += time.perf_counter() - start
        return torch.cat(outs)


def sample_lockstep(runners: list[Runner], scheduler_config: dict[str, Any], num_steps: int, latents: np.ndarray,
                    cond: np.ndarray | None, pause_ms: float, schedule: dict[str, Any] | None = None,
                    ) -> list[tuple[float, np.ndarray]]:
    """Full DDIM sampling with every runner, the runners taking turns step by step.

    One ``sampling.ddim_sample`` over the runners' latents stacked along the batch, with a
    denoiser that fans each step out to the runners (the DDIM update is elementwise, so each
    runner's x_0 is what sampling it alone gives). Each runner's time is the sum of its own UNet
    calls plus an equal share of the scheduler's updates, so a load spike on the machine costs
    every variant about the same instead of whichever was sampling then (a 10-step run of a slow
    variant lasts many seconds). ``schedule``: ``ddim_sample``'s ``scheduler`` and
    ``table_timesteps`` (the graphs' sampler and rows; default: DDIM on a sampler table).
    Returns (seconds, x_0) per runner.
    """
    import torch

    from tfmq_export.sampling import ddim_sample

    n, batch = len(runners), latents.shape[0]
    x_t = torch.from_numpy(np.concatenate([latents] * n))
    conds = None if cond is None else torch.from_numpy(np.concatenate([cond] * n))
    fan = _FanOut(runners, batch, pause_ms)
    start = time.perf_counter()
    final = ddim_sample(fan, scheduler_config, num_steps, x_t, conds, **(schedule or {})).numpy()
    shared = max(time.perf_counter() - start - fan.paused - sum(fan.seconds), 0.0) / n
    return [(fan.seconds[k] + shared, final[k * batch : (k + 1) * batch]) for k in range(n)]


def _check(variants: list[Variant], batches: list[int], iters: int, warmup: int, sampling_runs: int,
           scheduler_config: dict[str, Any] | None, reference: str | None) -> None:
    if iters < 1 or warmup < 0 or sampling_runs < 0 or any(b < 1 for b in batches):
        raise TfmqError("iters and batch sizes must be positive, warmup and sampling runs not negative")
    if sampling_runs and scheduler_config is None:
        raise TfmqError("sampling runs need the sampler's scheduler config")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise TfmqError(f"variant labels must be unique, got {names}")
    if reference is not None and reference not in names:
        raise TfmqError(f"reference {reference!r} is not one of the variants {names}")


def _open_runners(variants: list[Variant], threads: int | None, torch_model: Any, progress: bool,
                  runners: list[Runner]) -> dict[str, float]:
    """Activate every variant's runner into ``runners``; returns the load seconds per variant."""
    from tqdm.auto import tqdm

    load_seconds: dict[str, float] = {}
    for variant in tqdm(variants, desc="loading variants", disable=not progress, leave=False):
        start = time.perf_counter()
        runner = variant_runner(variant, threads, torch_model if variant.backend == "torch" else None)
        runner.activate()
        runners.append(runner)
        load_seconds[variant.name] = time.perf_counter() - start
    return load_seconds


def _warm_up(variants: list[Variant], runners: list[Runner], inputs: dict[int, tuple], acc: dict,
             warmup: int) -> None:
    """``warmup`` calls (at least one: it keeps the output the relative error is measured on)."""
    for batch, feed in inputs.items():
        for variant, runner in zip(variants, runners):
            for _ in range(max(warmup, 1)):
                acc[variant.name, batch].output = runner.infer(*feed)


def _round_robin(variants: list[Variant], runners: list[Runner], inputs: dict[int, tuple], acc: dict,
                 iters: int, pause_ms: float, progress: bool) -> None:
    """``iters`` rounds of one call per (batch, variant) pair."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(iters), desc="UNet calls", disable=not progress, leave=False):
        for batch, feed in inputs.items():
            for variant, runner in zip(variants, runners):
                _pause(pause_ms)
                runner.infer(*feed)
                acc[variant.name, batch].calls_ms.append(runner.last_inference_ms)


def _sampling_runs(variants: list[Variant], runners: list[Runner], inputs: dict[int, tuple], acc: dict,
                   runs: int, scheduler_config: dict[str, Any], num_steps: int, pause_ms: float,
                   progress: bool, schedule: dict[str, Any] | None) -> None:
    """``runs`` full DDIM samplings per batch, the variants taking turns step by step."""
    from tqdm.auto import tqdm

    for _ in tqdm(range(runs), desc="sampling", disable=not progress, leave=False):
        for batch, (sample, _, cond) in inputs.items():
            results = sample_lockstep(runners, scheduler_config, num_steps, sample, cond, pause_ms, schedule)
            for variant, (seconds, final) in zip(variants, results):
                acc[variant.name, batch].sampling_s.append(seconds)
                acc[variant.name, batch].final = final


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
    schedule: dict[str, Any] | None = None,
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
    ``schedule`` (``scheduler``, ``table_timesteps``) maps the sampler's calls to table rows.
    """
    from tqdm.auto import tqdm

    _check(variants, batches, iters, warmup, sampling_runs, scheduler_config, reference)
    load_avg_start = list(os.getloadavg())
    runs: list[dict[str, Any]] = []
    runners: list[Runner] = []
    try:
        load_seconds = _open_runners(variants, threads, torch_model, progress, runners)
        inputs = {b: bench_inputs(sample_shape, b, cond_shape, seed) for b in batches}
        acc = {(v.name, b): Timings() for v in variants for b in batches}
        _warm_up(variants, runners, inputs, acc, warmup)
        load_before = os.getloadavg()[0]
        # 1. UNet calls: every (batch, variant) once per round, so a load change hits all of them
        _round_robin(variants, runners, inputs, acc, iters, pause_ms, progress)
        # 2. full sampling runs, the variants taking turns step by step
        _sampling_runs(variants, runners, inputs, acc, sampling_runs, scheduler_config or {}, num_steps, pause_ms,
                       progress, schedule)
        # the 1-minute load average around the timing: other jobs on the machine show here
        load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        pairs = [(v.name, b) for b in batches for v in variants]
        quiet = quiet_rounds(np.array([[acc[p].calls_ms[r] for p in pairs] for r in range(iters)]))
        for batch in batches:
            ref = acc[reference, batch] if reference else None
            for variant, runner in zip(variants, runners):
                ms = np.asarray(acc[variant.name, batch].calls_ms)
                row = run_row(variant, runner.model_bytes(), batch, acc[variant.name, batch], ref, num_steps, iters,
                              warmup, load_seconds[variant.name])
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
