"""What ``bench`` times: variants from the command line, the facts of every model file, their runners.

Variants come from three places:

* ``--backends``: ``torch`` runs MODEL in FP32 (the reference for the relative error), and every
  ``--onnx`` graph runs on each ONNX backend listed (onnxruntime, openvino);
* ``--variant BACKEND=FILE``: one backend on one file: an exported ``.onnx``, an OpenVINO IR
  ``.xml`` or a TensorRT ``.plan`` (precision and timesteps from the manifest beside engines);
* ``--nncf``: the peer a CPU user would reach for, NNCF's INT8 quantization of the FP32 graph, run
  on OpenVINO (``precision`` ``nncf-int8``, built by ``backends.openvino.nncf``).

TensorRT variants run only where TensorRT and a CUDA GPU are present; elsewhere they are skipped
with the reason logged and listed under ``skipped`` in the JSON (and when nothing else is left to
time, the reason is the error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import RUNNERS, Runner, open_runner
from tfmq_export.contract import BACKENDS, parse_metadata
from tfmq_export.errors import TfmqError

__all__ = [
    "GraphFacts", "Variant", "bench_inputs", "describe_model_file", "nothing_to_time", "parse_variant",
    "reference_variant", "unique_labels", "variant_runner", "variants_for",
]

ONNX_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Variant:
    """One thing to time: a backend running a model file (or the torch model) at a precision.

    ``timesteps`` are the sampler's timesteps (rows of the temporal table); the torch variant
    builds its table from them so that it computes what the exported graphs compute at the same
    ``step_index``. ``target`` is the export target of the graph (``tensorrt``/``onnxruntime``);
    ``device`` where the torch variant computes (``--device``; the other backends pick their own).
    """

    backend: str
    precision: str
    path: str  # .onnx / .xml / .plan, or a MODEL name for torch
    label: str = ""
    timesteps: tuple[int, ...] = ()
    target: str = ""
    device: str = "cpu"

    @property
    def name(self) -> str:
        on = "" if self.device == "cpu" else f"@{self.device}"
        return self.label or f"{self.backend}:{self.precision}{on}"


@dataclass
class GraphFacts:
    """What the bench needs to know about a model file: precision and the sampler it was built for."""

    path: Path
    precision: str
    timesteps: list[int]
    scheduler_config: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    target: str
    fingerprint: str = ""  # tfmq.model_fingerprint: the weights the graph was exported from
    scheduler: str = ""  # tfmq.scheduler: the sampler calibrated on ("" in older graphs: the config's own)
    steps: int = 0  # tfmq.steps: its step count (0 in older graphs: one per table row)


def variant_runner(variant: Variant, threads: int | None, model: Any = None) -> Runner:
    """The (inactive) runner of a variant, from the backend registry.

    ``model`` is an already loaded ``LoadedModel`` for the torch variant, which the runner then
    consumes: its UNet becomes the table UNet in place (no copy: SD-1.5 is 3.4 GB in FP32). By
    default the torch variant loads ``variant.path``.
    """
    if variant.backend != "torch":
        return open_runner(variant.backend, variant.path, variant.precision, threads=threads)
    from tfmq_export.models.loading import load_model
    from tfmq_export.sampling import sampler_timesteps
    from tfmq_export.temporal import TemporalTableUNet, compute_temporal_features

    loaded = model if model is not None else load_model(variant.path)
    timesteps = list(variant.timesteps) or sampler_timesteps(loaded.scheduler_config, 10)
    tables = compute_temporal_features(loaded.unet, timesteps)
    table_unet = TemporalTableUNet(loaded.unet, tables, timesteps, copy_unet=False)
    return open_runner("torch", table_unet, variant.precision, threads=threads, device=variant.device)


def bench_inputs(sample_shape: tuple[int, ...], batch: int, cond_shape: tuple[int, int] | None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Seeded UNet inputs: x ~ N(0, 1) (what the sampler starts from), step 0, a random condition."""
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((batch, *sample_shape), dtype=np.float32)
    step = np.zeros(batch, dtype=np.int64)
    cond = None if cond_shape is None else rng.standard_normal((batch, *cond_shape), dtype=np.float32)
    return sample, step, cond


def _facts_from_metadata(path: Path, meta: dict[str, str], precision: str | None = None) -> GraphFacts:
    """Facts of an engine from the ``tfmq.*`` metadata of the graph it was built from."""
    parsed = parse_metadata(meta, f"{path} (its manifest's source_metadata)")
    return GraphFacts(path, precision or parsed.precision, parsed.timesteps, parsed.scheduler_config,
                      parsed.sample_shape, parsed.target, parsed.fingerprint, parsed.scheduler, parsed.steps)


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
                          info.target, info.fingerprint, info.scheduler, info.steps)
    if not manifest_file.is_file():
        raise TfmqError(f"{path} has no manifest ({manifest_file.name}); build it with `tfmq-export build-engine`")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read {manifest_file}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise TfmqError(f"{manifest_file} is not a JSON object; rebuild the engine with `tfmq-export build-engine`")
    return _facts_from_metadata(path, manifest.get("source_metadata", {}), manifest.get("precision"))


def parse_variant(spec: str) -> tuple[str, Path]:
    """``BACKEND=FILE`` -> (backend, path), refusing unknown backends and foreign file types."""
    backend, sep, file = spec.partition("=")
    backend = backend.strip()
    runs_files = [b for b in BACKENDS if RUNNERS[b].suffixes]
    if not sep or not file:
        raise TfmqError(f"--variant {spec!r} must be BACKEND=FILE, e.g. openvino=engines/unet.xml")
    if backend not in runs_files:
        raise TfmqError(f"--variant {spec!r}: unknown backend {backend!r} (choose {', '.join(runs_files)})")
    path = Path(file)
    suffixes = RUNNERS[backend].suffixes
    if path.suffix not in suffixes:
        raise TfmqError(f"--variant {spec!r}: {backend} runs {' or '.join(suffixes)} files")
    return backend, path


def _split_backends(backends: str | list[str]) -> list[str]:
    names = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else list(backends)
    names = [b for b in names if b]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown:
        raise TfmqError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return names


def unique_labels(variants: list[Variant]) -> list[Variant]:
    """``backend:precision``; only where that repeats, refined by export target, then by file name."""
    keys = (lambda _i, v: f"{v.backend}:{v.precision}",
            lambda _i, v: f"{v.backend}:{v.precision}:{v.target or Path(v.path).stem}",
            lambda _i, v: f"{v.backend}:{v.precision}:{v.path}",
            lambda i, v: f"{v.backend}:{v.precision}:{i}")
    labels = [v.label or keys[0](i, v) for i, v in enumerate(variants)]
    for key in keys[1:]:
        clashing = {n for n in labels if labels.count(n) > 1}
        if not clashing:
            break
        labels = [key(i, v) if n in clashing and not v.label else n for i, (v, n) in enumerate(zip(variants, labels))]
    return [replace(v, label=n) for v, n in zip(variants, labels)]


def _drop_unavailable_tensorrt(names: list[str], planned: list[tuple[str, GraphFacts]],
                               skipped: list[dict[str, str]]) -> list[tuple[str, GraphFacts]]:
    """Planned variants without the TensorRT ones this machine cannot run (each added to ``skipped``).

    Asked for with ``--backends tensorrt`` or ``--variant tensorrt=FILE``: a machine without
    TensorRT or a GPU gets that reason; one with them but no plan given gets "pass a plan".
    """
    trt_files = [f for b, f in planned if b == "tensorrt"]
    if "tensorrt" not in names and not trt_files:
        return planned
    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

    reason = check_tensorrt_available()
    if reason is None and trt_files:
        return planned
    if not trt_files:
        skipped.append({"label": "tensorrt", "backend": "tensorrt", "path": "",
                        "reason": reason or "TensorRT runs built plans: pass --variant tensorrt=FILE.plan"})
    skipped += [{"label": f"tensorrt:{f.precision}", "backend": "tensorrt", "path": str(f.path), "reason": reason}
                for f in trt_files]
    return [(b, f) for b, f in planned if b != "tensorrt"]


def nothing_to_time(skipped: list[dict[str, str]]) -> TfmqError:
    """The error when no variant is left: why the skipped ones could not run, if any were skipped."""
    if skipped:
        return TfmqError(f"{skipped[0]['reason']}; nothing else to time (add --onnx files or other --backends)")
    return TfmqError("nothing to time: pass --onnx/--variant files, --nncf, or include torch in --backends")


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
    An empty list is returned only when TensorRT variants were skipped (``bench_to_json`` decides
    whether the NNCF peer still leaves something to time).
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
    planned = _drop_unavailable_tensorrt(names, planned, skipped)

    if len({tuple(f.timesteps) for f in facts}) > 1:
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
    if not variants and not skipped:
        raise nothing_to_time(skipped)
    return unique_labels(variants), facts, skipped


def reference_variant(variants: list[Variant]) -> str | None:
    """torch FP32 if timed, else the first FP32 variant: what relative errors are measured against."""
    for want in ("torch", None):
        for v in variants:
            if v.precision == "fp32" and (want is None or v.backend == want):
                return v.name
    return None
