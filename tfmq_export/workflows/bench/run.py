"""``bench_to_json``: one ``tfmq-export bench`` call end to end.

Plan the variants (``plan.py``), build the NNCF peer if asked (``backends.openvino.nncf``), time
everything in one round-robin run (``timing.py``, peak memory from ``memory.py``), write the JSON
(``report.py``).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError
from tfmq_export.io import check_writable
from tfmq_export.workflows.bench.plan import (
    GraphFacts,
    Variant,
    nothing_to_time,
    reference_variant,
    unique_labels,
    variants_for,
)
from tfmq_export.workflows.bench.report import bench_provenance, bench_verdict, write_json
from tfmq_export.workflows.bench.timing import run_bench

__all__ = ["bench_mode", "bench_to_json"]

log = logging.getLogger(__name__)

#: table rows of the torch-only bench (no graph to take them from), as ``calibrate`` defaults to
TORCH_ONLY_STEPS = 25


def _check_options(batches: list[int], iters: int, threads: int | None, latent_size: int | None, warmup: int,
                   sampling_runs: int, pause_ms: float) -> None:
    if iters < 1 or not batches or any(b < 1 for b in batches):
        raise TfmqError("--timed-calls and --batch-size must be positive")
    if warmup < 0 or sampling_runs < 0 or pause_ms < 0:
        raise TfmqError("--warmup, --sampling-runs and --pause-ms cannot be negative")
    if threads is not None and threads < 1:
        raise TfmqError(f"--threads must be positive, not {threads}")
    if latent_size is not None and latent_size < 1:
        raise TfmqError(f"--latent-size must be positive, not {latent_size}")


def _nncf_peer(facts: list[GraphFacts], num_onnx: int, nncf_engine: Path | None, nncf_samples: int,
               shape: tuple[int, ...], cond_shape: tuple[int, int] | None, seed: int, threads: int | None) -> Variant:
    """The NNCF INT8 variant, built (or reused) from the first FP32 ``--onnx`` graph."""
    from tfmq_export.backends.openvino.nncf import NNCF_PRECISION, ensure_nncf_engine

    fp32 = [f for f in facts[:num_onnx] if f.precision == "fp32"]
    if not fp32:
        raise TfmqError("--nncf quantizes the FP32 graph: pass it with --onnx (an export with --wbits 16)")
    xml = ensure_nncf_engine(fp32[0].path, nncf_engine, nncf_samples, shape[1], cond_shape, seed, threads)
    return Variant("openvino", NNCF_PRECISION, str(xml), timesteps=tuple(fp32[0].timesteps))


def bench_to_json(
    model: str,
    onnx_paths: list[Path],
    backends: str | list[str],
    batches: list[int],
    iters: int,
    threads: int | None,
    json_path: Path | None,
    measure_memory: bool = True,
    latent_size: int | None = None,
    *,
    variant_specs: list[str] | None = None,
    warmup: int = 2,
    sampling_runs: int = 0,
    pause_ms: float = 0.0,
    seed: int = 0,
    nncf: bool = False,
    nncf_engine: Path | None = None,
    nncf_samples: int = 4,
    progress: bool = True,
    device: str = "cpu",
    command: str | None = None,
    recipes: list[str] | None = None,
) -> dict[str, Any]:
    """Resolve the variants, build the NNCF peer if asked, time everything in one run, write JSON.
    ``device``: where the torch rows compute (cpu, cuda, cuda:N). ``command`` and ``recipes`` go into
    the report (default: the equivalent command line; recipes: not recorded in the graphs)."""
    from tfmq_export.device import resolve_device
    from tfmq_export.models.loading import check_fingerprint, load_model

    _check_options(batches, iters, threads, latent_size, warmup, sampling_runs, pause_ms)
    if json_path is not None:
        check_writable(json_path, "--json")
    variants, facts, skipped = variants_for(model, list(onnx_paths), backends, variant_specs)
    device = str(resolve_device(device))
    variants = [replace(v, device=device) if v.backend == "torch" else v for v in variants]
    if not variants and not nncf:
        raise nothing_to_time(skipped)
    loaded = load_model(model)
    for fingerprint, path in {f.fingerprint: f.path for f in facts}.items():  # one hash per distinct model
        check_fingerprint(fingerprint, loaded, str(path))
    cond_shape = (77, int(loaded.unet.config.cross_attention_dim)) if loaded.is_conditional else None
    if latent_size is not None:
        shape = (loaded.sample_shape[0], latent_size, latent_size)
    else:
        shape = next((tuple(f.sample_shape) for f in facts if f.sample_shape), loaded.sample_shape)
    scheduler_config = dict(loaded.scheduler_config)

    has_torch = any(v.backend == "torch" for v in variants)
    torch_model = loaded if has_torch else None
    del loaded  # the torch runner consumes it; otherwise it must not hold 3.4 GB (SD-1.5) during timing
    gc.collect()

    if nncf:
        peer = _nncf_peer(facts, len(onnx_paths), nncf_engine, nncf_samples, shape, cond_shape, seed, threads)
        variants = unique_labels([*variants, peer])
    for s in skipped:
        log.warning("skipping %s: %s", s["label"], s["reason"])

    schedule = None
    if facts:  # the graphs' own sampler and step count; rows mapped by timestep (an `all` table too)
        steps, scheduler = facts[0].steps or len(facts[0].timesteps), facts[0].scheduler_config
        schedule = {"scheduler": facts[0].scheduler or None, "table_timesteps": list(facts[0].timesteps)}
    else:  # torch alone: a 25-step DDIM table, as `calibrate` defaults to
        from tfmq_export.sampling import sampler_timesteps

        steps, scheduler = TORCH_ONLY_STEPS, scheduler_config
        timesteps = tuple(sampler_timesteps(scheduler, steps))
        variants = [replace(v, timesteps=timesteps) if v.backend == "torch" else v for v in variants]
    result = run_bench(variants, shape, steps, batches, iters=iters, warmup=warmup, threads=threads,
                       cond_shape=cond_shape, reference=reference_variant(variants), measure_memory=measure_memory,
                       progress=progress, sampling_runs=sampling_runs, scheduler_config=scheduler,
                       pause_ms=pause_ms, torch_model=torch_model, seed=seed, schedule=schedule)
    result["model"] = model
    result["skipped"] = skipped
    if command is None:
        command = " ".join(["tfmq-export bench", model, *[f"--onnx {p}" for p in onnx_paths],
                            *[f"--variant {v}" for v in variant_specs or []],
                            f"--backends {backends if isinstance(backends, str) else ','.join(backends)}",
                            *[f"--batch-size {b}" for b in batches], f"--timed-calls {iters}", f"--warmup {warmup}",
                            f"--sampling-runs {sampling_runs}", f"--seed {seed}", f"--device {device}",
                            *([f"--threads {threads}"] if threads else []), *(["--nncf"] if nncf else []),
                            *([f"--json {json_path}"] if json_path is not None else [])])
    result["provenance"] = bench_provenance(result, command, recipes)
    result["verdict"] = bench_verdict(result)
    if json_path is not None:
        write_json(result, Path(json_path))
    return result


def bench_mode(model: str, pipelines: Any, backends: str | None, batches: Any, unet_only: dict[str, Any], *,
               cli: bool) -> tuple[bool, str]:
    """``(is a pipeline bench, backends to time)`` for ``bench MODEL``, shared by the command and the API.

    A pipeline folder as MODEL, or any ``pipelines`` (``--onnx-pipeline``), asks for a pipeline
    bench (default backends ``onnxruntime``; else ``torch,onnxruntime``); then the bare-UNet options
    given in ``unet_only`` (API names: ``onnx``, ``variant``, ...) and a batch other than 1 are
    refused in one line, naming them as the caller spells them (``cli``: ``--sampling-runs``).
    """
    from tfmq_export.workflows.sample_pipeline import is_pipeline_dir

    def name(option: str) -> str:
        return f"--{option.replace('_', '-')}" if cli else option

    if not (pipelines or is_pipeline_dir(Path(model))):
        return False, "torch,onnxruntime" if backends is None else backends
    given = [name(option) for option, value in unet_only.items() if value]
    if given:
        folders = "--onnx-pipeline folders" if cli else "pipeline folders"
        raise TfmqError(f"{', '.join(given)} time a bare UNet; a pipeline bench takes {folders}")
    if list(batches) != [1]:
        raise TfmqError(f"a pipeline bench takes {name('num_images')} N, not {name('batch_size')}")
    return True, "onnxruntime" if backends is None else backends
