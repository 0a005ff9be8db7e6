"""Offline optimization: write the optimized, partitioned graph as an ONNX model, and load it back
without redoing the work.

`SessionOptions.optimized_model_filepath` makes a session write its graph after optimization,
partitioning and copy insertion. Fused ops and copy nodes (`MemcpyFromHost`, `MemcpyToHost`,
`Memcpy`) are written in our own domain `com.ep_core`, declared in the model's opset imports;
nodes a provider compiled as one group are written as their original member nodes. Every value's
type goes into `value_info`, and large initializers go to `<file>.data` next to the model
(onnx's external-data format, 64-byte aligned).

Loading such a model is `ep_core.load`'s job, like any other model: it is validated in full
(metadata can never switch validation off), its external data read under the same rules; only
the session's optimizer is skipped, and its copy nodes are dropped (partitioning puts them back
for the session's providers).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .graph import Graph, Node, ValueInfo
from .graph_edit import OWN_DOMAIN, OWN_DOMAIN_VERSION
from .load import COPY_OPS, META_OPTIMIZED

FORMAT_VERSION = "1"
EXTERNAL_MIN_BYTES = 1024   # smaller tensors stay inline (a mapping per tensor would cost more)
ALIGN = 64
_EXTERNAL_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                          np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                          np.uint64, np.bool_, np.complex64, np.complex128)}


# --- writing ----------------------------------------------------------------------------------

class _ExternalData:
    """Appends raw little-endian tensor bytes to one side file, aligned for memory mapping."""

    def __init__(self, model_path: str):
        self.location = os.path.basename(model_path) + ".data"
        self.path = os.path.join(os.path.dirname(os.path.abspath(model_path)), self.location)
        self.file = open(self.path, "wb")
        self.offset = 0

    def tensor(self, name: str, value: np.ndarray) -> TensorProto:
        arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        pad = (-self.offset) % ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        data = arr.tobytes()
        self.file.write(data)
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype),
                        dims=list(value.shape), data_location=TensorProto.EXTERNAL)
        for key, v in (("location", self.location), ("offset", str(self.offset)), ("length", str(len(data)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, v
        self.offset += len(data)
        return t

    def close(self) -> None:
        self.file.close()


def _tensor(name: str, value: np.ndarray, external: _ExternalData | None) -> TensorProto:
    value = np.asarray(value)
    if external is not None and value.nbytes >= EXTERNAL_MIN_BYTES and value.dtype in _EXTERNAL_DTYPES:
        return external.tensor(name, value)
    return numpy_helper.from_array(value, name)


def _schema_attr_type(node: Node, name: str) -> int:
    try:
        return onnx.defs.get_schema(node.op_type, node.opset, node.domain).attributes[name].type
    except Exception:
        return AttributeProto.INTS


def _attribute(node: Node, name: str, value: Any) -> AttributeProto:
    """Python attribute value (as graph_from_proto parsed it) back to an AttributeProto."""
    if isinstance(value, Graph):
        return helper.make_attribute(name, graph_to_proto(value, None))
    if isinstance(value, np.ndarray):
        if name == "sparse_value":  # densified at load: write it as the dense `value` instead
            name = "value"
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, onnx.TypeProto):
        return helper.make_attribute(name, value)
    if isinstance(value, list):
        if not value:
            attr = AttributeProto(name=name, type=_schema_attr_type(node, name))
            return attr
        if isinstance(value[0], Graph):
            return helper.make_attribute(name, [graph_to_proto(g, None) for g in value])
        if isinstance(value[0], np.ndarray):
            return helper.make_attribute(name, [numpy_helper.from_array(v) for v in value])
        if isinstance(value[0], str):
            return helper.make_attribute(name, [v.encode("utf-8", errors="surrogateescape") for v in value])
    if isinstance(value, str):
        return helper.make_attribute(name, value.encode("utf-8", errors="surrogateescape"))
    return helper.make_attribute(name, value)


def _node_proto(node: Node, rename: dict[str, str]) -> onnx.NodeProto:
    domain = OWN_DOMAIN if node.op_type in COPY_OPS and not node.domain else node.domain
    inputs = [rename.get(i, i) for i in node.inputs]
    proto = helper.make_node(node.op_type, inputs, list(node.outputs), name=node.name,
                             domain=domain or None, doc_string=node.doc or None)
    proto.attribute.extend(_attribute(node, k, v) for k, v in sorted(node.attrs.items()))
    return proto


def _value_info(v: ValueInfo | str, type_of) -> onnx.ValueInfoProto:
    name = v if isinstance(v, str) else v.name
    tp = type_of(name) if isinstance(v, str) else (v.type or type_of(name))
    vi = onnx.ValueInfoProto(name=name)
    if tp is not None:
        vi.type.CopyFrom(tp)
    return vi


def graph_to_proto(graph: Graph, external: _ExternalData | None, nodes: list[Node] | None = None,
                   rename: dict[str, str] | None = None) -> onnx.GraphProto:
    """GraphProto of a Graph (recursively), with the types of every value it names. `rename`
    maps values to the names written (device copies of constants -> the constant)."""
    nodes = graph.nodes if nodes is None else nodes
    gp = onnx.GraphProto(name=graph.name or "graph")
    gp.node.extend(_node_proto(n, rename or {}) for n in nodes)
    # an IR < 4 model lists its initializers as inputs, constants all the same: written at IR
    # >= 4 (below) they would become overridable, so only the feedable inputs are listed
    constants = graph.constant_initializers()
    gp.input.extend(_value_info(v, graph.type_of) for v in graph.inputs if v.name not in constants)
    gp.output.extend(_value_info(v, graph.type_of) for v in graph.outputs)
    gp.initializer.extend(_tensor(k, v, external) for k, v in graph.initializers.items())
    declared = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | set(graph.initializers)
    named: list[str] = []
    for n in nodes:
        for name in list(n.inputs) + list(n.outputs):
            if name and name not in declared and graph.type_of(name) is not None:
                declared.add(name)
                named.append(name)
    gp.value_info.extend(_value_info(name, graph.type_of) for name in named)
    return gp


def _written_nodes(graph: Graph, assigned: dict) -> list[Node]:
    """Topological node list with compiled groups expanded into their member nodes."""
    out: list[Node] = []
    for n in graph.nodes:   # placement left them in topological order
        sub = assigned[n].subgraph
        out.extend(sub.topological_order() if sub is not None else [n])
    return out


def save_optimized(path: str, source: onnx.ModelProto, placement: Any, options: Any = None,
                   providers: list | None = None) -> str:
    """Write a session's optimized, partitioned graph (its `Placement`) to `path`; returns the path."""
    graph, assigned = placement.graph, placement.assigned
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    external = _ExternalData(path)
    try:
        nodes = _written_nodes(graph, assigned)
        rename = {placed: name for placed, (name, _) in placement.device_constants.items()}
        gp = graph_to_proto(graph, external, nodes, rename)
    finally:
        external.close()
    if external.offset == 0:
        os.remove(external.path)
    opsets = dict(graph.opset_imports)
    for o in source.opset_import:
        opsets.setdefault("" if o.domain == "ai.onnx" else o.domain, o.version)
    if any(n.domain == OWN_DOMAIN or n.op_type in COPY_OPS for n in nodes):
        opsets.setdefault(OWN_DOMAIN, OWN_DOMAIN_VERSION)
    model = helper.make_model(gp, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              producer_name=source.producer_name or "ep_core",
                              producer_version=source.producer_version, domain=source.domain,
                              model_version=source.model_version, doc_string=source.doc_string)
    model.ir_version = max(source.ir_version, 4)   # external data needs IR >= 4
    model.functions.extend(source.functions)
    placement: dict[str, int] = {}
    for n in nodes:
        a = assigned.get(n)
        key = a.provider.type if a is not None else "member-of-compiled-group"
        placement[key] = placement.get(key, 0) + 1
    meta = {p.key: p.value for p in source.metadata_props}
    meta.update({
        META_OPTIMIZED: FORMAT_VERSION,
        "ep_core.optimization_level": str(int(getattr(options, "graph_optimization_level", 99))),
        "ep_core.providers": ",".join(p.type for p in providers or []),
        "ep_core.placement": json.dumps(placement, sort_keys=True),
        "ep_core.source_ir_version": str(source.ir_version),
    })
    helper.set_model_props(model, meta)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path
