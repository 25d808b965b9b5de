"""FP16 float parts for an exported graph (``export-onnx --precision fp16``).

Why: TensorRT builds our graphs strongly typed, so every tensor runs in the type the ONNX declares.
A float32 graph therefore runs its GroupNorm, softmax, residual adds and unquantized layers in FP32
(TF32 at best), and its INT8 engine would be compared with FP16 engines that peers (ModelOpt's
diffusers example, demoDiffusion) build from FP16 graphs with Q/DQ. This pass turns the float parts
of a traced (and Q/DQ-injected) FP32 graph into FP16:

- every float initializer and Constant (weights of float layers, biases, the temporal tables,
  per-step factors, Q/DQ scales) becomes FP16, values beyond FP16's range clamped to +-65504
  (attention masks use float32's lowest value); ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``;
- Q/DQ scales in FP16 is what makes the activations between the pairs FP16: ONNX opset 19+ types
  ``QuantizeLinear``'s input like its scale and ``DequantizeLinear``'s output like its scale (the
  graph must be at opset >= ``FP16_OPSET``); a scale that FP16 cannot hold (underflow) is refused;
- the graph's float inputs and outputs keep the contract's float32 (``contract.INPUT_SAMPLE``...)
  with a Cast at each edge: one graph runs under every runner, sampler and bench unchanged;
- kept float32 (the one allowed FP32 island): ``Resize``'s roi/scales (float32 in every opset).

Why not a library: onnxruntime's ``transformers.float16`` converter is not Q/DQ-aware (it leaves
scales float32 unless forced, so the DequantizeLinear outputs would stay FP32) and ModelOpt's
AutoCast is not a dependency; the graphs this pass sees are the exporter's own (``lint`` checks the
result: ``precision_rules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import GraphIndex

__all__ = ["FP16_MAX", "FP16_OPSET", "FP32_SLOTS", "Fp16Report", "to_fp16"]

#: QuantizeLinear / DequantizeLinear take FP16 scales (and inputs) from opset 19
FP16_OPSET = 19
FP16_MAX = 65504.0
#: (op type, input index) that ONNX types float32 whatever the graph's precision
FP32_SLOTS = frozenset({("Resize", 1), ("Resize", 2)})
_TABLE_SUFFIX = ".table"


@dataclass
class Fp16Report:
    """What the conversion changed: for the note and the tests."""

    initializers: int = 0
    constants: int = 0
    casts: int = 0
    clamped: int = 0  #: float values beyond +-65504 set to +-65504
    scales: int = 0  #: Q/DQ scale tensors converted
    scale_rel_error: float = 0.0  #: the largest relative rounding of a scale value to FP16
    kept_fp32: list[str] = field(default_factory=list)


def _fp16(values: np.ndarray, report: Fp16Report) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    over = np.abs(values) > FP16_MAX
    report.clamped += int(np.count_nonzero(over & np.isfinite(values)))
    return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)


def _scale_names(graph: onnx.GraphProto) -> set[str]:
    return {n.input[1] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1}


def _check_scale(name: str, old: np.ndarray, new: np.ndarray, report: Fp16Report) -> None:
    """A scale must stay positive in FP16 (a zero scale divides by zero in QuantizeLinear)."""
    old64 = old.astype(np.float64)
    if np.any((new.astype(np.float64) == 0) & (old64 != 0)):
        raise TfmqError(f"--precision fp16: Q/DQ scale {name} (min {old64.min():.3g}) underflows FP16; "
                        "export with --precision fp32")
    rel = np.abs(new.astype(np.float64) - old64) / np.where(old64 == 0, 1.0, np.abs(old64))
    report.scales += 1
    report.scale_rel_error = max(report.scale_rel_error, float(rel.max(initial=0.0)))


def _fp32_only(g: GraphIndex, name: str) -> bool:
    users = g.consumers(name)
    return bool(users) and all((u.op_type, i) in FP32_SLOTS for u, i in users)


def _convert_initializers(g: GraphIndex, keep: set[str], scales: set[str], report: Fp16Report) -> None:
    for tensor in g.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or tensor.name in keep or _fp32_only(g, tensor.name):
            continue
        old = numpy_helper.to_array(tensor)
        new = _fp16(old, report)
        if tensor.name in scales:
            _check_scale(tensor.name, old, new, report)
        tensor.CopyFrom(numpy_helper.from_array(new, tensor.name))
        report.initializers += 1


def _convert_nodes(g: GraphIndex, scales: set[str], report: Fp16Report) -> None:
    """Constants, ConstantOfShape values and Casts to float32 (outside the FP32 slots)."""
    for node in g.graph.node:
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT and not _fp32_only(g, node.output[0]):
                    a.i = TensorProto.FLOAT16
                    report.casts += 1
            continue
        if node.op_type not in ("Constant", "ConstantOfShape") or _fp32_only(g, node.output[0]):
            continue
        for a in list(node.attribute):
            if a.name in ("value_float", "value_floats"):
                values = np.asarray(helper.get_attribute_value(a), dtype=np.float32)
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(_fp16(values, report))))
                report.constants += 1
            elif a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                old = numpy_helper.to_array(a.t)
                new = _fp16(old, report)
                if node.output[0] in scales:
                    _check_scale(node.output[0], old, new, report)
                a.t.CopyFrom(numpy_helper.from_array(new, a.t.name))
                report.constants += 1


def _cast_node(src: str, dst: str, to: int, name: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [src], [dst], to=to, name=name)


def _edge_casts(g: GraphIndex) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Casts after every float32 graph input and before every float32 graph output (renaming inside)."""
    head: list[onnx.NodeProto] = []
    tail: list[onnx.NodeProto] = []
    for value in g.graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT or value.name in g.inits:
            continue
        inner = f"{value.name}_fp16"
        for user, index in g.consumers(value.name):
            g.set_input(user, index, inner)
        head.append(_cast_node(value.name, inner, TensorProto.FLOAT16, f"/{value.name}_Cast_fp16"))
    for value in g.graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        producer = g.producer.get(value.name)
        if producer is None:
            raise TfmqError(f"--precision fp16: graph output {value.name} has no producer")
        inner = f"{value.name}_fp16"
        g.set_output(producer, list(producer.output).index(value.name), inner)
        for user, index in g.consumers(value.name):
            g.set_input(user, index, inner)
        tail.append(_cast_node(inner, value.name, TensorProto.FLOAT, f"/{value.name}_Cast_fp32"))
    return head, tail


def _table_casts(g: GraphIndex, keep: set[str]) -> dict[str, onnx.NodeProto]:
    """An FP32 table is gathered in FP32, then cast: {Gather name: its Cast}."""
    after: dict[str, onnx.NodeProto] = {}
    for node in g.graph.node:
        if node.op_type == "Gather" and node.input[0] in keep:
            out = node.output[0]
            g.set_output(node, 0, f"{out}_fp32")
            after[node.name] = _cast_node(f"{out}_fp32", out, TensorProto.FLOAT16, f"{node.name}_Cast_fp16")
    return after


def _retype_value_info(graph: onnx.GraphProto, fp32: set[str]) -> None:
    for value in graph.value_info:
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type == TensorProto.FLOAT and value.name not in fp32:
            tensor_type.elem_type = TensorProto.FLOAT16


def to_fp16(model: onnx.ModelProto, *, table_fp32: bool = False) -> Fp16Report:
    """Convert ``model``'s float parts to FP16 in place (its I/O stays float32); returns what changed.

    ``table_fp32`` keeps the temporal tables (initializers ``*.table``) FP32 and casts each gathered
    row to FP16 (the same values reach the graph: Cast and Gather commute; it only costs size; kept
    to measure that, see docs/BENCHMARKS.md).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if has_qdq and opset < FP16_OPSET:
        raise TfmqError(f"FP16 Q/DQ needs opset >= {FP16_OPSET}; the graph has opset {opset}")
    report = Fp16Report()
    g = GraphIndex(model)
    keep = {t.name for t in model.graph.initializer if t.name.endswith(_TABLE_SUFFIX)} if table_fp32 else set()
    report.kept_fp32 = sorted(keep)
    scales = _scale_names(model.graph)
    fp32_tensors = {name for name in [*g.inits, *g.constant_nodes] if _fp32_only(g, name)} | keep
    _convert_initializers(g, keep, scales, report)
    _convert_nodes(g, scales, report)
    after = _table_casts(g, keep)
    head, tail = _edge_casts(g)
    _retype_value_info(model.graph, fp32_tensors | {f"{o}_fp32" for o in after})
    ordered = list(head)
    for node in model.graph.node:
        ordered.append(node)
        if node.name in after:
            ordered.append(after[node.name])
    ordered += tail
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return report
