"""Inject Q/DQ nodes from a calibration artifact into an exported full-precision graph.

The exporter traces the table UNet with torch's TorchScript-based ONNX exporter, whose node
names carry the module scope (``/unet/down_blocks.0/resnets.0/conv1/Conv``). Each quantized
layer of the artifact is found by that scope, then:
- its float weight initializer becomes integer weights + ``DequantizeLinear`` (per output
  channel, zero point 0; INT4 weight-only MatMul/Gemm weights as a blocked DequantizeLinear),
- its input gets ``QuantizeLinear -> DequantizeLinear`` with the per-tensor static scale.

Weight storage (``WEIGHT_STORAGES``). ``int8``: every quantized weight as INT8 values on its bits'
grid (a 4-bit weight takes a byte). ``int4``: 4-bit weights as ONNX INT4 initializers (two per
byte) with a per-axis DequantizeLinear, opset 21; the dequantized values are the same, so the
graph still computes the simulation. TensorRT has no INT4 convolution (INT4 only weight-only,
blocked, on MatMul/Gemm), so the ``tensorrt`` target refuses ``int4`` and stores W4 convs as INT8;
``int8`` is the default for both targets (``default_weight_storage`` says why).

Targets. ``tensorrt``: int8 activations, zero point 0 (TensorRT's rules). ``onnxruntime``:
uint8 activations with zero point 128 — the same dequantized values as int8/0, but onnxruntime
on x86 fuses only unsigned activations into int8 kernels — plus Q/DQ on Conv outputs (scale from
the calibrated output range) so that Conv fuses to QLinearConv; that extra rounding is the one
place where this target computes something the simulation does not. ``openvino``: int8 / zero
point 0 as ``tensorrt`` (no Conv-output Q/DQ; OpenVINO's CPU plugin picks u8 convolutions itself),
except the inputs of Linear (MatMul/Gemm) layers calibrated on the ``uint8-127`` grid
(``calibrate --linear-act-grid uint8-127``), which get uint8 with zero point 127: OpenVINO runs a
FullyConnected as an unsigned (u8) kernel only when its input range is [-127 s, 128 s], as NNCF's
are; with [-128 s, 127 s] it runs the signed one (measured slower on AVX512-VNNI CPUs,
docs/BENCHMARKS.md "How to profile"). The artifact's grid is the graph's, whatever the target:
``onnxruntime`` writes those inputs as uint8 / 127 too (onnxruntime fuses any uint8 zero point),
and ``tensorrt`` refuses such an artifact (signed int8 cannot hold +128). ``onnx_export.build_onnx``
then applies ``openvino_folds`` to the openvino graph (exact layout rewrites).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import GraphIndex
from tfmq_export.quant.state import conv_output_scale

__all__ = ["TARGETS", "WEIGHT_STORAGES", "check_target", "default_weight_storage", "insert_qdq", "needs_opset_21",
           "onnx_scope", "qdq_pair"]

TARGETS = ("tensorrt", "onnxruntime", "openvino")
#: ``--weight-storage`` (the first is the default, ``default_weight_storage`` says why)
WEIGHT_STORAGES = ("int8", "int4")
_WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")


def onnx_scope(layer: str, root: str = "unet") -> str:
    """Node-name prefix of a module: ``down_blocks.0.resnets.0.conv1`` -> ``/unet/down_blocks.0/resnets.0/conv1/``."""
    parts: list[str] = []
    for part in layer.split("."):
        if part.isdigit() and parts:
            parts[-1] += f".{part}"
        else:
            parts.append(part)
    return "/" + "/".join([root, *parts]) + "/"


def _find_layer_node(model: onnx.ModelProto, layer: str, inits: dict) -> onnx.NodeProto:
    scope = onnx_scope(layer)
    found = [
        n for n in model.graph.node
        if n.name.startswith(scope) and n.op_type in _WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits
    ]
    if len(found) != 1:
        raise TfmqError(f"layer {layer}: expected one Conv/MatMul/Gemm under {scope} in the graph, found {len(found)}")
    return found[0]


def _weight_layout(node: onnx.NodeProto) -> int:
    """Axis of the output channel in the node's weight tensor."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1  # MatMul B is [K, N]


def default_weight_storage(target: str, storage: str = "int8") -> str:
    """``storage`` checked for ``target``: TensorRT builds no INT4 convolution, so ``tensorrt`` refuses
    ``int4`` (its INT4 weight-only blocked MatMul/Gemm weights are written as INT4 whatever this says).

    Why int8 is the default for both targets (``python benchmarks/int4_deploy.py``, docs/INT4.md):
    onnxruntime has no INT4 convolution or int8-activation INT4 kernel, so INT4-stored W4A8 layers run
    as float kernels fed by a DequantizeLinear every call (about 9x slower than W8A8 on digits);
    OpenVINO reads INT4 as compressed i4 weights (smaller IR) but then runs those convolutions in
    float instead of int8. INT4 storage buys file bytes only."""
    if storage not in WEIGHT_STORAGES:
        raise TfmqError(f"unknown --weight-storage {storage!r} (choose {' or '.join(WEIGHT_STORAGES)})")
    if target == "tensorrt" and storage == "int4":
        raise TfmqError("--weight-storage int4 with --target tensorrt: TensorRT has no INT4 convolution (INT4 is "
                        "weight-only, blocked, on MatMul/Gemm); use --weight-storage int8 or --target onnxruntime")
    return storage


def check_target(target: str, artifact: CalibrationArtifact) -> None:
    """Refuse an unknown target, and ``tensorrt`` for an artifact whose Linear inputs were calibrated
    on the ``uint8-127`` grid (q up to +128, which TensorRT's signed int8 cannot hold)."""
    if target not in TARGETS:
        raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(TARGETS)})")
    shifted = [n for n, r in artifact.layers.items() if r.abits < 16 and artifact.act_grid(n) != "int8"]
    if target == "tensorrt" and shifted:
        raise TfmqError(f"--target tensorrt: this artifact quantizes {len(shifted)} Linear input(s) on the "
                        f"{artifact.linear_act_grid} grid ([-127, 128]), which TensorRT's int8 cannot hold; export it "
                        "with --target openvino or onnxruntime, or calibrate again with --linear-act-grid int8")


def _zero_point(target: str, grid: str) -> tuple[int, np.dtype]:
    """The zero point of an activation Q/DQ on ``grid``: uint8 127 (``uint8-127``), uint8 128 (int8 grid,
    onnxruntime: the same values as int8 / 0), int8 0 (int8 grid, tensorrt and openvino)."""
    if grid == "uint8-127":
        return 127, np.dtype(np.uint8)
    return (128, np.dtype(np.uint8)) if target == "onnxruntime" else (0, np.dtype(np.int8))


def _insert_weight_dq(g: GraphIndex, node: onnx.NodeProto, layer: str,
                      artifact: CalibrationArtifact, storage: str = "int8") -> list[onnx.NodeProto]:
    record = artifact.layers[layer]
    q = artifact.layer_tensor(layer, "weight_int").numpy().astype(np.int8)
    scale = artifact.layer_tensor(layer, "weight_scale").numpy().astype(np.float32)
    old = g.inits[node.input[1]]
    old_shape = list(old.dims)
    axis = _weight_layout(node)
    if axis == 1:
        q = q.T
    if list(q.shape) != old_shape:
        raise TfmqError(f"layer {layer}: artifact weight shape {list(q.shape)} does not match graph {old_shape}")
    int4_blocked = record.wbits == 4 and record.abits >= 16 and node.op_type in ("MatMul", "Gemm")
    int4 = record.wbits == 4 and (int4_blocked or storage == "int4")
    w_name = g.add_init(f"{layer}.weight_int", q, TensorProto.INT4 if int4 else None)
    if int4_blocked:
        # one block spans the whole input dimension: per-output-channel scales, written as blocked
        # quantization (opset 21), the only INT4 form TensorRT accepts
        k = q.shape[0] if axis == 1 else q.shape[1]
        block_axis = 0 if axis == 1 else 1
        s = scale.reshape(1, -1) if axis == 1 else scale.reshape(-1, 1)
        g.add_init(f"{layer}.weight_zero_point", np.zeros(s.shape, dtype=np.int8), TensorProto.INT4)
        s_name = g.add_init(f"{layer}.weight_scale", s)
        attrs = {"axis": block_axis, "block_size": int(k)}
    else:
        s_name = g.add_init(f"{layer}.weight_scale", scale)
        zero = np.zeros_like(scale, dtype=np.int8)
        g.add_init(f"{layer}.weight_zero_point", zero, TensorProto.INT4 if int4 else None)
        attrs = {"axis": axis}
    dq = helper.make_node(
        "DequantizeLinear", [w_name, s_name, f"{layer}.weight_zero_point"], [f"{layer}.weight_dq"],
        name=f"{onnx_scope(layer)}weight_DequantizeLinear", **attrs,
    )
    old_name = node.input[1]
    g.set_input(node, 1, dq.output[0])
    g.drop_init_if_unused(old_name)
    return [dq]


def qdq_pair(g: GraphIndex, tensor: str, prefix: str, scale: float, target: str,
              grid: str = "int8") -> list[onnx.NodeProto]:
    """QuantizeLinear -> DequantizeLinear on ``tensor`` (zero point: ``_zero_point``); returns the
    nodes (output ``{prefix}_dq``)."""
    s_name = g.add_init(f"{prefix}_scale", np.array(scale, dtype=np.float32))
    value, dtype = _zero_point(target, grid)
    zp = g.add_init(f"{prefix}_zero_point", np.array(value, dtype=dtype))
    q = helper.make_node("QuantizeLinear", [tensor, s_name, zp], [f"{prefix}_q"], name=f"{prefix}_QuantizeLinear")
    dq = helper.make_node("DequantizeLinear", [f"{prefix}_q", s_name, zp], [f"{prefix}_dq"],
                          name=f"{prefix}_DequantizeLinear")
    return [q, dq]


def _tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference can name (the factors broadcast over all but dim 0)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in infos if vi.type.tensor_type.HasField("shape")}


def _step_factor_nodes(g: GraphIndex, node: onnx.NodeProto, layer: str, artifact: CalibrationArtifact,
                       ranks: dict[str, int]) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Per-step factors around one layer (see ``quant.modules.StepFactorActQuantizer``): returns the
    nodes before it (``x * 1/r[step]``, placed ahead of its Q/DQ) and after it (``* r[step]``, then
    the bias, which is taken out of a Conv so that it is not scaled)."""
    if node.op_type not in ("Conv", "MatMul"):
        raise TfmqError(f"layer {layer}: per-step factors support Conv and MatMul, not {node.op_type}")
    x, out = node.input[0], node.output[0]
    rank = ranks.get(x)
    if rank is None:
        raise TfmqError(f"layer {layer}: the rank of its input is unknown; cannot place per-step factors")
    scope = onnx_scope(layer)
    factors = artifact.layer_tensor(layer, "input_step_factor").numpy().astype(np.float32)
    shape = g.add_init(f"{scope}step_factor_shape", np.array([-1] + [1] * (rank - 1), dtype=np.int64))
    nodes: dict[str, list[onnx.NodeProto]] = {"inv": [], "fwd": []}
    for kind, values in (("inv", 1.0 / factors), ("fwd", factors)):
        table = g.add_init(f"{layer}.input_step_factor_{kind}", values.astype(np.float32))
        nodes[kind] += [
            helper.make_node("Gather", [table, "step_index"], [f"{scope}step_factor_{kind}_rows"], axis=0,
                             name=f"{scope}step_factor_{kind}_Gather"),
            helper.make_node("Reshape", [f"{scope}step_factor_{kind}_rows", shape], [f"{scope}step_factor_{kind}"],
                             name=f"{scope}step_factor_{kind}_Reshape"),
        ]
    scaled_in = f"{scope}input_unscaled"
    nodes["inv"].append(helper.make_node("Mul", [x, f"{scope}step_factor_inv"], [scaled_in],
                                         name=f"{scope}step_factor_inv_Mul"))
    g.set_input(node, 0, scaled_in)
    raw = f"{scope}output_unscaled"
    g.set_output(node, 0, raw)
    after: list[onnx.NodeProto] = []
    bias = node.input[2] if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] else None
    scaled_out = out if bias is None else f"{scope}output_scaled"
    after.append(helper.make_node("Mul", [raw, f"{scope}step_factor_fwd"], [scaled_out],
                                  name=f"{scope}step_factor_fwd_Mul"))
    if bias is not None:
        g.drop_last_input(node)
        values = numpy_helper.to_array(g.inits[bias]).astype(np.float32)
        b = g.add_init(f"{layer}.bias_broadcast", values.reshape(1, -1, *([1] * (rank - 2))))
        after.append(helper.make_node("Add", [scaled_out, b], [out], name=f"{scope}bias_Add"))
        g.drop_init_if_unused(bias)
    return nodes["fwd"] + nodes["inv"], after


def insert_qdq(model: onnx.ModelProto, artifact: CalibrationArtifact, target: str,
               weight_storage: str = "int8") -> onnx.ModelProto:
    """Insert the artifact's Q/DQ into ``model`` (in place) and return it, topologically sorted.
    ``weight_storage``: ``WEIGHT_STORAGES`` (``int4`` needs the graph at opset 21)."""
    check_target(target, artifact)
    weight_storage = default_weight_storage(target, weight_storage)
    g = GraphIndex(model)
    factored = [layer for layer in artifact.layers if f"{layer}.input_step_factor" in artifact.tensors]
    ranks = _tensor_ranks(model) if factored else {}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to place before it
    after_nodes: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to place after it
    for layer, record in artifact.layers.items():
        node = _find_layer_node(model, layer, g.inits)
        before: list[onnx.NodeProto] = []
        factor_nodes: tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None = None
        if layer in factored:
            factor_nodes = _step_factor_nodes(g, node, layer, artifact, ranks)
            before += factor_nodes[0]
        if record.abits < 16:
            scale = float(artifact.layer_tensor(layer, "input_scale"))
            pair = qdq_pair(g, node.input[0], f"{onnx_scope(layer)}input", scale, target, artifact.act_grid(layer))
            g.set_input(node, 0, pair[1].output[0])
            before += pair
        if record.wbits < 16:
            before += _insert_weight_dq(g, node, layer, artifact, weight_storage)
        new_nodes[node.name] = before
        if factor_nodes is not None:
            after_nodes[node.name] = factor_nodes[1]
        # a factored layer's output is rescaled per step, so it gets no output Q/DQ (no QLinearConv)
        out_scale = conv_output_scale(layer, artifact) if target == "onnxruntime" and layer not in factored else None
        if out_scale is not None:
            out = node.output[0]
            if any(o.name == out for o in model.graph.output):
                raise TfmqError(f"layer {layer}: output Q/DQ on a graph output is not supported")
            users = g.consumers(out)
            pair = qdq_pair(g, out, f"{onnx_scope(layer)}output", out_scale, target)
            for user, index in users:
                g.set_input(user, index, pair[1].output[0])
            after_nodes[node.name] = pair
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:
        ordered += new_nodes.get(node.name, [])
        ordered.append(node)
        ordered += after_nodes.get(node.name, [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def needs_opset_21(artifact: CalibrationArtifact, weight_storage: str = "int8") -> bool:
    """INT4 DequantizeLinear (blocked, or any with ``int4`` storage) needs opset 21."""
    if weight_storage == "int4" and any(r.wbits == 4 for r in artifact.layers.values()):
        return True
    return any(r.wbits == 4 and r.abits >= 16 and r.kind == "linear" for r in artifact.layers.values())
