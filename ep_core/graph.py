"""In-memory graph built from an ONNX model after the checker and shape inference have run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from .errors import InvalidGraph
from .types import tensor_dtype, tensor_shape


@dataclass
class ValueInfo:
    """Name and declared type of a value (graph input/output or intermediate)."""
    name: str
    type: onnx.TypeProto | None = None

    @property
    def dtype(self) -> np.dtype | None:
        return tensor_dtype(self.type)

    @property
    def shape(self) -> list | None:
        return tensor_shape(self.type)


@dataclass(eq=False)
class Node:
    """One operator invocation. `inputs` use '' for omitted optional inputs."""
    op_type: str
    inputs: list[str]
    outputs: list[str]
    name: str = ""
    domain: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    since_version: int = 0      # since_version of the schema that applies at the model's opset
    opset: int = 0              # the model's opset for this node's domain
    implicit_inputs: list[str] = field(default_factory=list)  # outer-scope values its subgraphs read
    input_types: list = field(default_factory=list)   # onnx.TypeProto or None, per input
    output_types: list = field(default_factory=list)  # onnx.TypeProto or None, per output
    doc: str = ""

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def input_dtypes(self) -> list:
        return [tensor_dtype(t) for t in self.input_types]

    @property
    def output_dtypes(self) -> list:
        return [tensor_dtype(t) for t in self.output_types]

    @property
    def subgraphs(self) -> list[Graph]:
        out = []
        for v in self.attrs.values():
            if isinstance(v, Graph):
                out.append(v)
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                out.extend(v)
        return out

    def describe(self) -> str:
        dom = self.domain or "ai.onnx"
        return f"node '{self.name}' ({dom}::{self.op_type}, opset {self.opset})"


@dataclass(eq=False)
class Graph:
    """Nodes in model order plus the values that connect them."""
    nodes: list[Node]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray]
    value_info: dict[str, ValueInfo]
    opset_imports: dict[str, int]
    name: str = ""
    outer_scope: set[str] = field(default_factory=set)  # names visible from enclosing graphs
    ir_version: int = onnx.IR_VERSION                    # of the model the graph belongs to

    def overridable_initializers(self) -> set[str]:
        """THE constness rule (ONNX IR spec): an initializer may be replaced by a feed only when it
        is also listed as a graph input and the model's IR version is 4 or later. Every stage asks
        this method (or `constant_initializers`); nothing else decides it."""
        if self.ir_version < 4:
            return set()
        return {v.name for v in self.inputs if v.name in self.initializers}

    def constant_initializers(self) -> set[str]:
        """Initializers no feed can replace: their values are known at session build."""
        return set(self.initializers) - self.overridable_initializers()

    def check_valid(self, constants: Iterable[str] = ()) -> None:
        """The invariant every build stage keeps (raises InvalidGraph naming the culprit): nodes
        in topological order, every input fed, constant (initializer, `constants`, outer scope) or
        produced by an earlier node, each value produced once, every output produced, every
        value's type known where the model declared or inference derived it."""
        available = set(self.initializers) | {v.name for v in self.inputs} | self.outer_scope
        available |= set(constants)
        fixed = set(available)
        for n in self.nodes:
            for i in list(n.inputs) + n.implicit_inputs:
                if i and i not in available:
                    raise InvalidGraph(f"graph '{self.name}': {n.describe()} reads '{i}', which is not "
                                       f"fed, constant or produced by an earlier node")
            for o in n.outputs:
                if not o:
                    continue
                if o in available:
                    what = "a graph input or constant" if o in fixed else "produced twice"
                    raise InvalidGraph(f"graph '{self.name}': {n.describe()} writes '{o}', which is {what}")
                available.add(o)
        for v in self.outputs:
            if v.name not in available:
                raise InvalidGraph(f"graph '{self.name}': output '{v.name}' is never produced")

    def type_of(self, name: str) -> onnx.TypeProto | None:
        vi = self.value_info.get(name)
        return vi.type if vi is not None else None

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in list(n.inputs) + n.implicit_inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def topological_order(self) -> list[Node]:
        """Kahn's order, stable w.r.t. model order; raises InvalidGraph on cycles/dangling inputs."""
        available = set(self.initializers) | {v.name for v in self.inputs} | self.outer_scope | {""}
        produced = self.producers()
        pending = {id(n): n for n in self.nodes}
        waiting: dict[str, list[Node]] = {}
        missing: dict[int, int] = {}
        ready = []
        for n in self.nodes:
            needs = {i for i in list(n.inputs) + n.implicit_inputs if i not in available}
            for i in needs:
                if i not in produced:
                    raise InvalidGraph(f"{n.describe()}: input '{i}' is not a graph input, initializer "
                                       f"or output of any node")
                waiting.setdefault(i, []).append(n)
            missing[id(n)] = len(needs)
            if not needs:
                ready.append(n)
        order: list[Node] = []
        position = {id(n): k for k, n in enumerate(self.nodes)}
        import heapq
        heap = [(position[id(n)], id(n)) for n in ready]
        heapq.heapify(heap)
        while heap:
            _, nid = heapq.heappop(heap)
            n = pending.pop(nid)
            order.append(n)
            for o in n.outputs:
                for c in waiting.pop(o, []):
                    missing[id(c)] -= 1
                    if missing[id(c)] == 0:
                        heapq.heappush(heap, (position[id(c)], id(c)))
        if pending:
            names = ", ".join(sorted(n.name or n.op_type for n in pending.values())[:5])
            raise InvalidGraph(f"graph '{self.name}' has a cycle through: {names}")
        return order


def stable_topological_order(deps: list[set[int]]) -> list[int]:
    """Positions 0..n-1 ordered so each comes after the positions in its `deps`, keeping the
    given order wherever the dependencies allow. Shorter than n when there is a cycle (the
    positions on or behind it are left out)."""
    import heapq
    waiting: dict[int, list[int]] = {}
    missing = []
    for k, d in enumerate(deps):
        missing.append(len(d))
        for p in d:
            waiting.setdefault(p, []).append(k)
    ready = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for c in waiting.get(k, ()):
            missing[c] -= 1
            if missing[c] == 0:
                heapq.heappush(ready, c)
    return order


def attribute_value(attr: AttributeProto, opset_imports: dict[str, int], outer: set[str],
                    ir_version: int = onnx.IR_VERSION) -> Any:
    """Python value of an attribute; subgraphs become Graph objects."""
    t = attr.type
    if t == AttributeProto.FLOAT:
        return float(attr.f)
    if t == AttributeProto.INT:
        return int(attr.i)
    if t == AttributeProto.STRING:
        return attr.s.decode("utf-8", errors="surrogateescape")
    if t == AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if t == AttributeProto.SPARSE_TENSOR:
        return sparse_to_dense(attr.sparse_tensor)
    if t == AttributeProto.GRAPH:
        return graph_from_proto(attr.g, opset_imports, outer, ir_version)
    if t == AttributeProto.FLOATS:
        return [float(x) for x in attr.floats]
    if t == AttributeProto.INTS:
        return [int(x) for x in attr.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="surrogateescape") for s in attr.strings]
    if t == AttributeProto.TENSORS:
        return [numpy_helper.to_array(x) for x in attr.tensors]
    if t == AttributeProto.GRAPHS:
        return [graph_from_proto(g, opset_imports, outer, ir_version) for g in attr.graphs]
    if t == AttributeProto.TYPE_PROTO:
        return attr.tp
    if t == AttributeProto.TYPE_PROTOS:
        return list(attr.type_protos)
    if t == AttributeProto.SPARSE_TENSORS:
        return [sparse_to_dense(x) for x in attr.sparse_tensors]
    raise InvalidGraph(f"attribute '{attr.name}' has unsupported type {t}")


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sp.values)
    indices = numpy_helper.to_array(sp.indices).astype(np.int64)
    dims = tuple(sp.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if indices.ndim == 1:  # linearized indices
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def _schema_version(op_type: str, domain: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return opset


def graph_from_proto(gp: onnx.GraphProto, opset_imports: dict[str, int],
                     outer_scope: set[str] | None = None, ir_version: int = onnx.IR_VERSION) -> Graph:
    """Build a Graph (recursively for subgraphs) from a GraphProto whose shapes are inferred."""
    outer_scope = set(outer_scope or ())
    initializers = {t.name: numpy_helper.to_array(t) for t in gp.initializer}
    for sp in gp.sparse_initializer:
        initializers[sp.values.name] = sparse_to_dense(sp)
    value_info = {}
    for vi in list(gp.input) + list(gp.output) + list(gp.value_info):
        value_info[vi.name] = ValueInfo(vi.name, vi.type if vi.HasField("type") else None)
    for name, arr in initializers.items():
        if name not in value_info:
            value_info[name] = ValueInfo(name, onnx.helper.make_tensor_type_proto(
                onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) if arr.dtype != object
                else onnx.TensorProto.STRING, arr.shape))
    inputs = [value_info[vi.name] for vi in gp.input]
    outputs = [value_info[vi.name] for vi in gp.output]
    # Names a subgraph can see: everything visible here plus what this graph defines.
    visible = outer_scope | set(initializers) | {v.name for v in inputs}
    for n in gp.node:
        visible.update(o for o in n.output if o)
    nodes = []
    for k, np_ in enumerate(gp.node):
        domain = "" if np_.domain in ("", "ai.onnx") else np_.domain
        opset = opset_imports.get(domain, 0)
        attrs = {a.name: attribute_value(a, opset_imports, visible, ir_version) for a in np_.attribute}
        node = Node(op_type=np_.op_type, inputs=list(np_.input), outputs=list(np_.output),
                    name=np_.name or f"{np_.op_type}_{k}", domain=domain, attrs=attrs,
                    since_version=_schema_version(np_.op_type, domain, opset), opset=opset,
                    doc=np_.doc_string)
        node.input_types = [value_info[i].type if i in value_info else None for i in node.inputs]
        node.output_types = [value_info[o].type if o in value_info else None for o in node.outputs]
        node.implicit_inputs = _implicit_inputs(node)
        nodes.append(node)
    return Graph(nodes, inputs, outputs, initializers, value_info, dict(opset_imports),
                 name=gp.name, outer_scope=outer_scope, ir_version=ir_version)


def _implicit_inputs(node: Node) -> list[str]:
    """Outer-scope values read by the node's subgraphs (recursively), in first-use order."""
    seen: list[str] = []
    for g in node.subgraphs:
        defined = set(g.initializers) | {v.name for v in g.inputs}
        for n in g.nodes:
            defined.update(n.outputs)
        for n in g.nodes:
            for i in list(n.inputs) + n.implicit_inputs:
                if i and i not in defined and i not in seen:
                    seen.append(i)
        for o in g.outputs:
            if o.name not in defined and o.name not in seen:
                seen.append(o.name)
    return seen
