"""Stage 3 (partition) and stage 5 (group + compile): which provider runs each node, and how.

`partition` asks each provider, in the user's priority order, for its capabilities over the nodes
still unassigned: claims decide ownership. After level-2 rewrites (which fuse only within one
owner), `group_fused` asks each compiling provider again over its own nodes and turns every
MetaDef capability into one fused node; `compile_fused` has the owners compile them.
None of them mutates its input: each returns what it decided.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .errors import EPError, Fail, InvalidGraph, NotImplemented
from .graph import Graph, Node, ValueInfo, stable_topological_order
from .kernel import KernelDef
from .provider import HOST, ComputeCapability, Device, ExecutionProvider, GraphView, MetaDef

COPY_OPS = ("MemcpyFromHost", "MemcpyToHost", "Memcpy")


@dataclass(eq=False)
class Assignment:
    """Which provider runs a node and with what: a registered kernel def, a compiled group, or a
    data transfer (copy nodes)."""
    provider: ExecutionProvider
    kernel_def: KernelDef | None = None
    compiled: Callable | None = None
    subgraph: Graph | None = None   # the member nodes a fused node stands for
    transfer: tuple | None = None   # (DataTransfer, dst Device, src Device) for copy nodes
    meta_def: MetaDef | None = None  # the group a fused node stands for (its host memory positions)

    def input_device(self, k: int) -> Device:
        if self.transfer is not None:  # a copy node reads wherever its source lives
            return self.transfer[2]
        if self.kernel_def is not None and k in self.kernel_def.host_inputs or \
                self.meta_def is not None and k in self.meta_def.host_inputs:
            return HOST
        return self.provider.device

    def output_device(self, k: int) -> Device:
        if self.transfer is not None:
            return self.transfer[1]
        if self.kernel_def is not None and k in self.kernel_def.host_outputs or \
                self.meta_def is not None and k in self.meta_def.host_outputs:
            return HOST
        return self.provider.device


def partition(graph: Graph, providers: list[ExecutionProvider],
              assigned: dict[Node, Assignment] | None = None) -> dict[Node, Assignment]:
    """Stage 3: greedy ownership in provider priority order (the CPU provider, last, takes the
    rest). Only nodes not in `assigned` are offered. A node goes to the first provider claiming
    it; a MetaDef capability claims ownership here and is grouped later (`group_fused`), after
    level-2 rewrites. Returns the assignment of every node of `graph`."""
    assigned = dict(assigned or {})
    for p in providers:
        registry = p.get_kernel_registry()
        free = [n for n in graph.nodes if n not in assigned]
        if not free:
            break
        offered = set(map(id, free))
        for cap in p.get_capability(GraphView(graph, free), registry.lookup):
            if any(n in assigned or id(n) not in offered for n in cap.nodes):
                continue  # the first claim wins
            for n in cap.nodes:
                kdef = registry.lookup(n)
                if kdef is None and cap.meta_def is None:
                    raise InvalidGraph(f"provider '{p.type}' claimed {n.describe()} without a kernel")
                assigned[n] = Assignment(p, kdef)
    for n in graph.nodes:
        if n not in assigned:
            raise NotImplemented(
                f"{n.describe()}: no kernel for op '{n.op_type}' in domain '{n.domain or 'ai.onnx'}' "
                f"at opset {n.opset} (schema version {n.since_version}) in providers "
                f"{[p.type for p in providers]}")
    return {n: assigned[n] for n in graph.nodes}


def _compiles(p: ExecutionProvider) -> bool:
    return type(p).compile is not ExecutionProvider.compile


def group_fused(graph: Graph, assigned: dict[Node, Assignment], providers: list[ExecutionProvider],
                optimization_level: int = 99) -> tuple[Graph, dict[Node, Assignment]]:
    """Stage 5a: each provider that compiles is asked again for its capabilities, over the nodes
    it owns after level-2 rewrites; each MetaDef capability becomes one fused node, unless its
    `min_level` is above the session's `optimization_level`. Returns a new Graph (the input is
    not modified) and the assignment of its nodes."""
    nodes = list(graph.nodes)
    out = dict(assigned)
    for p in providers:
        if not _compiles(p):
            continue
        own = [n for n in nodes if out[n].provider is p and out[n].subgraph is None]
        if not own:
            continue
        offered = set(map(id, own))
        grouped: set[int] = set()
        for cap in p.get_capability(GraphView(dataclasses.replace(graph, nodes=nodes), own),
                                    p.get_kernel_registry().lookup):
            if cap.meta_def is None or cap.meta_def.min_level > optimization_level or \
                    any(id(n) not in offered or id(n) in grouped for n in cap.nodes):
                continue
            grouped.update(map(id, cap.nodes))
            fused, sub = _fuse(graph, nodes, cap)
            members = set(map(id, cap.nodes))
            position = min(k for k, n in enumerate(nodes) if id(n) in members)
            nodes = [n for n in nodes if id(n) not in members]
            nodes.insert(min(position, len(nodes)), fused)
            # A member may read a value produced between the members: order again.
            nodes = _in_topological_order(nodes, p, md_name=fused.name)
            for n in cap.nodes:
                del out[n]
            out[fused] = Assignment(p, subgraph=sub, meta_def=cap.meta_def)
    for n in nodes:
        a = out[n]
        if a.kernel_def is None and a.subgraph is None and a.transfer is None:
            raise InvalidGraph(f"provider '{a.provider.type}' claimed {n.describe()} in a fused group "
                               f"at partitioning but grouped it into no fused node at compile")
    return dataclasses.replace(graph, nodes=nodes), {n: out[n] for n in nodes}


def _in_topological_order(nodes: list[Node], provider: ExecutionProvider, md_name: str) -> list[Node]:
    """`nodes` in a topological order that keeps their current order where it can; a fused group
    that makes a cycle (it reads a value computed from one of its own outputs) is refused."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    deps = [{producer[i] for i in list(n.inputs) + list(n.implicit_inputs) if i in producer} - {k}
            for k, n in enumerate(nodes)]
    order = stable_topological_order(deps)
    if len(order) != len(nodes):
        raise InvalidGraph(f"provider '{provider.type}' grouped nodes into fused node '{md_name}' "
                           f"that reads a value computed from its own outputs (a cycle)")
    return [nodes[k] for k in order]


def _fuse(graph: Graph, nodes: list[Node], cap: ComputeCapability) -> tuple[Node, Graph]:
    """The fused node standing for a MetaDef group, and the subgraph of its members."""
    md = cap.meta_def
    members = set(map(id, cap.nodes))
    sub = Graph([n for n in nodes if id(n) in members],
                [graph.value_info.get(i) or ValueInfo(i) for i in md.inputs],
                [graph.value_info.get(o) or ValueInfo(o) for o in md.outputs],
                {}, graph.value_info, graph.opset_imports, name=md.name,
                outer_scope=set(graph.outer_scope) | set(graph.initializers), ir_version=graph.ir_version)
    fused = Node(md.name, list(md.inputs), list(md.outputs), name=md.name, domain=md.domain,
                 attrs=dict(md.attributes), since_version=1, opset=1)
    fused.input_types = [graph.type_of(i) for i in md.inputs]
    fused.output_types = [graph.type_of(o) for o in md.outputs]
    return fused, sub


def compile_fused(assigned: dict[Node, Assignment]) -> dict[Node, Assignment]:
    """Stage 5: each fused node's provider compiles it (`ExecutionProvider.compile`). Returns the
    assignment with the compute callables filled in."""
    out = {}
    for node, a in assigned.items():
        if a.subgraph is not None and a.compiled is None:
            try:
                fn = a.provider.compile(node, a.subgraph)
            except EPError:
                raise
            except Exception as e:
                raise Fail(f"provider '{a.provider.type}' failed to compile fused node '{node.name}' "
                           f"({len(a.subgraph.nodes)} nodes): {type(e).__name__}: {e}") from e
            a = dataclasses.replace(a, compiled=fn)
        out[node] = a
    return out
