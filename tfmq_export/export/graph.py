"""One index of an ONNX graph for the Q/DQ passes and the lint: initializers, constants, producers,
consumers.

Why not onnx-graphsurgeon: a ``gs.import_onnx`` -> ``gs.export_onnx`` round trip of an exported
digits graph, with no edit at all, reorders the initializers (361 of 363 move) and drops the
metadata, so the exported file would no longer be the one earlier releases wrote for the same
artifact; the import alone also takes 21-41 ms against 1.6-2.4 ms for this index on those graphs
(``python benchmarks/export_identity.py graphsurgeon DIR`` measures both). The passes edit the
``ModelProto`` in place and keep this index in step through its ``set_input`` / ``set_output`` /
``drop_last_input`` / ``add_node`` / ``remove_node`` methods.

The index covers the top-level graph only (nested bodies are walked by the rules that need them).
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphIndex", "pack_4bit"]

#: a Constant node's scalar/list attributes -> (dtype, numpy type)
_CONSTANT_ATTRS: dict[str, tuple[int, type]] = {
    "value_float": (TensorProto.FLOAT, np.float32),
    "value_floats": (TensorProto.FLOAT, np.float32),
    "value_int": (TensorProto.INT64, np.int64),
    "value_ints": (TensorProto.INT64, np.int64),
}


def pack_4bit(array: np.ndarray) -> bytes:
    """ONNX INT4/UINT4 raw data: two values a byte, the first in the low nibble (an odd count pads
    with 0). Packed with numpy, not per value in Python: an SD-1.5 UNet has 860M weights."""
    flat = np.asarray(array).astype(np.int16).reshape(-1) & 0x0F
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=flat.dtype)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


class GraphIndex:
    """Producer and consumers of every tensor of ``model.graph``, its initializers and Constant nodes.

    Consumers are ``(node, input index)`` pairs in graph order; a node that reads a tensor twice is
    listed twice. ``base_dir`` is where external tensor data lives (only read by ``const_value``).
    """

    def __init__(self, model: onnx.ModelProto, base_dir: str | os.PathLike[str] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.base_dir = "" if base_dir is None else str(base_dir)
        self.inits: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            self.add_node(node)
        self.graph_outputs = {v.name for v in model.graph.output}

    # --- reading -------------------------------------------------------------------------------
    def consumers(self, tensor: str) -> list[tuple[onnx.NodeProto, int]]:
        """``(node, input index)`` of every indexed node reading ``tensor``."""
        return list(self._consumers.get(tensor, ()))

    def consumer_nodes(self, tensor: str) -> list[onnx.NodeProto]:
        """Nodes reading ``tensor``, each once, in graph order."""
        seen: list[onnx.NodeProto] = []
        for node, _ in self._consumers.get(tensor, ()):
            if not any(node is s for s in seen):
                seen.append(node)
        return seen

    def nodes_named(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.graph.node if n.name == name]

    def is_constant(self, name: str) -> bool:
        return name in self.inits or name in self.constant_nodes

    def const_dtype(self, name: str) -> int | None:
        if name in self.inits:
            return int(self.inits[name].data_type)
        node = self.constant_nodes.get(name)
        for a in node.attribute if node is not None else ():
            if a.name == "value":
                return int(a.t.data_type)
            if a.name in _CONSTANT_ATTRS:
                return _CONSTANT_ATTRS[a.name][0]
        return None

    def const_shape(self, name: str) -> list[int] | None:
        if name in self.inits:
            return list(self.inits[name].dims)
        value = self.const_value(name)
        return None if value is None else list(value.shape)

    def const_value(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name], self.base_dir)
        node = self.constant_nodes.get(name)
        for a in node.attribute if node is not None else ():
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in _CONSTANT_ATTRS:
                return np.array(helper.get_attribute_value(a), dtype=_CONSTANT_ATTRS[a.name][1])
        return None

    # --- editing (the graph and the index together) ----------------------------------------------
    def add_init(self, name: str, array: np.ndarray, data_type: int | None = None) -> str:
        """Append an initializer; ``data_type`` for types numpy cannot name (INT4: two values a byte)."""
        if data_type is None:
            tensor = numpy_helper.from_array(array, name)
        elif data_type in (TensorProto.INT4, TensorProto.UINT4):
            tensor = helper.make_tensor(name, data_type, list(array.shape), pack_4bit(array), raw=True)
        else:
            tensor = helper.make_tensor(name, data_type, list(array.shape), array.flatten().tolist())
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def drop_init_if_unused(self, name: str) -> None:
        if name in self.inits and not self._consumers.get(name):
            self.graph.initializer.remove(self.inits.pop(name))

    def add_node(self, node: onnx.NodeProto) -> None:
        """Index ``node`` (the caller places it in ``graph.node``)."""
        for out in node.output:
            self.producer[out] = node
        for i, name in enumerate(node.input):
            if name:
                self._consumers[name].append((node, i))
        if node.op_type == "Constant" and node.output:
            self.constant_nodes[node.output[0]] = node

    def remove_node(self, node: onnx.NodeProto) -> None:
        """Forget ``node`` (the caller takes it out of ``graph.node``)."""
        for i, name in enumerate(node.input):
            self._unlink(name, node, i)
        for out in node.output:
            if self.producer.get(out) is node:
                del self.producer[out]

    def set_input(self, node: onnx.NodeProto, index: int, tensor: str) -> None:
        self._unlink(node.input[index], node, index)
        node.input[index] = tensor
        if tensor:
            self._consumers[tensor].append((node, index))

    def drop_last_input(self, node: onnx.NodeProto) -> None:
        self._unlink(node.input[-1], node, len(node.input) - 1)
        del node.input[-1]

    def set_output(self, node: onnx.NodeProto, index: int, tensor: str) -> None:
        if self.producer.get(node.output[index]) is node:
            del self.producer[node.output[index]]
        node.output[index] = tensor
        self.producer[tensor] = node

    def _unlink(self, tensor: str, node: onnx.NodeProto, index: int) -> None:
        users = self._consumers.get(tensor)
        if users:
            users[:] = [(n, i) for n, i in users if not (n is node and i == index)]
