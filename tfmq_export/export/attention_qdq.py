"""Q/DQ on the inputs of the attention score MatMul (``export-onnx --attention int8``).

The traced ``AttnProcessor2_0`` computes ``softmax((q * f) @ (k^T * f)) @ v`` with ``f = d ** -0.25``
(torch's decomposition of ``scaled_dot_product_attention``): the query is split into heads
(Reshape, Transpose) and multiplied by ``f``; the key likewise. OpenVINO fuses this into one
``ScaledDotProductAttention`` and runs it as an i8 MHA kernel only when a FakeQuantize sits on the
scaled query (not on ``to_q``'s output, not before the Mul: both measured to leave it f32) and one
on the key, where NNCF's INT8 IR places them: on ``to_k``'s output. So the query gets a Q/DQ after
its Mul with scale ``query_scale * f``, the key one on ``to_k``'s output (feeding its head-split
Reshape) with ``key_scale``. ``quant.attention`` says which attentions and which scales, and
simulates the same values.
"""

from __future__ import annotations

import onnx

from tfmq_export.errors import TfmqError
from tfmq_export.export.graph import GraphIndex
from tfmq_export.export.qdq import onnx_scope, qdq_pair
from tfmq_export.quant.attention import AttentionSite

__all__ = ["insert_attention_qdq"]


def _producer(g: GraphIndex, tensor: str, op_type: str) -> onnx.NodeProto | None:
    node = g.producer.get(tensor)
    return node if node is not None and node.op_type == op_type else None


def _head_split_source(g: GraphIndex, scaled: onnx.NodeProto) -> tuple[onnx.NodeProto, str] | None:
    """For the SDPA factor's Mul: (the head-split Reshape, the projection output it reads), or None."""
    for tensor in scaled.input:
        transpose = _producer(g, tensor, "Transpose")
        reshape = _producer(g, transpose.input[0], "Reshape") if transpose is not None else None
        if reshape is not None:
            return reshape, reshape.input[0]
    return None


def _reads_layer(g: GraphIndex, tensor: str, layer: str) -> bool:
    """Whether ``tensor`` is the output of ``layer``'s MatMul (or of its bias Add)."""
    node = g.producer.get(tensor)
    return node is not None and node.name.startswith(onnx_scope(layer)) and node.op_type in ("MatMul", "Add", "Gemm")


def _score_matmul(g: GraphIndex, site: AttentionSite) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]:
    """(score MatMul, query Mul, key head-split Reshape) of one attention, checked against the pattern."""
    scope = onnx_scope(site.name)
    refuse = TfmqError(f"attention {site.name}: the graph lacks the query/key pattern of {site.name}'s "
                       "AttnProcessor2_0 (Reshape, Transpose, Mul, MatMul, Softmax); export it with --attention float")
    scores = [n for n in g.graph.node if n.op_type == "MatMul" and n.name.startswith(scope) and "/to_" not in n.name
              and any(c.op_type == "Softmax" for c in g.consumer_nodes(n.output[0]))]
    if len(scores) != 1:
        raise refuse
    score = scores[0]
    query_mul, key_mul = (_producer(g, score.input[i], "Mul") for i in (0, 1))
    query = _head_split_source(g, query_mul) if query_mul is not None else None
    key = _head_split_source(g, key_mul) if key_mul is not None else None
    if query is None or key is None or not _reads_layer(g, query[1], site.query_layer) \
            or not _reads_layer(g, key[1], site.key_layer):
        raise refuse
    return score, query_mul, key[0]


def insert_attention_qdq(model: onnx.ModelProto, sites: list[AttentionSite], target: str) -> None:
    """Insert the query / key Q/DQ of every site into ``model`` (in place)."""
    g = GraphIndex(model)
    after: dict[int, list[onnx.NodeProto]] = {}
    for site in sites:
        score, query_mul, key_reshape = _score_matmul(g, site)
        scope = onnx_scope(site.name)
        query_pair = qdq_pair(g, query_mul.output[0], f"{scope}query", site.query_scale * site.sdpa_factor, target)
        g.set_input(score, 0, query_pair[1].output[0])
        after[id(query_mul)] = query_pair
        key = key_reshape.input[0]
        key_pair = qdq_pair(g, key, f"{scope}key", site.key_scale, target)
        g.set_input(key_reshape, 0, key_pair[1].output[0])
        after[id(g.producer[key])] = key_pair
    ordered: list[onnx.NodeProto] = []
    for node in model.graph.node:
        ordered.append(node)
        ordered += after.get(id(node), [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
