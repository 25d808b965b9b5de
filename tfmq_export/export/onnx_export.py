"""Export a calibrated UNet as ONNX per the contract (names and metadata: ``contract.py``).

1. the full-precision table UNet (temporal branch -> Gather from per-step tables) is traced with
   torch's TorchScript ONNX exporter (names keep module scopes, which the Q/DQ pass needs);
2. Q/DQ from the artifact are injected (``qdq.insert_qdq``);
3. ``--precision fp16``: the float parts become FP16, I/O stays float32 (``export.fp16``);
4. metadata (``tfmq.*``) is attached, the graph is checked (and, for TensorRT, linted);
5. the file is written atomically (temp file + rename), with external data for >2 GB models.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from tfmq_export import __version__
from tfmq_export.artifact import OUTPUT_CORRECTION_KEY, CalibrationArtifact, artifact_problem
from tfmq_export.contract import (
    INPUT_CONDITIONS,
    INPUT_SAMPLE,
    INPUT_TEXT_EMBEDS,
    INPUT_TIME_IDS,
    META_SAMPLE_SHAPE,
    OUTPUT_NOISE_PRED,
    TABLE_KINDS,
    UNET_INPUTS,
    GraphMetadata,
    default_attention,
    default_float_precision,
    parse_metadata,
)
from tfmq_export.errors import TfmqError
from tfmq_export.export.attention_qdq import insert_attention_qdq
from tfmq_export.export.fp16 import FP16_OPSET, to_fp16
from tfmq_export.export.openvino_folds import fold_for_openvino
from tfmq_export.export.qdq import TARGETS, check_target, default_weight_storage, insert_qdq, needs_opset_21
from tfmq_export.export.split_qdq import apply_split_qdq, split_layers
from tfmq_export.io import check_writable
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.attention import attention_sites
from tfmq_export.temporal import TemporalTableUNet, compute_temporal_features

__all__ = [
    "BASE_OPSET",
    "OnnxInfo",
    "build_onnx",
    "check_finite_graph",
    "check_onnx_output",
    "describe_onnx",
    "example_inputs",
    "export_onnx",
    "is_large",
    "read_metadata",
    "save_onnx_atomic",
    "set_metadata",
    "table_rows",
    "trace_to_onnx",
]

BASE_OPSET = 17
_PROTOBUF_LIMIT = 1_800_000_000
_FP16_MAX_ROWS = 2048  # every integer up to 2**11 is exact in FP16


def example_inputs(model: LoadedModel, batch: int = 2, seq_len: int = 8) -> tuple[torch.Tensor, ...]:
    """Inputs with the contract's shapes, for tracing and tests."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((batch, *model.sample_shape), generator=generator)
    step_index = torch.zeros(batch, dtype=torch.int64)
    if not model.is_conditional:
        return sample, step_index
    dim = model.unet.config.cross_attention_dim
    conditions = torch.randn((batch, seq_len, dim), generator=generator)
    adapter = UNetAdapter(model.unet)
    if not adapter.has_text_time:
        return sample, step_index, conditions
    # SDXL: text_embeds [B, P] and time_ids [B, 6] stay graph inputs (contract: INPUT_TEXT_EMBEDS, INPUT_TIME_IDS)
    text_embeds = torch.randn((batch, adapter.text_embeds_dim), generator=generator)
    return sample, step_index, conditions, text_embeds, torch.full((batch, 6), 16.0)


def trace_to_onnx(table_unet: TemporalTableUNet, inputs: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    """Trace the full-precision table UNet; batch (and sequence length) are dynamic, and so are height and
    width unless a per-pixel output correction ties the graph to the calibration's resolution (the graph
    then declares it, so a runtime refuses another size at its input instead of failing inside)."""
    names = list((*UNET_INPUTS, INPUT_TEXT_EMBEDS, INPUT_TIME_IDS)[: len(inputs)])
    dynamic: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names}
    correction = table_unet.output_correction
    spatial = {} if correction is not None and correction.table.shape[-1] > 1 else {2: "height", 3: "width"}
    dynamic[INPUT_SAMPLE].update(spatial)
    if len(inputs) >= 3:
        dynamic[INPUT_CONDITIONS][1] = "sequence"
    dynamic[OUTPUT_NOISE_PRED] = {0: "batch", **spatial}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "unet.onnx")
        with torch.no_grad():
            torch.onnx.export(
                table_unet.eval(), inputs, path, dynamo=False, opset_version=BASE_OPSET,
                input_names=names, output_names=[OUTPUT_NOISE_PRED], dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        return onnx.load(path)  # loads external data too, before the folder goes


def set_metadata(model: onnx.ModelProto, artifact: CalibrationArtifact, target: str,
                 sample_shape: tuple[int, ...], timesteps: list | None = None, float_precision: str = "fp32",
                 attention: str = "float") -> None:
    """Write the contract's ``tfmq.*`` metadata (replacing any) and the producer fields.

    ``timesteps``: the table's rows (default: the artifact's, a sampler table); ``attention``: ``int8``
    when the graph has attention Q/DQ."""
    settings = artifact.settings or {}
    values = GraphMetadata(
        timesteps=list(artifact.timesteps if timesteps is None else timesteps),
        scheduler_config=artifact.scheduler_config, sample_shape=tuple(sample_shape),
        wbits=artifact.wbits, abits=artifact.abits, method=artifact.method, target=target,
        fingerprint=artifact.model_fingerprint, temporal_table=artifact.temporal_table, version=__version__,
        scheduler=str(settings.get("scheduler") or ""), steps=int(settings.get("steps") or 0),
        float_precision=float_precision, attention=attention,
    ).to_props()
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.producer_name = "tfmq-export"
    model.producer_version = __version__


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@dataclass
class OnnxInfo:
    """What sampling and benchmarking need to know about an exported graph."""

    path: Path
    timesteps: list[int | float]
    scheduler_config: dict
    sample_shape: tuple[int, int, int]
    conditional: bool
    precision: str
    method: str
    target: str
    fingerprint: str
    scheduler: str = ""  # the calibrated scheduler ("" in graphs from before it was recorded)
    steps: int = 0  # the calibrated step count (0: unknown, the table's length)
    float_precision: str = "fp32"  # fp16: float parts FP16, I/O float32 (--precision)


def describe_onnx(path: Path) -> OnnxInfo:
    """Read an exported graph's contract metadata, refusing graphs tfmq-export did not write."""
    path = Path(path)
    if not path.is_file():
        raise TfmqError(f"{path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise TfmqError(f"{path} is not a readable ONNX file: {exc}") from exc
    meta = parse_metadata(read_metadata(model), str(path))
    if meta.sample_shape is None:
        raise TfmqError(f"{path} has damaged tfmq.* metadata (no {META_SAMPLE_SHAPE})")
    return OnnxInfo(
        path=path,
        timesteps=meta.timesteps,
        scheduler_config=meta.scheduler_config,
        sample_shape=meta.sample_shape,
        conditional=any(i.name == INPUT_CONDITIONS for i in model.graph.input),
        precision=meta.precision,
        method=meta.method,
        target=meta.target,
        fingerprint=meta.fingerprint,
        scheduler=meta.scheduler,
        steps=meta.steps,
        float_precision=meta.float_precision,
    )


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` must keep its weights in an external file (protobuf's 2 GB limit).

    Why not ``ByteSize()`` alone: protobuf refuses to size a message above 2 GB (EncodeError), which
    is exactly the FP32 SD-1.5 UNet. The initializers are almost all of a UNet graph, so their sum
    decides first; ``ByteSize()`` only runs on graphs that are certainly below the limit.
    """
    weights = sum(len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * len(t.int64_data)
                  for t in model.graph.initializer)
    if weights > _PROTOBUF_LIMIT:
        return True
    try:
        return model.ByteSize() > _PROTOBUF_LIMIT
    except Exception:  # protobuf's EncodeError: too large to size
        return True


def save_onnx_atomic(model: onnx.ModelProto, out_path: Path) -> None:
    """Write ``model`` to ``out_path`` via a temp name + rename; external data beside it if large.

    A large graph is written into a temporary folder next to ``out_path`` (its weights file must
    carry the final name, the graph refers to it), checked from there, then both files are renamed.
    """
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not is_large(model):
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        try:
            buffer = io.BytesIO()
            onnx.save_model(model, buffer)
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    data_name = out_path.name + ".data"
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as folder:
        staged = Path(folder) / out_path.name
        onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        onnx.checker.check_model(str(staged))
        os.replace(Path(folder) / data_name, out_path.parent / data_name)
        os.replace(staged, out_path)


def check_finite_graph(graph: onnx.ModelProto) -> None:
    """Refuse a graph with a NaN/Inf float initializer or Constant, naming it (it would run, computing noise)."""
    import numpy as np
    from onnx import numpy_helper

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    tensors = [(t.name, t) for t in graph.graph.initializer]
    tensors += [(node.output[0], attr.t) for node in graph.graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    for name, tensor in tensors:
        if tensor.data_type not in floats or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = numpy_helper.to_array(tensor)
        if not np.isfinite(values.astype(np.float32, copy=False)).all():
            raise TfmqError(f"the exported graph's tensor {name} holds non-finite values (NaN/Inf); nothing written")


def table_rows(model: LoadedModel, artifact: CalibrationArtifact,
               timesteps: str = "sampler") -> tuple[dict[str, torch.Tensor], list]:
    """The temporal table to export and the timestep of each row (``tfmq.timesteps``).

    ``sampler``: the artifact's own table, a row per calibrated scheduler call. ``all``: a row per
    training timestep 0..N-1 (any step count of an integer-timestep scheduler runs from one
    engine), computed here from the full-precision TIB. Static activation scales hold for every
    row, so nothing else changes; what is tied to the calibrated steps is refused: per-step
    activation factors (``step_factors``) and a quantized table (its TIB activations are
    quantized per calibrated step).
    """
    if timesteps not in TABLE_KINDS:
        raise TfmqError(f"unknown --timesteps {timesteps!r} (choose {' or '.join(TABLE_KINDS)})")
    if timesteps == "sampler":
        return artifact.temporal_tables(), list(artifact.timesteps)
    if any(key.endswith(".input_step_factor") for key in artifact.tensors):
        raise TfmqError("--timesteps all: this artifact keeps per-step activation factors (step_factors), one per "
                        "calibrated step; export it with --timesteps sampler")
    if artifact.temporal_table != "fp":
        raise TfmqError(f"--timesteps all: this artifact's temporal table is {artifact.temporal_table!r} (quantized "
                        "per calibrated step); export it with --timesteps sampler")
    if OUTPUT_CORRECTION_KEY in artifact.tensors:
        raise TfmqError("--timesteps all: this artifact corrects the output per calibrated step (output_correction); "
                        "export it with --timesteps sampler")
    rows = list(range(int(artifact.scheduler_config.get("num_train_timesteps", 1000))))
    return compute_temporal_features(model.unet, rows), rows


def _target_opset(artifact: CalibrationArtifact, precision: str, weight_storage: str = "int8") -> int | None:
    """The opset to convert the traced graph to before Q/DQ go in (None: keep ``BASE_OPSET``)."""
    if artifact.layers and needs_opset_21(artifact, weight_storage):
        return 21
    return FP16_OPSET if precision == "fp16" else None


def build_onnx(model: LoadedModel, artifact: CalibrationArtifact, target: str = "tensorrt", *,
               copy_unet: bool = True, timesteps: str = "sampler", precision: str = "fp32",
               table_fp32: bool = False, weight_storage: str = "int8", fold: bool = True,
               attention: str | None = None) -> onnx.ModelProto:
    """The exported graph (not yet written) for ``model`` quantized as ``artifact`` says.

    Refused before tracing: an unknown target or precision, another model's artifact, an artifact
    that breaks the schema (zero, NaN or Inf scales, non-finite tables, wrong shapes), whatever the target,
    and ``tensorrt`` for an artifact calibrated with ``--linear-act-grid uint8-127`` (``qdq.check_target``).
    ``precision``: the float parts' type (``export.fp16``); this function's default stays ``fp32``,
    the graph every caller got before the option; the commands default by target
    (``contract.DEFAULT_FLOAT_PRECISION``). ``table_fp32`` (fp16 only): keep the tables FP32.
    ``weight_storage``: INT8 or INT4 initializers for 4-bit weights (``qdq.default_weight_storage``).
    ``fold`` (``openvino`` only): apply ``openvino_folds`` (exact rewrites; False gives the graph before
    them, which tests compare against). ``attention``: ``int8`` puts Q/DQ on the attention score
    MatMul's query and key (``export.attention_qdq``; ``simulation_from_artifact`` with the same
    value computes the graph), ``float`` leaves it; default per target (``contract.DEFAULT_ATTENTION``).
    """
    if target not in TARGETS:
        raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(TARGETS)})")
    precision = default_float_precision(target, precision)
    weight_storage = default_weight_storage(target, weight_storage)
    attention = default_attention(target, attention)
    problem = artifact_problem(artifact)
    if problem is not None:
        raise TfmqError(f"--target {target}: the artifact is corrupt: {problem}")
    check_target(target, artifact)  # tensorrt refuses the uint8-127 grid before anything is traced
    artifact.check_model(model.fingerprint(), model.name)
    tables, rows = table_rows(model, artifact, timesteps)
    if precision == "fp16" and len(rows) > _FP16_MAX_ROWS:  # the traced step_index path casts through float
        raise TfmqError(f"--precision fp16: {len(rows)} table rows; FP16 holds row indices up to {_FP16_MAX_ROWS}")
    sites = attention_sites(model.unet, artifact) if attention == "int8" else []
    attention = "int8" if sites else "float"  # none qualified (quant.attention): the metadata says float
    table_unet = TemporalTableUNet(model.unet, tables, rows, copy_unet=copy_unet,
                                   output_correction=artifact.tensors.get(OUTPUT_CORRECTION_KEY))
    graph = trace_to_onnx(table_unet, example_inputs(model))
    opset = _target_opset(artifact, precision, weight_storage)
    if opset is not None:
        graph = onnx.version_converter.convert_version(graph, opset)
    if artifact.layers:
        insert_qdq(graph, artifact, target, weight_storage)
        if split_layers(artifact):
            apply_split_qdq(graph, artifact)
        insert_attention_qdq(graph, sites, target)
        if target == "openvino" and fold:
            fold_for_openvino(graph)
    if precision == "fp16":
        del graph.graph.value_info[:]  # the opset converter's shape inference: optional, and float32-typed
        to_fp16(graph, table_fp32=table_fp32)
    set_metadata(graph, artifact, target, model.sample_shape, rows, precision, attention)
    check_finite_graph(graph)
    if not is_large(graph):  # a > 2 GB graph is checked from its file by onnx.checker in save_onnx_atomic
        onnx.checker.check_model(graph)
    if target == "tensorrt" and artifact.layers:
        from tfmq_export.export.lint import format_violations, lint_tensorrt

        violations = lint_tensorrt(graph)
        if violations:
            raise TfmqError("exported graph breaks TensorRT's Q/DQ rules:\n" + format_violations(violations))
    return graph


def _is_onnx_model(path: Path) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (an empty file parses as an empty proto)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf DecodeError and friends
        return False
    return model.ir_version > 0 and model.HasField("graph")


def check_onnx_output(out_path: Path) -> None:
    """Before any work: ``--out`` must be writable, and an existing file there must be an ONNX model.

    Overwriting an earlier export is what re-running does; overwriting anything else is a typo.
    """
    out_path = Path(out_path)
    check_writable(out_path, "--out")
    if out_path.is_file() and not _is_onnx_model(out_path):
        raise TfmqError(f"--out {out_path} exists and is not an ONNX model; refusing to overwrite it "
                        "(remove it or choose another path)")


def export_onnx(model: LoadedModel, artifact: CalibrationArtifact, out_path: Path, target: str = "tensorrt", *,
                copy_unet: bool = True, timesteps: str = "sampler", precision: str = "fp32",
                weight_storage: str = "int8", fold: bool = True, attention: str | None = None) -> Path:
    """Build and atomically write the exported graph; returns the path.

    ``copy_unet=False`` traces ``model``'s own UNet (its temporal branch is replaced in place, so the
    model is spent afterwards): one UNet less at peak memory, for a > 2 GB export in a process that
    ends after it (``benchmarks/sd15_cpu.py``). The graph is the same. ``timesteps``: the table's
    rows (``table_rows``). ``precision``, ``weight_storage``, ``fold``, ``attention``: ``build_onnx``'s.
    """
    if target not in TARGETS:
        raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(TARGETS)})")
    default_weight_storage(target, weight_storage)  # a refused combination costs nothing
    default_attention(target, attention)
    check_onnx_output(Path(out_path))
    graph = build_onnx(model, artifact, target, copy_unet=copy_unet, timesteps=timesteps, precision=precision,
                       weight_storage=weight_storage, fold=fold, attention=attention)
    save_onnx_atomic(graph, Path(out_path))
    return Path(out_path)
