"""Small helpers the quantizers share for reading and rewriting an onnx.ModelProto with onnx's own
helpers: loading from a path or a proto, constant lookup, unique names, opset imports, saving."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ep_core.errors import InvalidArgument, NoSuchFile

MS_DOMAIN = "com.microsoft"


def load_model(model_input: "str | os.PathLike | onnx.ModelProto") -> onnx.ModelProto:
    """A private copy of the model (weights loaded, external data included)."""
    if isinstance(model_input, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(model_input)
        return m
    if isinstance(model_input, (str, os.PathLike)):
        if not Path(model_input).is_file():
            raise NoSuchFile(f"model file {str(model_input)!r} does not exist")
        return onnx.load(str(model_input))
    raise InvalidArgument(f"model_input must be a path or an onnx.ModelProto, got {type(model_input).__name__}")


def save_model(model: onnx.ModelProto, path: "str | os.PathLike", use_external_data_format: bool = False) -> None:
    path = str(path)
    if use_external_data_format or model.ByteSize() > 2 ** 31 - 2 ** 20:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in ((domain,) if domain else ("", "ai.onnx")):
            return int(o.version)
    return 0


def ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    """Import `domain` at `version` at least (the default domain is raised to `version` if lower)."""
    for o in model.opset_import:
        if o.domain == domain or (not domain and o.domain == "ai.onnx"):
            if o.version < version:
                o.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


class GraphIndex:
    """Initializers, Constant outputs and consumers of one graph, plus unique-name generation."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            for o in n.output:
                self.producer[o] = n
        self._used = set(self.initializers) | self.graph_inputs | set(self.producer)
        self._used |= {n.name for n in graph.node}
        self._added: list[onnx.TensorProto] = []

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer that is not overridable by a graph input, else None."""
        if name in self.initializers and name not in self.graph_inputs:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constants.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self._added.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def new_initializers(self) -> list[onnx.TensorProto]:
        return self._added


def float_dtype_of(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value the model declares or shape inference finds."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # an unusual model: fall back to what it declares
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    used |= _subgraph_inputs(graph.node)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _subgraph_inputs(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    names: set[str] = set()
    for n in nodes:
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {i for sn in g.node for i in sn.input}
                names |= _subgraph_inputs(g.node)
    return names


def selected(node: onnx.NodeProto, op_types: set[str], include: Iterable[str] | None,
             exclude: Iterable[str] | None) -> bool:
    """Whether the user's op-type and node-name filters let `node` be quantized."""
    if node.op_type not in op_types or node.domain not in ("", "ai.onnx"):
        return False
    if include and node.name not in set(include):
        return False
    return not (exclude and node.name in set(exclude))
