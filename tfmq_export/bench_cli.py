"""``tfmq-export bench``: build the variant list from the command line and write the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfmq_export.artifact import atomic_write_text
from tfmq_export.bench import BACKENDS, Variant, run_bench
from tfmq_export.errors import TfmqError


def variants_for(model: str, onnx_paths: list[Path], backends: list[str]) -> tuple[list[Variant], Any]:
    """torch FP32 of MODEL (if asked) plus every ONNX graph on every ONNX backend asked for."""
    from tfmq_export.export.onnx_export import describe_onnx

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise TfmqError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    infos = [describe_onnx(p) for p in onnx_paths]
    variants: list[Variant] = []
    if "torch" in backends:
        variants.append(Variant("torch", "fp32", model))
    for backend in backends:
        if backend in ("onnxruntime", "openvino"):
            variants += [Variant(backend, info.precision, str(info.path)) for info in infos]
    if not variants:
        raise TfmqError("nothing to time: pass --onnx files and/or include torch in --backends")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        variants = [Variant(v.backend, v.precision, v.path, f"{v.backend}:{v.precision}:{Path(v.path).stem}")
                    for v in variants]
    return variants, infos


def bench_to_json(model: str, onnx_paths: list[Path], backends: str, batches: list[int], iters: int,
                  threads: int | None, json_path: Path | None, measure_memory: bool = True,
                  latent_size: int | None = None) -> dict[str, Any]:
    from tfmq_export.models.loading import load_model

    if iters < 1 or any(b < 1 for b in batches):
        raise TfmqError("--iters and --batch must be positive")
    variants, infos = variants_for(model, onnx_paths, [b.strip() for b in backends.split(",") if b.strip()])
    loaded = load_model(model)
    steps = len(infos[0].timesteps) if infos else 25
    cond_shape = (77, loaded.unet.config.cross_attention_dim) if loaded.is_conditional else None
    reference = variants[0].name
    shape = loaded.sample_shape if latent_size is None else (loaded.sample_shape[0], latent_size, latent_size)
    result = run_bench(variants, shape, steps, batches, iters=iters, threads=threads,
                       cond_shape=cond_shape, reference=reference, measure_memory=measure_memory)
    result["model"] = model
    result["sample_shape"] = list(shape)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(json_path), json.dumps(result, indent=2))
    return result
