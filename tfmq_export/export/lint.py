"""Static checks of TensorRT's explicit-quantization rules on an exported Q/DQ ONNX graph.

TensorRT turns QuantizeLinear/DequantizeLinear pairs into INT8 (or INT4 weight-only) layers only
when the graph follows its rules; a graph that breaks them either fails to parse or silently runs
the layer in float. TensorRT is not available on most machines that export, so this lint checks
the rules on the ONNX graph itself, before any engine build, and names the offending node.

Rules (``LintViolation.rule``):

==========================  ====================================================================
zero-point                  Q/DQ zero points must be constant and all 0 (TensorRT is symmetric)
uint8                       unsigned Q/DQ types (uint8/uint4, or a Q without zero point, which
                            ONNX defines as uint8): TensorRT quantizes to signed INT8 only
quant-type                  a Q/DQ type TensorRT does not quantize to (int16, int32, ...)
scale-constant              a Q/DQ scale must be a build-time constant (initializer / Constant)
scale-value                 a Q/DQ scale must be positive and finite
per-channel-activation      a non-scalar scale on an activation (per-channel only for weights)
weight-axis                 per-channel weight scales must run along the output channel
blocked                     block quantization is only for INT4 weights
int4                        INT4 only as a blocked DQ of an initializer feeding MatMul/Gemm
int4-opset                  INT4 / blocked DequantizeLinear needs opset >= 21
integer-op                  QLinearConv / QLinearMatMul / ConvInteger / MatMulInteger /
                            DynamicQuantizeLinear (onnxruntime-style integer ops)
unsupported-op              an op missing from the onnx-tensorrt supported-operator list
opset                       an opset outside what TensorRT parses (or < 13 with Q/DQ)
weight-dq-placement         a weight DQ must feed input 1 of Conv/ConvTranspose/Gemm/MatMul
                            directly, or the layer is not fused with its weight
activation-dq               a layer with INT8 weights whose input 0 does not come from a DQ
                            (TensorRT then has no INT8 input and cannot run the layer in INT8)
q-without-dq                a QuantizeLinear output used by anything but a DequantizeLinear
dq-source                   a DequantizeLinear fed by neither a constant nor a QuantizeLinear
time-mlp                    a Sin/Cos feeding a Gemm/MatMul: the time-embedding MLP should be a
                            constant table gathered by step_index
==========================  ====================================================================
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from tfmq_export.errors import TfmqError

__all__ = [
    "TENSORRT_MAX_OPSET",
    "TENSORRT_MIN_OPSET",
    "TENSORRT_SUPPORTED_OPS",
    "LintViolation",
    "format_violations",
    "lint_onnx_file",
    "lint_tensorrt",
]

#: Operators marked supported ("Y") in onnx-tensorrt's docs/operators.md for TensorRT 10.15
#: ("supports operators in the inclusive range of opset 9 to opset 24"). Ops marked "N" there
#: (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul, DynamicQuantizeLinear, BitShift,
#: Bitwise*, Compress, Sequence*, String*, Unique, ...) are deliberately absent.
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    (
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Attention",
        "AveragePool",
        "BatchNormalization",
        "BlackmanWindow",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DeformConv",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GroupNormalization",
        "GRU",
        "HammingWindow",
        "HannWindow",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsInf",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RMSNormalization",
        "RNN",
        "RoiAlign",
        "RotaryEmbedding",
        "Round",
        "STFT",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "TensorScatter",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    )
)
TENSORRT_MIN_OPSET = 9
TENSORRT_MAX_OPSET = 24

#: onnxruntime's integer operators: an onnxruntime-target graph, not a TensorRT one
_INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
_WEIGHT_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_INT4_LAYERS = frozenset({"Gemm", "MatMul"})
_SIGNED_TYPES = frozenset({TensorProto.INT8, TensorProto.INT4})
_UNSIGNED_TYPES = frozenset({TensorProto.UINT8, TensorProto.UINT4})
_FLOAT8_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1")
    if hasattr(TensorProto, name)
)
#: how many edges after a Sin/Cos the time-embedding Gemm/MatMul may sit: diffusers' export is
#: Sin -> Concat -> Slice -> Concat (flip_sin_to_cos) -> Cast -> Gemm
_TIME_MLP_DEPTH = 8
#: the ops a sinusoidal embedding passes through on its way to the first Linear
_TIME_MLP_PATH_OPS = frozenset(
    {
        "Concat",
        "Slice",
        "Cast",
        "Mul",
        "Div",
        "Add",
        "Sub",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Transpose",
        "Split",
        "Identity",
        "Expand",
        "Pad",
        "Gather",
        "Where",
        "Flatten",
    }
)


@dataclass(frozen=True)
class LintViolation:
    """One broken rule: the node (its name, or ``OpType:first_output`` when unnamed), the rule id
    from the module docstring, and one sentence saying what is wrong."""

    node: str
    rule: str
    message: str


def _label(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def _attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


class _Graph:
    """Producer/consumer maps and constant lookup for the top-level graph."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | None) -> None:
        self.graph = model.graph
        self.base_dir = base_dir
        self.inits: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            for out in node.output:
                self.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, i))
            if node.op_type == "Constant" and node.output:
                self.constant_nodes[node.output[0]] = node
        self.graph_inputs = {v.name for v in model.graph.input} - set(self.inits)
        self.graph_outputs = {v.name for v in model.graph.output}

    def is_constant(self, name: str) -> bool:
        return name in self.inits or name in self.constant_nodes

    def const_dtype(self, name: str) -> int | None:
        if name in self.inits:
            return int(self.inits[name].data_type)
        node = self.constant_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return int(a.t.data_type)
                if a.name in ("value_float", "value_floats"):
                    return TensorProto.FLOAT
                if a.name in ("value_int", "value_ints"):
                    return TensorProto.INT64
        return None

    def const_shape(self, name: str) -> list[int] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        value = self.const_value(name)
        return None if value is None else list(value.shape)

    def const_value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], self.base_dir or "")
        node = self.constant_nodes.get(name)
        if node is None:
            return None
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name == "value_float":
                return np.array(a.f, dtype=np.float32)
            if a.name == "value_floats":
                return np.array(list(a.floats), dtype=np.float32)
            if a.name == "value_int":
                return np.array(a.i, dtype=np.int64)
            if a.name == "value_ints":
                return np.array(list(a.ints), dtype=np.int64)
        return None

    def quant_dtype(self, node: onnx.NodeProto, depth: int = 0) -> int | None:
        """The integer type a Q produces or a DQ consumes (None when it cannot be told)."""
        if len(node.input) > 2 and node.input[2]:
            return self.const_dtype(node.input[2])
        if node.op_type == "QuantizeLinear":
            out_dtype = _attr(node, "output_dtype", 0)
            # ONNX: without zero point and output_dtype, QuantizeLinear produces uint8
            return out_dtype if out_dtype else TensorProto.UINT8
        src = node.input[0]
        if self.is_constant(src):
            return self.const_dtype(src)
        producer = self.producer.get(src)
        if producer is not None and producer.op_type == "QuantizeLinear" and depth < 2:
            return self.quant_dtype(producer, depth + 1)
        return None

    def is_weight_dq(self, dq: onnx.NodeProto) -> bool:
        """A DQ of a constant, or of a Q whose input is a constant (float weights quantized at build)."""
        src = dq.input[0]
        if self.is_constant(src):
            return True
        producer = self.producer.get(src)
        return producer is not None and producer.op_type == "QuantizeLinear" and self.is_constant(producer.input[0])


def _dtype_name(dtype: int | None) -> str:
    return "unknown" if dtype is None else TensorProto.DataType.Name(dtype)


def _nested_graphs(node: onnx.NodeProto) -> Iterable[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _check_ops(model: onnx.ModelProto) -> list[LintViolation]:
    """Every op (nested bodies and local functions included) must be in TensorRT's parser list."""
    functions = {(f.domain, f.name): f for f in model.functions}
    out: list[LintViolation] = []

    def unsupported(nodes: Iterable[onnx.NodeProto], seen: frozenset[tuple[str, str]]) -> list[str]:
        bad: list[str] = []
        for n in nodes:
            key = (n.domain, n.op_type)
            if n.domain in ("", "ai.onnx"):
                if n.op_type not in TENSORRT_SUPPORTED_OPS:
                    bad.append(n.op_type)
            elif key in functions and key not in seen:
                bad += unsupported(functions[key].node, seen | {key})
            else:
                bad.append(f"{n.domain}::{n.op_type}")
            for g in _nested_graphs(n):
                bad += unsupported(g.node, seen)
        return bad

    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in _INTEGER_OPS:
            out.append(
                LintViolation(
                    _label(node),
                    "integer-op",
                    f"{node.op_type} is an onnxruntime integer op that TensorRT does not parse; export with "
                    "--target tensorrt (QuantizeLinear/DequantizeLinear around float Conv/MatMul/Gemm)",
                )
            )
            continue
        bad = unsupported([node], frozenset())
        if bad:
            names = ", ".join(sorted(set(bad)))
            out.append(
                LintViolation(
                    _label(node),
                    "unsupported-op",
                    f"{names} is not in TensorRT's ONNX parser supported-operator list (it would need a plugin)",
                )
            )
    return out


def _check_qdq_node(g: _Graph, node: onnx.NodeProto, opset: int) -> list[LintViolation]:
    """Type, zero point, scale and INT4 rules for one QuantizeLinear / DequantizeLinear."""
    out: list[LintViolation] = []
    label = _label(node)
    is_dq = node.op_type == "DequantizeLinear"
    dtype = g.quant_dtype(node)
    block_size = _attr(node, "block_size", 0) or 0

    # 1. type: signed INT8 / INT4 (FP8/FP4 are TensorRT types too, not used here but legal)
    if dtype in _UNSIGNED_TYPES:
        out.append(
            LintViolation(
                label,
                "uint8",
                f"{node.op_type} uses {_dtype_name(dtype)}: TensorRT quantizes to signed INT8 only "
                "(export with --target tensorrt: int8 with zero point 0)",
            )
        )
    elif dtype is not None and dtype not in _SIGNED_TYPES and dtype not in _FLOAT8_TYPES:
        out.append(
            LintViolation(
                label,
                "quant-type",
                f"{node.op_type} uses {_dtype_name(dtype)}, which TensorRT cannot quantize to",
            )
        )

    # 2. zero point: constant and 0 (skipped for unsigned types, already reported)
    if len(node.input) > 2 and node.input[2] and dtype not in _UNSIGNED_TYPES:
        zp_name = node.input[2]
        if not g.is_constant(zp_name):
            out.append(LintViolation(label, "zero-point", f"zero point {zp_name!r} is not a constant"))
        else:
            zp = g.const_value(zp_name)
            if zp is not None and np.any(zp.astype(np.int32) != 0):
                out.append(
                    LintViolation(
                        label,
                        "zero-point",
                        f"zero point {zp_name!r} is nonzero "
                        f"(max |zp| = {int(np.abs(zp.astype(np.int32)).max())}); "
                        "TensorRT quantization is symmetric",
                    )
                )

    # 3. scale: constant, positive, finite
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale_size = 1
    if not scale_name:
        out.append(LintViolation(label, "scale-constant", f"{node.op_type} has no scale input"))
    elif not g.is_constant(scale_name):
        producer = g.producer.get(scale_name)
        source = f"computed by {_label(producer)}" if producer is not None else "a graph input"
        out.append(
            LintViolation(
                label,
                "scale-constant",
                f"scale {scale_name!r} is {source}; TensorRT needs scales that are build-time constants",
            )
        )
    else:
        scale = g.const_value(scale_name)
        if scale is not None:
            scale_size = int(scale.size)
            values = scale.astype(np.float64)
            if not np.all(np.isfinite(values)) or np.any(values <= 0):
                out.append(
                    LintViolation(
                        label,
                        "scale-value",
                        f"scale {scale_name!r} has non-positive or non-finite entries (min {values.min():.3g})",
                    )
                )

    # 4. per-channel only for weights
    if scale_size > 1:
        weight_side = g.is_constant(node.input[0]) if not is_dq else g.is_weight_dq(node)
        if not weight_side:
            out.append(
                LintViolation(
                    label,
                    "per-channel-activation",
                    f"{node.op_type} on activation {node.input[0]!r} has {scale_size} scales; TensorRT takes "
                    "per-channel scales only for weights (activations need one scalar scale)",
                )
            )

    # 5. INT4 and block quantization
    is_int4 = dtype == TensorProto.INT4
    if block_size and not is_int4:
        out.append(
            LintViolation(
                label,
                "blocked",
                f"block quantization with {_dtype_name(dtype)}: TensorRT blocks only INT4 weights",
            )
        )
    if (is_int4 or block_size) and opset < 21:
        out.append(
            LintViolation(
                label,
                "int4-opset",
                f"INT4 / blocked {node.op_type} needs opset >= 21 (the model has opset {opset})",
            )
        )
    if is_int4:
        if not is_dq:
            out.append(
                LintViolation(
                    label,
                    "int4",
                    "INT4 QuantizeLinear: TensorRT's INT4 is weight-only (a DQ of an initializer)",
                )
            )
        else:
            if not g.is_constant(node.input[0]):
                out.append(LintViolation(label, "int4", "INT4 DequantizeLinear of a non-constant: INT4 is weight-only"))
            if not block_size:
                out.append(
                    LintViolation(
                        label,
                        "int4",
                        "INT4 DequantizeLinear without block_size: TensorRT needs blocked INT4",
                    )
                )
            users = g.consumers.get(node.output[0], [])
            bad = [u for u, i in users if u.op_type not in _INT4_LAYERS or i != 1]
            if bad:
                out.append(
                    LintViolation(
                        label,
                        "int4",
                        f"INT4 weight feeds {', '.join(sorted({u.op_type for u in bad}))}; "
                        "TensorRT takes INT4 only as input 1 of MatMul/Gemm "
                        "(4-bit conv weights must travel as INT8 values)",
                    )
                )
    return out


def _check_weight_dq(g: _Graph, dq: onnx.NodeProto) -> list[LintViolation]:
    """A weight DQ feeds input 1 of a weighted layer directly, with scales along output channels."""
    out: list[LintViolation] = []
    label = _label(dq)
    users = g.consumers.get(dq.output[0], [])
    if dq.output[0] in g.graph_outputs:
        out.append(LintViolation(label, "weight-dq-placement", "weight DequantizeLinear is a graph output"))
    for user, idx in users:
        if user.op_type not in _WEIGHT_LAYERS or idx != 1:
            out.append(
                LintViolation(
                    label,
                    "weight-dq-placement",
                    f"weight DequantizeLinear feeds input {idx} of {user.op_type} {_label(user)!r}; "
                    "it must feed input 1 of Conv/ConvTranspose/Gemm/MatMul directly so TensorRT fuses it",
                )
            )
    # weight axis: only for per-channel (not blocked) scales of a constant weight
    if _attr(dq, "block_size", 0) or not g.is_constant(dq.input[0]):
        return out
    scale_shape = g.const_shape(dq.input[1]) if g.is_constant(dq.input[1]) else None
    w_shape = g.const_shape(dq.input[0])
    if scale_shape is None or w_shape is None or int(np.prod(scale_shape or [1])) <= 1:
        return out
    rank = len(w_shape)
    axis = _attr(dq, "axis", 1)
    axis = axis + rank if axis is not None and axis < 0 else axis
    for user, idx in users:
        if idx != 1:
            continue
        if user.op_type == "Conv":
            want = 0
        elif user.op_type == "ConvTranspose":
            want = 1
        elif user.op_type == "Gemm":
            want = 0 if _attr(user, "transB", 0) else 1
        elif user.op_type == "MatMul":
            want = rank - 1
        else:
            continue
        n_scales = int(np.prod(scale_shape))
        if axis != want or w_shape[want] != n_scales:
            out.append(
                LintViolation(
                    label,
                    "weight-axis",
                    f"per-channel weight scale for {user.op_type} {_label(user)!r} runs along axis {axis} "
                    f"({n_scales} scales, weight {w_shape}); TensorRT needs the output-channel axis {want}",
                )
            )
    return out


def _check_time_mlp(g: _Graph) -> list[LintViolation]:
    """Sin/Cos reaching a Gemm/MatMul within a few edges: the sinusoidal time embedding's MLP."""
    out: list[LintViolation] = []
    for node in g.graph.node:
        if node.op_type not in ("Sin", "Cos"):
            continue
        queue: deque[tuple[str, int]] = deque((o, 0) for o in node.output)
        seen: set[str] = set()
        hit: onnx.NodeProto | None = None
        while queue and hit is None:
            tensor, depth = queue.popleft()
            for user, _ in g.consumers.get(tensor, []):
                if user.op_type in ("Gemm", "MatMul"):
                    hit = user
                    break
                if (
                    user.op_type in _TIME_MLP_PATH_OPS
                    and depth + 1 < _TIME_MLP_DEPTH
                    and user.output
                    and user.output[0] not in seen
                ):
                    seen.update(user.output)
                    queue.extend((o, depth + 1) for o in user.output)
        if hit is not None:
            out.append(
                LintViolation(
                    _label(node),
                    "time-mlp",
                    f"{node.op_type} feeds {hit.op_type} {_label(hit)!r}: the time-embedding MLP is "
                    "still in the graph; it should be a constant table gathered by step_index",
                )
            )
    return out


def lint_tensorrt(model: onnx.ModelProto, base_dir: str | os.PathLike[str] | None = None) -> list[LintViolation]:
    """Check ``model`` against TensorRT's explicit-quantization rules; ``[]`` means it passes.

    ``base_dir`` is where external tensor data lives (only needed when scales or zero points are
    stored outside the model file). The metadata ``tfmq.abits`` >= 16 marks a weight-only export:
    then a quantized layer's float input is expected and ``activation-dq`` is not checked.
    """
    g = _Graph(model, None if base_dir is None else str(base_dir))
    opset = _default_opset(model)
    out: list[LintViolation] = []
    meta = {p.key: p.value for p in model.metadata_props}
    weight_only = meta.get("tfmq.abits", "").strip().isdigit() and int(meta["tfmq.abits"]) >= 16
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)

    # 1. opset and operator support
    graph_label = model.graph.name or "graph"
    if not TENSORRT_MIN_OPSET <= opset <= TENSORRT_MAX_OPSET:
        out.append(
            LintViolation(
                graph_label,
                "opset",
                f"opset {opset} is outside what TensorRT parses ({TENSORRT_MIN_OPSET}..{TENSORRT_MAX_OPSET})",
            )
        )
    elif has_qdq and opset < 13:
        out.append(
            LintViolation(
                graph_label,
                "opset",
                f"opset {opset} < 13: per-channel Q/DQ (the axis attribute) needs opset 13",
            )
        )
    out += _check_ops(model)

    # 2. every Q/DQ node, then their placement
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            out += _check_qdq_node(g, node, opset)
        if node.op_type == "QuantizeLinear":
            users = g.consumers.get(node.output[0], [])
            bad = [u for u, _ in users if u.op_type != "DequantizeLinear"]
            if bad or node.output[0] in g.graph_outputs or not users:
                what = ", ".join(sorted({u.op_type for u in bad})) or "nothing / a graph output"
                out.append(
                    LintViolation(
                        _label(node),
                        "q-without-dq",
                        f"QuantizeLinear output goes to {what}; TensorRT needs every Q followed by a DequantizeLinear",
                    )
                )
        elif node.op_type == "DequantizeLinear":
            src = node.input[0]
            producer = g.producer.get(src)
            from_q = producer is not None and producer.op_type == "QuantizeLinear"
            if not g.is_constant(src) and not from_q:
                where = f"{producer.op_type} {_label(producer)!r}" if producer is not None else "graph input"
                out.append(
                    LintViolation(
                        _label(node),
                        "dq-source",
                        f"DequantizeLinear reads {src!r} from {where}; TensorRT only dequantizes "
                        "constants or the output of a QuantizeLinear (INT8 network inputs are not allowed)",
                    )
                )
            if g.is_weight_dq(node):
                out += _check_weight_dq(g, node)

    # 3. quantized layers take a quantized (DQ) activation, unless INT4 weight-only or weight-only export
    if not weight_only:
        for node in model.graph.node:
            if node.op_type not in _WEIGHT_LAYERS or len(node.input) < 2:
                continue
            wdq = g.producer.get(node.input[1])
            if wdq is None or wdq.op_type != "DequantizeLinear" or not g.is_weight_dq(wdq):
                continue
            if g.quant_dtype(wdq) == TensorProto.INT4 or _attr(wdq, "block_size", 0):
                continue  # W4A16: INT4 weights with float activations is TensorRT's weight-only path
            src = g.producer.get(node.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                where = "a graph input" if src is None else f"{src.op_type} {_label(src)!r}"
                out.append(
                    LintViolation(
                        _label(node),
                        "activation-dq",
                        f"{node.op_type} has INT8 weights but its input 0 comes from {where}, not a "
                        "DequantizeLinear; TensorRT cannot run it as an INT8 layer",
                    )
                )

    # 4. the time-embedding MLP must be gone
    out += _check_time_mlp(g)
    return out


def format_violations(violations: Iterable[LintViolation]) -> str:
    """A readable report: one line per violation, grouped by rule order of appearance."""
    items = list(violations)
    if not items:
        return "TensorRT lint: no violations."
    width = max(len(v.rule) for v in items)
    lines = [f"TensorRT lint: {len(items)} violation{'s' if len(items) != 1 else ''}"]
    lines += [f"  {v.rule:<{width}}  {v.node}: {v.message}" for v in items]
    return "\n".join(lines)


def lint_onnx_file(path: str | os.PathLike[str]) -> list[LintViolation]:
    """Load an ONNX file (external weights are not read, only small scales if they live outside)."""
    p = Path(path)
    if not p.is_file():
        raise TfmqError(f"{p} does not exist; pass the .onnx file written by `tfmq-export export-onnx`")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError for broken files
        raise TfmqError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return lint_tensorrt(model, base_dir=p.parent)
