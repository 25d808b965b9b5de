"""TensorRT plans from the exported Q/DQ ONNX, built through Polygraphy's loaders.

Strong typing and where FP16 comes from
---------------------------------------
The network is parsed strongly typed (``NetworkFromOnnxPath(..., strongly_typed=True)``). In
TensorRT 11 that is the only mode: the weak-typing builder flags (``BuilderFlag.FP16``,
``BuilderFlag.INT8``, the precision-constraint flags) were removed, and the
``STRONGLY_TYPED`` network flag is kept only for compatibility and ignored; on TensorRT 10.x it
must be set explicitly. In a strongly typed network "the optimizer infers intermediate tensor
types from the network input types and operator specifications and adheres to them strictly"
(TensorRT 11.0 release notes). Consequences for the exporter:

* INT8 comes from the Q/DQ nodes (explicit quantization): a QuantizeLinear -> DequantizeLinear on
  the activation and a DequantizeLinear on the INT8 weight around a Conv/MatMul/Gemm lets
  TensorRT fuse them into an INT8 layer. INT4 is weight-only, blocked, on MatMul/Gemm.
* Everything that is not quantized runs in the type the graph gives it. A float32 ONNX therefore
  runs its GroupNorm, softmax, residual adds, non-quantized convs... in FP32 (TF32 at best), not
  FP16. NVIDIA's migration guide says to convert the ONNX to mixed precision *before* building
  (ModelOpt AutoCast, ``keep_io_types=True`` to keep float32 ``sample``/``noise_pred``). So the
  exporter must emit FP16 (with casts at the float32 I/O) for the non-quantized parts when FP16
  speed is wanted; the DequantizeLinear output type follows its scale's type (opset 19+), so FP16
  scales keep the quantized layers' outputs FP16 too. ``export-onnx --precision fp16`` (the
  tensorrt target's default) writes such a graph (``export.fp16``); there is no builder switch.

Comparing with peers: ModelOpt's diffusers example and demoDiffusion compare an INT8 engine with a
pure FP16 engine. Export the same model twice with ``--precision fp16`` (the W8A8 artifact and a
``--wbits 16 --abits 16`` one), build both here (strongly typed: the FP16 graph is the FP16 engine,
``manifest["float_precision"]``) and time them with ``bench --variant tensorrt=w8a8.plan --variant
tensorrt=fp16.plan``: the bench labels them ``tensorrt:w8a8-fp16`` and ``tensorrt:fp16``.

Without TensorRT or without a CUDA GPU every entry point raises ``TfmqError`` with one line; the
module imports nothing from TensorRT at import time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import onnx

from tfmq_export import __version__
from tfmq_export.backends.manifest import load_source_onnx, manifest_path, onnx_metadata
from tfmq_export.backends.tensorrt.availability import check_tensorrt_available, gpu_name
from tfmq_export.errors import TfmqError
from tfmq_export.io import commit_staged, machine_info, sha256_file, staged_dir, utc_now

__all__ = ["build_tensorrt_engine", "profile_shapes"]


def _float_precision(model: onnx.ModelProto) -> str:
    """``fp16`` / ``fp32`` from the exporter's metadata (a UNet), else fp16 when any initializer is FP16
    (a pipeline's float stage written by ``export-pipeline --precision fp16``)."""
    from tfmq_export.contract import META_FLOAT_PRECISION

    meta = {p.key: p.value for p in model.metadata_props}
    if META_FLOAT_PRECISION in meta:
        return meta[META_FLOAT_PRECISION]
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    return "fp16" if fp16 else "fp32"

def profile_shapes(
    model: onnx.ModelProto, min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, list[list[int]]]:
    """min/opt/max shapes per graph input: the batch dim varies, every other dim must be fixed."""
    inits = {t.name for t in model.graph.initializer}
    shapes: dict[str, list[list[int]]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        fixed: list[int] = []
        for axis, d in enumerate(dims):
            if axis == 0:
                fixed.append(-1)
            elif d.HasField("dim_value") and d.dim_value > 0:
                fixed.append(int(d.dim_value))
            else:
                raise TfmqError(
                    f"input {value.name!r} has a dynamic dimension {axis} ({d.dim_param or '?'}); "
                    "only the batch may vary in a TensorRT profile, export with a fixed latent size"
                )
        if not fixed:
            raise TfmqError(f"input {value.name!r} is a scalar; the UNet contract batches every input")
        shapes[value.name] = [[b, *fixed[1:]] for b in (min_batch, opt_batch, max_batch)]
    return shapes


def build_tensorrt_engine(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 2,
    timing_cache: str | os.PathLike[str] | None = None,
    workspace_gb: float | None = None,
    lint: bool = True,
    fp16: bool = False,
    shapes: dict[str, list[list[int]]] | None = None,
) -> dict[str, Any]:
    """Build a TensorRT plan for an exported graph; returns (and writes) the manifest.

    The Q/DQ UNet is built strongly typed (the default), and so is any FP16 graph: its float parts
    run in FP16 because the graph says so. ``fp16=True`` is for FP32 float pipeline stages (text
    encoder, VAE decoder exported with ``--precision fp32``): the network is parsed weakly typed and the builder may run
    any layer in FP16 (Polygraphy's ``CreateConfig(fp16=True)``, TensorRT's ``BuilderFlag.FP16``,
    which TensorRT 10.x has; TensorRT 11 removed weak typing and refuses it). ``shapes`` gives the
    min/opt/max shape of every input where the graph leaves more than the batch dynamic (the VAE
    decoder's latent height and width).

    One optimization profile covers ``min_batch..max_batch`` for every declared input
    (``sample``, ``step_index``, ``encoder_hidden_states`` when present), tuned for ``opt_batch``
    (classifier-free guidance runs batch 2 per image). ``timing_cache`` is loaded when it exists
    and written back after the build (it makes rebuilds minutes faster). ``workspace_gb`` caps the
    builder's workspace pool. With ``lint=True`` the graph must pass ``lint_tensorrt`` first, so a
    Q/DQ mistake is reported by node name instead of as a TensorRT parser error.
    """
    reason = check_tensorrt_available()
    if reason is not None:
        raise TfmqError(f"cannot build a TensorRT engine: {reason}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise TfmqError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    if workspace_gb is not None and workspace_gb <= 0:
        raise TfmqError(f"workspace_gb must be positive, not {workspace_gb}")
    out = Path(out_path)
    src, model = load_source_onnx(onnx_path)
    if lint:
        from tfmq_export.export.lint import lint_tensorrt

        violations = lint_tensorrt(model, base_dir=src.parent)
        if violations:
            first = violations[0]
            raise TfmqError(
                f"{src} breaks TensorRT's Q/DQ rules in {len(violations)} place(s), first [{first.rule}] "
                f"{first.node}: {first.message}"
            )
    shapes = shapes or profile_shapes(model, min_batch, opt_batch, max_batch)

    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    profile = Profile()
    for name, (lo, mid, hi) in shapes.items():
        profile.add(name, min=lo, opt=mid, max=hi)
    pools = None if workspace_gb is None else {trt.MemoryPoolType.WORKSPACE: int(workspace_gb * (1 << 30))}
    cache = None if timing_cache is None else str(timing_cache)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    with staged_dir(out) as stage:
        # EngineBytesFromNetwork is EngineFromNetwork without the deserialization: the plan bytes
        # are all we store, and the runner deserializes them on its own GPU context.
        network = NetworkFromOnnxPath(str(src), strongly_typed=not fp16)
        config = CreateConfig(fp16=fp16, profiles=[profile], load_timing_cache=cache, memory_pool_limits=pools)
        try:
            plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=cache)()
        except PolygraphyException as exc:
            raise TfmqError(
                f"TensorRT could not build an engine from {src}: {str(exc).strip().splitlines()[0]}"
            ) from exc
        (stage / out.name).write_bytes(bytes(plan))
        manifest: dict[str, Any] = {
            "backend": "tensorrt",
            "engine": out.name,
            "engine_files": [out.name],
            "engine_bytes": (stage / out.name).stat().st_size,
            "engine_sha256": sha256_file(stage / out.name),
            "source_onnx": str(src),
            "source_onnx_sha256": sha256_file(src),
            "source_metadata": onnx_metadata(model),
            "tensorrt_version": trt.__version__,
            "strongly_typed": not fp16,
            "fp16": fp16,
            # the graph's float parts: what a strongly typed engine runs its unquantized layers in
            "float_precision": _float_precision(model),
            "gpu": gpu_name(),
            "profiles": [{name: {"min": lo, "opt": mid, "max": hi} for name, (lo, mid, hi) in shapes.items()}],
            "timing_cache": cache,
            "workspace_gb": workspace_gb,
            "machine": machine_info(),
            "build_seconds": round(time.perf_counter() - start, 3),
            "created_utc": utc_now(),
            "tfmq_export_version": __version__,
        }
        commit_staged(stage, out.parent, [out.name], manifest, manifest_path(out).name)
    return manifest
