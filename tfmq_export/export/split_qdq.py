"""Split quantization of concatenated skip inputs in the Q/DQ graph (qdiff's ``split_skip``).

An up-block ResBlock's ``conv1`` / ``conv_shortcut`` input is ``cat([h, skip], dim=1)``; Q-Diffusion
quantizes the two halves with their own scales. One INT8 convolution takes one input scale, so the
graph computes the same function as two convolutions over the channel halves:

    conv(cat(DQ(Q(a, s_a)), DQ(Q(b, s_b))), W) + bias
      = conv(DQ(Q(a, s_a)), W[:, :c]) + bias + conv(DQ(Q(b, s_b)), W[:, c:])

i.e. ``Split -> (Q/DQ -> Conv) x 2 -> Add``, each Conv with integer weights + per-channel
DequantizeLinear (the same weight scales), so TensorRT and onnxruntime can still run both as INT8
convolutions. Call ``apply_split_qdq`` on the graph that ``qdq.insert_qdq`` returned, with an
artifact whose tensors carry ``{layer}.input_split`` (int64 channel) and
``{layer}.input_scale_split`` (float32 scalar).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.qdq import onnx_scope


def split_layers(artifact: CalibrationArtifact) -> dict[str, int]:
    """{layer: split channel} of the artifact's split inputs."""
    return {
        key.removesuffix(".input_split"): int(value)
        for key, value in artifact.tensors.items()
        if key.endswith(".input_split")
    }


def _node(g: GraphIndex, name: str, layer: str) -> onnx.NodeProto:
    found = g.nodes_named(name)
    if len(found) != 1:
        raise TfmqError(f"layer {layer}: expected one node {name} in the Q/DQ graph, found {len(found)}")
    return found[0]


def apply_split_qdq(model: onnx.ModelProto, artifact: CalibrationArtifact) -> onnx.ModelProto:
    """Rewrite every split layer's ``Q/DQ -> Conv`` as ``Split -> (Q/DQ -> Conv) x 2 -> Add`` (in place)."""
    g = GraphIndex(model)
    for layer, split in split_layers(artifact).items():
        record = artifact.layers.get(layer)
        if record is None or record.kind != "conv" or record.wbits >= 16 or record.abits >= 16:
            raise TfmqError(f"layer {layer}: split quantization needs a quantized Conv (W and A)")
        scope = onnx_scope(layer)
        q = _node(g, f"{scope}input_QuantizeLinear", layer)
        dq = _node(g, f"{scope}input_DequantizeLinear", layer)
        wdq = _node(g, f"{scope}weight_DequantizeLinear", layer)
        conv = next((n for n, i in g.consumers(dq.output[0]) if n.op_type == "Conv" and i == 0), None)
        if conv is None or conv.input[1] != wdq.output[0]:
            raise TfmqError(f"layer {layer}: no Conv reads the input and weight DequantizeLinear")
        if any(a.name == "group" and a.i != 1 for a in conv.attribute):
            raise TfmqError(f"layer {layer}: split quantization of a grouped convolution is not supported")
        weight = numpy_helper.to_array(g.inits[wdq.input[0]])
        channels = weight.shape[1]
        if not 0 < split < channels:
            raise TfmqError(f"layer {layer}: split channel {split} outside (0, {channels})")
        x, scale, zero_point = q.input
        second_scale = f"{scope}input_split_scale"
        model.graph.initializer.append(numpy_helper.from_array(
            np.asarray(artifact.layer_tensor(layer, "input_scale_split"), dtype=np.float32).reshape(()), second_scale))
        sizes = f"{scope}input_split_sizes"
        model.graph.initializer.append(numpy_helper.from_array(np.array([split, channels - split], np.int64), sizes))
        new: list[onnx.NodeProto] = [
            helper.make_node("Split", [x, sizes], [f"{scope}input_a", f"{scope}input_b"], axis=1,
                             name=f"{scope}input_Split"),
        ]
        partial: list[str] = []
        axis = [a for a in wdq.attribute if a.name == "axis"]
        for part, s, cols in (("a", scale, slice(0, split)), ("b", second_scale, slice(split, channels))):
            w_name = f"{layer}.weight_int_{part}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[:, cols]), w_name))
            new += [
                helper.make_node("QuantizeLinear", [f"{scope}input_{part}", s, zero_point], [f"{scope}input_{part}_q"],
                                 name=f"{scope}input_{part}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{scope}input_{part}_q", s, zero_point],
                                 [f"{scope}input_{part}_dq"], name=f"{scope}input_{part}_DequantizeLinear"),
            ]
            w_dq = helper.make_node("DequantizeLinear", [w_name, *wdq.input[1:]], [f"{layer}.weight_{part}_dq"],
                                    name=f"{scope}weight_{part}_DequantizeLinear")
            w_dq.attribute.extend(axis)
            inputs = [f"{scope}input_{part}_dq", w_dq.output[0]]
            if part == "a" and len(conv.input) > 2 and conv.input[2]:
                inputs.append(conv.input[2])  # the bias once
            part_conv = helper.make_node("Conv", inputs, [f"{scope}conv_{part}"], name=f"{conv.name}_{part}")
            part_conv.attribute.extend(conv.attribute)
            new += [w_dq, part_conv]
            partial.append(part_conv.output[0])
        new.append(helper.make_node("Add", partial, [conv.output[0]], name=f"{scope}split_Add"))
        # replace the old nodes where the first of them stood (its input x is produced before)
        old = {id(n) for n in (q, dq, wdq, conv)}
        nodes = list(model.graph.node)
        first = min(i for i, n in enumerate(nodes) if id(n) in old)
        kept = [n for n in nodes if id(n) not in old]
        position = sum(1 for n in nodes[:first] if id(n) not in old)
        del model.graph.node[:]
        model.graph.node.extend(kept[:position] + new + kept[position:])
        g = GraphIndex(model)  # extend() copied every node: index the graph's own objects again
        g.drop_init_if_unused(wdq.input[0])
    return model


__all__ = ["apply_split_qdq", "split_layers"]
