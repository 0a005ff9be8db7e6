"""Incremental graph editing for the optimizer's rewrites.

A `GraphEditor` keeps producer/consumer maps up to date while a rewrite removes, adds and rewires
nodes, so one pass over a large graph stays linear. Node order is kept stable: new nodes take the
slot of the node they replace, and `commit()` writes the edited list back into the graph.
Renaming a value also renames its uses inside If/Loop/Scan bodies (outer-scope references).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np
import onnx

from .graph import Graph, Node, ValueInfo, _implicit_inputs, _schema_version
from .types import elem_type, tensor_dtype, tensor_shape

OWN_DOMAIN = "com.ep_core"   # domain of the fused ops the optimizer creates
OWN_DOMAIN_VERSION = 1
MS_DOMAIN = "com.microsoft"   # onnxruntime's contrib ops (ep_cpu/kernels/contrib_*.py)


def tensor_type(dtype: Any, shape: Iterable | None) -> onnx.TypeProto:
    """TypeProto of a tensor (shape entries: int, symbolic str or None)."""
    return onnx.helper.make_tensor_type_proto(elem_type(dtype), None if shape is None else list(shape))


def static_shape(tp: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The shape when every dimension is a known int, else None."""
    shape = tensor_shape(tp)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def rename_in_subgraph(graph: Graph, old: str, new: str) -> None:
    """Rename an outer-scope value inside a body graph (recursively)."""
    if old in graph.outer_scope:
        graph.outer_scope.discard(old)
        graph.outer_scope.add(new)
    for n in graph.nodes:
        if old in n.inputs or old in n.implicit_inputs:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.implicit_inputs = [new if i == old else i for i in n.implicit_inputs]
        for g in n.subgraphs:
            rename_in_subgraph(g, old, new)
    for v in graph.outputs:
        if v.name == old:
            v.name = new


class GraphEditor:
    """Producer/consumer maps plus editing operations over one graph level."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.outputs = {v.name for v in graph.outputs}
        self.inputs = {v.name for v in graph.inputs}
        # Initializers a user may feed are not constants (the one rule: Graph.overridable_initializers).
        self.overridable = graph.overridable_initializers()
        self.slots: list[list[Node]] = [[n] for n in graph.nodes]
        self.slot_of: dict[int, int] = {id(n): k for k, n in enumerate(graph.nodes)}
        self.producer: dict[str, Node] = {}
        self.users: dict[str, list[Node]] = {}
        for n in graph.nodes:
            self._index(n)
        self.changed = False
        self._names: set[str] | None = None

    # --- maps -----------------------------------------------------------------------------------
    def _index(self, n: Node) -> None:
        for o in n.outputs:
            if o:
                self.producer[o] = n
        for i in set(n.inputs) | set(n.implicit_inputs):
            if i:
                self.users.setdefault(i, []).append(n)

    def _unindex(self, n: Node) -> None:
        for o in n.outputs:
            if o and self.producer.get(o) is n:
                del self.producer[o]
        for i in set(n.inputs) | set(n.implicit_inputs):
            if i and i in self.users:
                self.users[i] = [u for u in self.users[i] if u is not n]
                if not self.users[i]:
                    del self.users[i]

    def nodes(self) -> list[Node]:
        """Live nodes in current order (a snapshot)."""
        return [n for s in self.slots for n in s]

    def alive(self, n: Node) -> bool:
        return id(n) in self.slot_of

    def consumers(self, name: str) -> list[Node]:
        return list(self.users.get(name, ()))

    def is_output(self, name: str) -> bool:
        return name in self.outputs

    def used(self, name: str) -> bool:
        return name in self.outputs or bool(self.users.get(name))

    def only_consumer(self, name: str) -> Node | None:
        """The single node reading `name` (once), if the value is not also a graph output."""
        users = self.users.get(name, ())
        if name in self.outputs or len(users) != 1:
            return None
        n = users[0]
        if (list(n.inputs) + n.implicit_inputs).count(name) != 1:
            return None
        return n

    def producer_of(self, name: str, op_type: str | tuple | None = None, domain: str = "") -> Node | None:
        n = self.producer.get(name)
        if n is None or n.domain != domain:
            return None
        if op_type is not None and n.op_type not in ((op_type,) if isinstance(op_type, str) else op_type):
            return None
        return n

    # --- values ---------------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant (non-overridable initializer) or None."""
        if not name or name in self.overridable:
            return None
        return self.graph.initializers.get(name)

    def type_of(self, name: str) -> onnx.TypeProto | None:
        return self.graph.type_of(name)

    def dtype(self, name: str) -> np.dtype | None:
        c = self.const(name)
        if c is not None:
            return c.dtype
        return tensor_dtype(self.type_of(name))

    def shape(self, name: str) -> list | None:
        c = self.graph.initializers.get(name)
        if c is not None:
            return list(c.shape)
        return tensor_shape(self.type_of(name))

    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def _all_names(self) -> set[str]:
        if self._names is None:
            names = set(self.graph.value_info) | set(self.graph.initializers) | self.inputs | self.outputs
            names |= self.graph.outer_scope

            def walk(g: Graph) -> None:
                for n in g.nodes:
                    names.update(n.outputs)
                    names.update(n.inputs)
                    for s in n.subgraphs:
                        names.update(s.initializers)
                        names.update(v.name for v in s.inputs)
                        walk(s)
            walk(self.graph)
            self._names = names
        return self._names

    def fresh(self, base: str) -> str:
        """A value or node name unused anywhere in the graph (subgraphs included)."""
        names = self._all_names()
        name = base
        for k in itertools.count(1):
            if name not in names:
                break
            name = f"{base}_{k}"
        names.add(name)
        return name

    def set_type(self, name: str, tp: onnx.TypeProto | None) -> None:
        if tp is not None:
            self.graph.value_info[name] = ValueInfo(name, tp)

    def add_initializer(self, base: str, value: np.ndarray, exact_name: bool = False) -> str:
        name = base if exact_name else self.fresh(base)
        value = np.asarray(value)
        self.graph.initializers[name] = value
        self.set_type(name, tensor_type(value.dtype, value.shape))
        self._all_names().add(name)
        self.changed = True
        return name

    # --- nodes ----------------------------------------------------------------------------------
    def make_node(self, op_type: str, inputs: list[str], outputs: list[str], name: str = "",
                  domain: str = "", attrs: dict | None = None) -> Node:
        """A Node with schema version and value types filled in (not yet in the graph)."""
        g = self.graph
        if domain and domain not in g.opset_imports:
            g.opset_imports[domain] = OWN_DOMAIN_VERSION if domain == OWN_DOMAIN else 1
        opset = g.opset_imports.get(domain, 0)
        node = Node(op_type, list(inputs), list(outputs), name=name or self.fresh(op_type),
                    domain=domain, attrs=dict(attrs or {}),
                    since_version=_schema_version(op_type, domain, opset), opset=opset)
        self.refresh_types(node)
        return node

    def refresh_types(self, node: Node) -> None:
        node.input_types = [self.type_of(i) if i else None for i in node.inputs]
        node.output_types = [self.type_of(o) if o else None for o in node.outputs]

    def insert(self, node: Node, at: Node) -> Node:
        """Add `node` in the slot of `at` (before it)."""
        k = self.slot_of[id(at)]
        s = self.slots[k]
        s.insert(s.index(at), node)
        self.slot_of[id(node)] = k
        self._index(node)
        self.changed = True
        return node

    def remove(self, node: Node) -> None:
        k = self.slot_of.pop(id(node))
        self.slots[k] = [n for n in self.slots[k] if n is not node]
        self._unindex(node)
        self.changed = True

    def set_inputs(self, node: Node, inputs: list[str]) -> None:
        self._unindex(node)
        node.inputs = list(inputs)
        self.refresh_types(node)
        self._index(node)
        self.changed = True

    def replace_uses(self, old: str, new: str) -> None:
        """Every reader of `old` (including body graphs) reads `new` instead."""
        for n in self.consumers(old):
            self._unindex(n)
            n.inputs = [new if i == old else i for i in n.inputs]
            n.implicit_inputs = [new if i == old else i for i in n.implicit_inputs]
            for g in n.subgraphs:
                rename_in_subgraph(g, old, new)
            n.input_types = [self.type_of(i) if i else None for i in n.inputs]
            self._index(n)
        self.changed = True

    def rename_output(self, node: Node, old: str, new: str) -> None:
        """The value `old` produced by `node` is called `new` from now on (uses follow)."""
        self.replace_uses(old, new)
        self._unindex(node)
        node.outputs = [new if o == old else o for o in node.outputs]
        if old in self.graph.value_info and new not in self.graph.value_info:
            self.graph.value_info[new] = ValueInfo(new, self.graph.value_info[old].type)
        node.output_types = [self.type_of(o) if o else None for o in node.outputs]
        self._index(node)

    def bypass(self, node: Node, src: str, dst: str) -> bool:
        """Remove `node`, whose output `dst` equals its input `src`. False if it must stay."""
        if dst in self.outputs:
            # A graph output keeps its name: rename the upstream value instead, when it is a plain
            # node output that nothing outside this graph level names.
            up = self.producer.get(src)
            if up is None or src in self.outputs:
                return False
            self.remove(node)
            self.rename_output(up, src, dst)
            return True
        self.remove(node)
        self.replace_uses(dst, src)
        return True

    def replace_outputs(self, old_nodes: list[Node], new_nodes: list[Node]) -> None:
        """Swap a matched pattern for new nodes that produce the pattern's surviving outputs."""
        anchor = old_nodes[-1]
        for nn in new_nodes:
            self.insert(nn, anchor)
        for n in old_nodes:
            if self.alive(n):
                self.remove(n)

    def commit(self) -> bool:
        """Write the node list back; drop unused value types. Returns whether anything changed."""
        self.graph.nodes[:] = [n for s in self.slots for n in s]
        return self.changed


def refresh_implicit_inputs(graph: Graph) -> None:
    """Recompute implicit inputs of control-flow nodes after their bodies changed."""
    for n in graph.nodes:
        if n.subgraphs:
            n.implicit_inputs = _implicit_inputs(n)


def array_attr_key(value: Any) -> Any:
    """A hashable key for an attribute value (used by common-subexpression elimination)."""
    if isinstance(value, np.ndarray):
        return ("nd", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, list):
        return tuple(array_attr_key(v) for v in value)
    if isinstance(value, onnx.TypeProto):
        return ("tp", value.SerializeToString())
    if isinstance(value, float) and value != value:
        return ("nan",)
    return value
