"""``build-engine DIR --backend B``: an engine for every stage of an exported pipeline folder.

Every stage (UNet, text encoder(s), VAE decoder) goes through the one builder table
(``backends.builders.build_engine``), each engine with its manifest, into ``OUTDIR`` (default
``DIR/engines/<backend>``). The engines are built in a private stage beside ``OUTDIR`` and the
folder is renamed into place only when every stage is built; then ``pipeline.json`` gets the
engine files under ``engines.<backend>`` (rewritten atomically), which ``sample DIR --backend B``
and ``bench DIR`` use. A failed build leaves the folder and ``pipeline.json`` as they were.

``--float-stages default|fp32`` chooses the precision of the float stages (text encoder(s), VAE
decoder; ``backends.stages.float_stage_precision``): ``default`` is the backend's own (OpenVINO:
its default inference precision, ``ov-default``, bf16 on CPUs with AMX; TensorRT: FP16;
onnxruntime: FP32), ``fp32`` forces FP32. The UNet keeps the precision it was exported at. Every
stage's label goes into ``pipeline.json`` (``engine_precisions.<backend>``) and its manifest
(``stage_precision``); ``sample DIR --backend B`` runs them so unless told otherwise. An OpenVINO
IR is the same file either way (weights kept f32): its precision is applied when it is compiled.

TensorRT: the Q/DQ UNet is built strongly typed (as ``build-engine FILE.onnx``); a float text
encoder / VAE decoder that ``export-pipeline --precision fp16`` wrote FP16 (``stages.<name>.precision``)
is built strongly typed too, so it runs FP16 whatever ``--float-stages`` says (export it with
``--precision fp32`` for an FP32 engine); an FP32-exported stage is built weakly typed with FP16
allowed (``--float-stages default``, TensorRT 10.x) or FP32 (``--float-stages fp32``); one
optimization profile per stage (batch ``min..max``, the VAE decoder's latent size fixed from
``pipeline.json``).
Without TensorRT or a GPU: one line, before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tfmq_export import contract as c
from tfmq_export.errors import TfmqError
from tfmq_export.io import replace_folder

__all__ = ["ENGINE_SUFFIXES", "build_pipeline_engines"]

#: backend -> the file suffix of its engine
ENGINE_SUFFIXES = {"onnxruntime": ".onnx", "openvino": ".xml", "tensorrt": ".plan"}
_MARK = "engines.json"  # written into OUTDIR: what this folder holds (so a rebuild may replace it)


def _stage_options(backend: str, stage: str, described: dict[str, Any], batches: tuple[int, int, int],
                   timing_cache: Path | None, precision: str) -> dict[str, Any]:
    """Builder options per stage: TensorRT profiles and precision; the CPU builders take none."""
    if backend != "tensorrt":
        return {}
    lo, opt, hi = batches
    options: dict[str, Any] = {"min_batch": lo, "opt_batch": opt, "max_batch": hi, "timing_cache": timing_cache}
    if stage == c.STAGE_UNET:
        return options  # strongly typed, the Q/DQ graph linted first
    # an FP16-exported stage builds strongly typed (FP16 as written); an FP32 one (older folders, SDXL's VAE)
    # weakly typed with FP16 allowed when the float stages run at TensorRT's default precision
    exported = described[c.PJ_STAGES][stage].get("precision", "fp32")
    options.update(fp16=precision == "fp16" and exported != "fp16", lint=False)
    if stage == c.STAGE_VAE_DECODER:
        latent = list(described[c.PJ_LATENT_SHAPE])
        options["shapes"] = {c.VAE_INPUT_LATENTS: [[b, *latent] for b in batches]}
    return options


def _check_out(out: Path) -> None:
    from tfmq_export.io import check_writable

    check_writable(out, "--out", folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / _MARK).is_file():
        raise TfmqError(f"--out {out} holds files that build-engine did not write; refusing to replace them "
                        "(remove it or choose another folder)")


def _build_all(pipe: Any, backend: str, out: Path, batches: tuple[int, int, int], timing_cache: Path | None,
               manifests: dict[str, Any], precisions: dict[str, str]) -> dict[str, str]:
    """Every stage into a private folder, renamed to ``out`` when all are built; returns stage -> file."""
    from tfmq_export.backends.builders import build_engine
    from tfmq_export.backends.manifest import manifest_path
    from tfmq_export.io import staged_dir

    with staged_dir(out) as stage:
        folder = stage / out.name
        folder.mkdir()
        for name in pipe.described[c.PJ_STAGES]:
            target = folder / f"{name}{ENGINE_SUFFIXES[backend]}"
            options = _stage_options(backend, name, pipe.described, batches, timing_cache, precisions[name])
            manifest = {**build_engine(backend, pipe.stage_path(name), target, **options),
                        "stage_precision": precisions[name]}
            manifest_path(target).write_text(json.dumps(manifest, indent=2) + "\n")
            manifests[name] = manifest
        files = {name: f"{name}{ENGINE_SUFFIXES[backend]}" for name in manifests}
        (folder / _MARK).write_text(json.dumps({"backend": backend, "stages": files}, indent=2) + "\n")
        replace_folder(folder, out)
    return files


def build_pipeline_engines(pipeline_dir: Path, backend: str, out_dir: Path | None = None, *,
                           batches: tuple[int, int, int] = (1, 2, 2), timing_cache: Path | None = None,
                           float_stages: str = "default") -> dict[str, Any]:
    """Build every stage of ``pipeline_dir`` with ``backend``; returns ``{stage: engine manifest}``.

    ``batches``: TensorRT's (min, opt, max) batch (classifier-free guidance runs the UNet at 2N).
    ``float_stages``: ``default`` or ``fp32`` for the text encoder(s) and VAE decoder.
    """
    from tfmq_export.backends.builders import ENGINE_BUILDERS
    from tfmq_export.backends.stages import float_stage_precision
    from tfmq_export.io import atomic_write_text
    from tfmq_export.workflows.sample_pipeline import ExportedPipeline

    if backend not in ENGINE_BUILDERS:
        raise TfmqError(f"unknown backend {backend!r}; choose from {', '.join(ENGINE_BUILDERS)}")
    float_precision = float_stage_precision(backend, float_stages)
    pipe = ExportedPipeline.read(pipeline_dir)  # refuses a folder with a missing stage
    precisions = {name: pipe.described[c.PJ_PRECISION] if name == c.STAGE_UNET else float_precision
                  for name in pipe.described[c.PJ_STAGES]}
    if backend == "tensorrt":
        from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

        reason = check_tensorrt_available()
        if reason is not None:
            raise TfmqError(f"cannot build TensorRT engines for {pipe.path}: {reason}")
    out = Path(out_dir) if out_dir is not None else pipe.path / "engines" / backend
    _check_out(out)
    manifests: dict[str, Any] = {}
    made_parent = not out.parent.exists()
    try:
        files = _build_all(pipe, backend, out, batches, timing_cache, manifests, precisions)
    except BaseException:
        if made_parent and out.parent.is_dir() and not any(out.parent.iterdir()):
            out.parent.rmdir()  # nothing half-written: not even an empty engines/ folder
        raise
    described = dict(pipe.described)
    engines = dict(described.get(c.PJ_ENGINES) or {})
    engines[backend] = {name: os.path.relpath(out / file, pipe.path) for name, file in files.items()}
    described[c.PJ_ENGINES] = engines
    described[c.PJ_ENGINE_PRECISIONS] = {**(described.get(c.PJ_ENGINE_PRECISIONS) or {}), backend: precisions}
    atomic_write_text(pipe.path / c.PIPELINE_JSON, json.dumps(described, indent=2) + "\n")
    return manifests
