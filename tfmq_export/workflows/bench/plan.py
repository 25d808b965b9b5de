"""``tfmq-export bench``: turn the command line into variants, build the NNCF peer, write the JSON.

Variants come from three places:

* ``--backends``: ``torch`` runs MODEL in FP32 (the reference for the relative error), and every
  ``--onnx`` graph runs on each ONNX backend listed (onnxruntime, openvino);
* ``--variant BACKEND=FILE``: one backend on one file: an exported ``.onnx``, an OpenVINO IR
  ``.xml`` or a TensorRT ``.plan`` (precision and timesteps from the manifest beside engines);
* ``--nncf``: the peer a CPU user would reach for, NNCF's INT8 quantization of the FP32 graph, run
  on OpenVINO (``precision`` ``nncf-int8``). Its calibration inputs are the same kind of data
  ours were calibrated on: (x_t, step, condition) at every step of full-precision DDIM
  trajectories, with ``calibrate``'s noise (``initial_noise(n, shape, seed)``) and, for a
  conditional UNet, conditions ``torch.randn(n, 77, D)`` seeded like the ones
  ``benchmarks/sd15_cpu.py`` calibrates with, so both methods see the same inputs.

TensorRT variants run only where TensorRT and a CUDA GPU are present; elsewhere they are skipped
with the reason logged and listed under ``skipped`` in the JSON.
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.errors import TfmqError
from tfmq_export.workflows.bench.timing import BACKENDS, Variant, run_bench, write_json

__all__ = [
    "bench_to_json", "ensure_nncf_engine", "format_row", "nncf_calibration_inputs", "parse_variant", "variants_for",
]

log = logging.getLogger(__name__)

ONNX_BACKENDS = ("onnxruntime", "openvino")
_SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml"), "tensorrt": (".plan", ".engine")}


@dataclass
class GraphFacts:
    """What the bench needs to know about a model file: precision and the sampler it was built for."""

    path: Path
    precision: str
    timesteps: list[int]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    target: str


def _facts_from_metadata(path: Path, meta: dict[str, str], precision: str | None = None) -> GraphFacts:
    from tfmq_export.contract import precision_label

    try:
        return GraphFacts(
            path=path,
            precision=precision or precision_label(int(meta["tfmq.wbits"]), int(meta["tfmq.abits"])),
            timesteps=json.loads(meta["tfmq.timesteps"]),
            scheduler_config=json.loads(meta["tfmq.scheduler_config"]),
            sample_shape=tuple(json.loads(meta["tfmq.sample_shape"])) if "tfmq.sample_shape" in meta else None,
            target=meta.get("tfmq.target", ""),
        )
    except (KeyError, ValueError) as exc:
        raise TfmqError(f"{path} lacks tfmq.* metadata ({exc}); pass files written by tfmq-export") from exc


def describe_model_file(path: Path) -> GraphFacts:
    """Facts of an exported ``.onnx`` (its metadata) or an engine (the manifest beside it)."""
    from tfmq_export.backends.manifest import manifest_path
    from tfmq_export.export.onnx_export import describe_onnx

    path = Path(path)
    if not path.is_file():
        raise TfmqError(f"{path} does not exist")
    manifest_file = manifest_path(path)
    if path.suffix == ".onnx" and not manifest_file.is_file():
        info = describe_onnx(path)
        return GraphFacts(path, info.precision, info.timesteps, info.scheduler_config, info.sample_shape,
                          info.target)
    if not manifest_file.is_file():
        raise TfmqError(f"{path} has no manifest ({manifest_file.name}); build it with `tfmq-export build-engine`")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read {manifest_file}: {exc}") from exc
    return _facts_from_metadata(path, manifest.get("source_metadata", {}), manifest.get("precision"))


def parse_variant(spec: str) -> tuple[str, Path]:
    """``BACKEND=FILE`` -> (backend, path), refusing unknown backends and foreign file types."""
    backend, sep, file = spec.partition("=")
    backend = backend.strip()
    if not sep or not file:
        raise TfmqError(f"--variant {spec!r} must be BACKEND=FILE, e.g. openvino=engines/unet.xml")
    if backend not in _SUFFIXES:
        raise TfmqError(f"--variant {spec!r}: unknown backend {backend!r} (choose {', '.join(_SUFFIXES)})")
    path = Path(file)
    if path.suffix not in _SUFFIXES[backend]:
        raise TfmqError(f"--variant {spec!r}: {backend} runs {' or '.join(_SUFFIXES[backend])} files")
    return backend, path


def _split_backends(backends: str | list[str]) -> list[str]:
    names = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else list(backends)
    names = [b for b in names if b]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise TfmqError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return names


def _unique_labels(variants: list[Variant]) -> list[Variant]:
    """``backend:precision``; only where that repeats, refined by export target, then by file name."""
    from dataclasses import replace

    keys = (lambda i, v: f"{v.backend}:{v.precision}",
            lambda i, v: f"{v.backend}:{v.precision}:{v.target or Path(v.path).stem}",
            lambda i, v: f"{v.backend}:{v.precision}:{v.path}",
            lambda i, v: f"{v.backend}:{v.precision}:{i}")
    labels = [v.label or keys[0](i, v) for i, v in enumerate(variants)]
    for key in keys[1:]:
        clashing = {n for n in labels if labels.count(n) > 1}
        if not clashing:
            break
        labels = [key(i, v) if n in clashing and not v.label else n for i, (v, n) in enumerate(zip(variants, labels))]
    return [replace(v, label=n) for v, n in zip(variants, labels)]


def variants_for(
    model: str,
    onnx_paths: list[Path],
    backends: str | list[str],
    variant_specs: list[str] | None = None,
    extra: list[Variant] | None = None,
) -> tuple[list[Variant], list[GraphFacts], list[dict[str, str]]]:
    """(variants to time, facts of every file, skipped variants with their reason).

    torch FP32 of MODEL (if asked) + every ONNX graph on every ONNX backend asked for + each
    ``--variant`` + ``extra`` (the NNCF peer). Every file must come from the same sampler schedule
    (same temporal-table timesteps), so the outputs are comparable at the same ``step_index``.
    """
    names = _split_backends(backends)
    facts = [describe_model_file(Path(p)) for p in onnx_paths]
    for f in facts:
        if f.path.suffix != ".onnx":
            raise TfmqError(f"--onnx {f.path} is not an .onnx file; pass engines with --variant BACKEND=FILE")
    planned: list[tuple[str, GraphFacts]] = [(b, f) for b in names if b in ONNX_BACKENDS for f in facts]
    for spec in variant_specs or []:
        backend, path = parse_variant(spec)
        info = describe_model_file(path)
        facts.append(info)
        planned.append((backend, info))
    skipped: list[dict[str, str]] = []
    if "tensorrt" in names and not any(b == "tensorrt" for b, _ in planned):
        skipped.append({"label": "tensorrt", "backend": "tensorrt", "path": "",
                        "reason": "TensorRT runs built plans: pass --variant tensorrt=FILE.plan"})
    if any(b == "tensorrt" for b, _ in planned):
        from tfmq_export.backends.tensorrt.build import check_tensorrt_available

        reason = check_tensorrt_available()
        if reason is not None:
            for b, f in planned:
                if b == "tensorrt":
                    skipped.append({"label": f"tensorrt:{f.precision}", "backend": "tensorrt", "path": str(f.path),
                                    "reason": reason})
            planned = [(b, f) for b, f in planned if b != "tensorrt"]

    timesteps = {tuple(f.timesteps) for f in facts}
    if len(timesteps) > 1:
        raise TfmqError("the files come from different sampler schedules (tfmq.timesteps differ); "
                        "export them from artifacts calibrated with the same --steps")
    steps = tuple(facts[0].timesteps) if facts else ()
    variants: list[Variant] = []
    if "torch" in names:
        variants.append(Variant("torch", "fp32", model, timesteps=steps))
    # an FP32 graph has no Q/DQ: its export target changes nothing
    variants += [Variant(b, f.precision, str(f.path), timesteps=steps, target="" if f.precision == "fp32" else f.target)
                 for b, f in planned]
    variants += list(extra or [])
    if not variants:
        raise TfmqError("nothing to time: pass --onnx/--variant files, --nncf, or include torch in --backends")
    return _unique_labels(variants), facts, skipped


# --- the NNCF peer ---------------------------------------------------------------------------------


def nncf_calibration_inputs(
    fp32_onnx: Path,
    trajectories: int,
    sample_shape: tuple[int, ...],
    cond_shape: tuple[int, int] | None,
    seed: int = 0,
    threads: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Feed dicts (batch 1) of every step of ``trajectories`` FP32 DDIM runs of ``fp32_onnx``.

    The same draw as our calibration: noise ``initial_noise(n, shape, seed)`` (as ``calibrate``),
    conditions ``torch.randn(n, S, D)`` seeded with ``seed`` (as ``benchmarks/sd15_cpu.py``), the
    graph's own schedule. So NNCF sees the distribution our scales were calibrated on.
    """
    import torch

    from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
    from tfmq_export.backends.torch.runner import runner_denoiser
    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.sampling import ddim_sample, initial_noise

    if trajectories < 1:
        raise TfmqError("--nncf-samples must be at least 1")
    info = describe_onnx(fp32_onnx)
    latents = initial_noise(trajectories, sample_shape, seed)
    cond = None
    if cond_shape is not None:
        cond = torch.randn(trajectories, *cond_shape, generator=torch.Generator().manual_seed(seed))
    items: list[dict[str, np.ndarray]] = []

    def keep(step: int, x: torch.Tensor, c: torch.Tensor | None) -> None:
        for i in range(x.shape[0]):
            item = {"sample": x[i : i + 1].numpy().copy(), "step_index": np.array([step], dtype=np.int64)}
            if c is not None:
                item["encoder_hidden_states"] = c[i : i + 1].numpy().copy()
            items.append(item)

    with OnnxRuntimeRunner(fp32_onnx, "fp32", threads=threads) as runner:
        ddim_sample(runner_denoiser(runner), info.scheduler_config, len(info.timesteps), latents, cond, on_step=keep)
    return items


def default_nncf_path(fp32_onnx: Path) -> Path:
    return Path(fp32_onnx).with_name(f"{Path(fp32_onnx).stem}.nncf-int8.xml")


def ensure_nncf_engine(
    fp32_onnx: Path,
    out_xml: Path | None,
    trajectories: int,
    latent_size: int | None = None,
    cond_shape: tuple[int, int] | None = (77, 768),
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """The NNCF INT8 IR of ``fp32_onnx``: reused when its recorded recipe matches, else built.

    The recipe (source graph hash, trajectories, latent shape, condition shape, seed) is written
    beside the IR as ``*.nncf.json``; any difference rebuilds, so a stale peer is never timed.
    """
    from tfmq_export.backends.manifest import manifest_path
    from tfmq_export.backends.openvino.build import quantize_with_nncf
    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.io import sha256_file

    info = describe_onnx(Path(fp32_onnx))
    if info.precision != "fp32":
        raise TfmqError(f"--nncf quantizes the FP32 graph, but {fp32_onnx} is {info.precision}")
    out = Path(out_xml) if out_xml is not None else default_nncf_path(fp32_onnx)
    shape = tuple(info.sample_shape)
    if latent_size is not None:
        shape = (shape[0], latent_size, latent_size)
    recipe = {"source_onnx_sha256": sha256_file(fp32_onnx), "trajectories": trajectories, "sample_shape": list(shape),
              "cond_shape": None if cond_shape is None or not info.conditional else list(cond_shape), "seed": seed}
    recipe_file = out.with_suffix(".nncf.json")
    if manifest_path(out).is_file() and out.with_suffix(".bin").is_file() and recipe_file.is_file():
        try:
            if json.loads(recipe_file.read_text()) == recipe:
                log.info("reusing the NNCF peer %s (same recipe)", out)
                return out
        except (OSError, json.JSONDecodeError):
            pass
    log.info("building the NNCF peer %s from %s", out, fp32_onnx)
    inputs = nncf_calibration_inputs(Path(fp32_onnx), trajectories, shape,
                                     tuple(cond_shape) if recipe["cond_shape"] else None, seed, threads)
    quantize_with_nncf(fp32_onnx, out, inputs)
    recipe_file.write_text(json.dumps(recipe, indent=2) + "\n")
    return out


# --- the command ---------------------------------------------------------------------------------------


def _reference(variants: list[Variant]) -> str | None:
    """torch FP32 if timed, else the first FP32 variant: what relative errors are measured against."""
    for want in ("torch", None):
        for v in variants:
            if v.precision == "fp32" and (want is None or v.backend == want):
                return v.name
    return None


def format_row(row: dict[str, Any]) -> str:
    """One line per run for the terminal (the JSON has everything)."""
    err = row.get("rel_error_vs_reference")
    mem = row.get("peak_mem_mb")
    return (f"{row['label']:>32s} batch {row['batch']}: {row['latency_ms_median']:.2f} ms "
            f"(p90 {row['latency_ms_p90']:.2f}), {row['images_per_s']:.3f} img/s "
            f"({row['images_per_s_basis'].split(':')[0]}), "
            f"{'-' if mem is None else f'{mem:.0f}'} MB peak, {row['model_bytes'] / 1e6:.1f} MB model, "
            f"rel. error {'-' if err is None else f'{err:.2e}'}")


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
) -> dict[str, Any]:
    """Resolve the variants, build the NNCF peer if asked, time everything in one run, write JSON."""
    from tfmq_export.models.loading import load_model

    if iters < 1 or not batches or any(b < 1 for b in batches):
        raise TfmqError("--iters and --batch must be positive")
    if warmup < 0 or sampling_runs < 0 or pause_ms < 0:
        raise TfmqError("--warmup, --sampling-runs and --pause-ms cannot be negative")
    if threads is not None and threads < 1:
        raise TfmqError(f"--threads must be positive, not {threads}")
    if latent_size is not None and latent_size < 1:
        raise TfmqError(f"--latent-size must be positive, not {latent_size}")
    variants, facts, skipped = variants_for(model, list(onnx_paths), backends, variant_specs)
    loaded = load_model(model)
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
        fp32 = [f for f in facts[: len(onnx_paths)] if f.precision == "fp32"]
        if not fp32:
            raise TfmqError("--nncf quantizes the FP32 graph: pass it with --onnx (an export with --wbits 16)")
        xml = ensure_nncf_engine(fp32[0].path, nncf_engine, nncf_samples, shape[1], cond_shape, seed, threads)
        peer = Variant("openvino", "nncf-int8", str(xml), timesteps=tuple(fp32[0].timesteps))
        variants = _unique_labels([*variants, peer])
    for s in skipped:
        log.warning("skipping %s: %s", s["label"], s["reason"])

    if facts:
        steps, scheduler = len(facts[0].timesteps), facts[0].scheduler_config
    else:  # torch alone: a 25-step DDIM table, as `calibrate` defaults to
        from dataclasses import replace

        from tfmq_export.sampling import sampler_timesteps

        steps, scheduler = 25, scheduler_config
        timesteps = tuple(sampler_timesteps(scheduler, steps))
        variants = [replace(v, timesteps=timesteps) if v.backend == "torch" else v for v in variants]
    reference = _reference(variants)
    result = run_bench(variants, shape, steps, batches, iters=iters, warmup=warmup, threads=threads,
                       cond_shape=cond_shape, reference=reference, measure_memory=measure_memory, progress=progress,
                       sampling_runs=sampling_runs, scheduler_config=scheduler, pause_ms=pause_ms,
                       torch_model=torch_model, seed=seed)
    result["model"] = model
    result["skipped"] = skipped
    if json_path is not None:
        write_json(result, Path(json_path))
    return result
