"""``build-engine DIR --backend B``: an engine for every stage of an exported pipeline folder.

Every stage (UNet, text encoder(s), VAE decoder) goes through the one builder table
(``backends.builders.build_engine``), each engine with its manifest, into ``OUTDIR`` (default
``DIR/engines/<backend>``). The engines are built in a private stage beside ``OUTDIR`` and the
folder is renamed into place only when every stage is built; then ``pipeline.json`` gets the
engine files under ``engines.<backend>`` (rewritten atomically), which ``sample DIR --backend B``
and ``bench DIR`` use. A failed build leaves the folder and ``pipeline.json`` as they were.

TensorRT: the Q/DQ UNet is built strongly typed (as ``build-engine FILE.onnx``); the float text
encoder(s) and VAE decoder strongly typed too when ``export-pipeline --precision fp16`` wrote them
FP16 (``stages.<name>.precision``), else weakly typed with FP16 allowed (TensorRT 10.x; TensorRT 11
has strong typing only, so FP32 stages then build FP32); one optimization profile per stage (batch ``min..max``, the
VAE decoder's latent size fixed from ``pipeline.json``). Without TensorRT or a GPU: one line,
before anything is written.
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
                   timing_cache: Path | None) -> dict[str, Any]:
    """Builder options per stage: TensorRT profiles and precision; the CPU builders take none."""
    if backend != "tensorrt":
        return {}
    lo, opt, hi = batches
    options: dict[str, Any] = {"min_batch": lo, "opt_batch": opt, "max_batch": hi, "timing_cache": timing_cache}
    if stage == c.STAGE_UNET:
        return options  # strongly typed, the Q/DQ graph linted first
    # an FP16 stage runs FP16 strongly typed; an FP32 one (older folders, SDXL's VAE) weakly typed with FP16
    options.update(fp16=described[c.PJ_STAGES][stage].get("precision", "fp32") != "fp16", lint=False)
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
               manifests: dict[str, Any]) -> dict[str, str]:
    """Every stage into a private folder, renamed to ``out`` when all are built; returns stage -> file."""
    from tfmq_export.backends.builders import build_engine
    from tfmq_export.io import staged_dir

    with staged_dir(out) as stage:
        folder = stage / out.name
        folder.mkdir()
        for name in pipe.described[c.PJ_STAGES]:
            target = folder / f"{name}{ENGINE_SUFFIXES[backend]}"
            options = _stage_options(backend, name, pipe.described, batches, timing_cache)
            manifests[name] = build_engine(backend, pipe.stage_path(name), target, **options)
        files = {name: f"{name}{ENGINE_SUFFIXES[backend]}" for name in manifests}
        (folder / _MARK).write_text(json.dumps({"backend": backend, "stages": files}, indent=2) + "\n")
        replace_folder(folder, out)
    return files


def build_pipeline_engines(pipeline_dir: Path, backend: str, out_dir: Path | None = None, *,
                           batches: tuple[int, int, int] = (1, 2, 2),
                           timing_cache: Path | None = None) -> dict[str, Any]:
    """Build every stage of ``pipeline_dir`` with ``backend``; returns ``{stage: engine manifest}``.

    ``batches``: TensorRT's (min, opt, max) batch (classifier-free guidance runs the UNet at 2N).
    """
    from tfmq_export.backends.builders import ENGINE_BUILDERS
    from tfmq_export.io import atomic_write_text
    from tfmq_export.workflows.sample_pipeline import ExportedPipeline

    if backend not in ENGINE_BUILDERS:
        raise TfmqError(f"unknown backend {backend!r}; choose from {', '.join(ENGINE_BUILDERS)}")
    pipe = ExportedPipeline.read(pipeline_dir)  # refuses a folder with a missing stage
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
        files = _build_all(pipe, backend, out, batches, timing_cache, manifests)
    except BaseException:
        if made_parent and out.parent.is_dir() and not any(out.parent.iterdir()):
            out.parent.rmdir()  # nothing half-written: not even an empty engines/ folder
        raise
    described = dict(pipe.described)
    engines = dict(described.get(c.PJ_ENGINES) or {})
    engines[backend] = {name: os.path.relpath(out / file, pipe.path) for name, file in files.items()}
    described[c.PJ_ENGINES] = engines
    atomic_write_text(pipe.path / c.PIPELINE_JSON, json.dumps(described, indent=2) + "\n")
    return manifests
