"""Running exported graphs in the export tests, and comparing a Q/DQ graph with the simulation layer by layer.

``run_graph``: one onnxruntime session, literal (no optimisation: the graph's own meaning, no int8
fusion) or optimised. ``probe_layers``: each quantized layer's input (before its QuantizeLinear) and
output (its Conv/MatMul) are made graph outputs; the simulated layer is run on that very input, so no
rounding flip upstream can enter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from tests.conftest import rel_l2
from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.export.qdq import onnx_scope


def run_graph(graph: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str] | None = None,
              literal: bool = True) -> dict[str, np.ndarray]:
    """``{output: value}`` of ``graph`` on ``feed`` (``names``: these outputs; default all)."""
    options = ort.SessionOptions()
    if literal:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = names or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def probe_layers(graph: onnx.ModelProto, artifact: CalibrationArtifact, feed: dict[str, np.ndarray],
                 literal: bool = False) -> tuple[dict[str, tuple[str, str, bool]], dict[str, np.ndarray]]:
    """``({layer: (input, output, has_bias)}, {tensor: value})`` from one onnxruntime run of ``graph``
    (``literal``: optimisations off)."""
    nodes = {n.name: n for n in graph.graph.node}
    probes: dict[str, tuple[str, str, bool]] = {}
    for layer in artifact.layers:
        q = nodes[f"{onnx_scope(layer)}input_QuantizeLinear"]
        consumer = next(n for n in graph.graph.node if f"{onnx_scope(layer)}input_dq" in n.input)
        probes[layer] = (q.input[0], consumer.output[0], len(consumer.input) > 2 or consumer.op_type == "Conv")
    for tensor in {t for probe in probes.values() for t in probe[:2]}:
        graph.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return probes, run_graph(graph, feed, literal=literal)


def worst_layer_error(probes: dict[str, tuple[str, str, bool]], values: dict[str, np.ndarray],
                      sim_layers: dict[str, torch.nn.Module]) -> float:
    """Largest relative L2 error of a graph layer against its simulated layer on the same input."""
    worst = 0.0
    for layer, (inp, out, has_bias) in probes.items():
        qlayer = sim_layers[layer]
        with torch.no_grad():
            expected = qlayer(torch.from_numpy(values[inp])).numpy()
        if not has_bias and qlayer.bias is not None:  # Linear exported as MatMul, bias in a later Add
            expected = expected - qlayer.bias.numpy()
        worst = max(worst, rel_l2(values[out], expected))
    return worst
