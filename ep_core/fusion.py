"""Fusion planning shared by the providers that compile element-wise groups (compile API): the
graph analysis and the one group finder. Each provider says which nodes it can compute (a
`spec_of(analysis, node)` function) and generates its own code from the groups found here:
`ep_cuda.codegen` (CUDA C through NVRTC), `ep_cpu.fused` (numba).

Convexity: a group may not have a path that leaves it and comes back (fusing such a set would
create a cycle). Nodes are visited in topological order and a node joins a group only if none of
its inputs produced outside the group descends from the group (ancestor bitmasks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .graph import Graph, Node
from .types import tensor_dtype, tensor_shape

SpecOf = Callable[["Analysis", Node], "tuple | None"]


@dataclass
class Group:
    kind: str                      # 'elementwise'; ep_cuda adds 'gemm' and 'region'
    nodes: list[Node]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def ops(self) -> list[str]:
        return [n.op_type for n in self.nodes]


class Analysis:
    """Producers, consumers, ancestor bitmasks and static types of one graph."""

    def __init__(self, graph: Graph, nodes: list[Node] | None = None) -> None:
        self.graph = graph
        order = graph.topological_order()
        self.order = order
        self.index = {id(n): k for k, n in enumerate(order)}
        self.producer = {o: n for n in order for o in n.outputs if o}
        self.consumers: dict[str, list[Node]] = {}
        for n in order:
            for i in list(n.inputs) + n.implicit_inputs:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.anc: dict[int, int] = {}
        for n in order:
            m = 0
            for i in list(n.inputs) + n.implicit_inputs:
                p = self.producer.get(i)
                if p is not None:
                    m |= self.anc[id(p)] | (1 << self.index[id(p)])
            self.anc[id(n)] = m
        # where each node stands in graph.nodes: the core puts a fused node at its first member's
        self.position = {id(n): k for k, n in enumerate(graph.nodes)}
        self.graph_outputs = {v.name for v in graph.outputs}
        # the session's one constness rule (ONNX IR: overridable only when listed as an input, IR >= 4)
        self.constants = {k: graph.initializers[k] for k in graph.constant_initializers()}

    def mask(self, nodes) -> int:
        m = 0
        for n in nodes:
            m |= 1 << self.index[id(n)]
        return m

    def can_join(self, node: Node, group_mask: int) -> bool:
        """Adding `node` keeps the group convex (no input of it produced outside the group
        descends from the group) and runnable where the core puts the fused node, at the place
        of its first member in graph.nodes: every input from outside is produced before that."""
        first = min(self.position.get(id(self.order[k]), -1) for k in _bits(group_mask))
        for i in node.inputs:
            p = self.producer.get(i)
            if p is None or (group_mask >> self.index[id(p)]) & 1:
                continue
            if self.anc[id(p)] & group_mask or self.position.get(id(p), -1) > first:
                return False
        return True

    def dtype(self, name: str):
        return tensor_dtype(self.graph.type_of(name)) if name else None

    def shape(self, name: str):
        return tensor_shape(self.graph.type_of(name)) if name else None

    def const(self, name: str):
        return self.constants.get(name)

    def boundary(self, nodes: list[Node]) -> tuple[list[str], list[str]]:
        """(inputs, outputs) of a node set, in first-use / production order."""
        members = set(map(id, nodes))
        produced = {o for n in nodes for o in n.outputs if o}
        ins: list[str] = []
        for n in nodes:
            for i in list(n.inputs) + n.implicit_inputs:
                if i and i not in produced and i not in ins:
                    ins.append(i)
        outs = []
        for n in nodes:
            for o in n.outputs:
                if not o:
                    continue
                outside = [c for c in self.consumers.get(o, []) if id(c) not in members]
                if outside or o in self.graph_outputs:
                    outs.append(o)
        return ins, outs


def add_to_group(an: Analysis, groups: list[dict], member: dict[int, int], node: Node,
                 gi: int | None = None, **fields: Any) -> None:
    """A planner's step: `node` joins group `gi` of `groups` (or starts a new one holding
    `fields`), its bit set in the group's mask, `member` recording where it went."""
    if gi is None:
        gi = len(groups)
        groups.append({"nodes": [], "mask": 0, **fields})
    g = groups[gi]
    g["nodes"].append(node)
    g["mask"] |= 1 << an.index[id(node)]
    member[id(node)] = gi


def group_capabilities(groups: list[Group], claimed: list[Node], group_attr: str,
                       name_of: Callable[[Group, int], str], min_level: int = 0) -> list:
    """A compiling provider's capabilities: one MetaDef per group (named `name_of(group, k)`,
    also kept in `info["name"]`; the group itself under `group_attr` for `compile`), then every
    other claimed node alone."""
    from .provider import ComputeCapability, MetaDef
    caps, grouped = [], set()
    for k, g in enumerate(groups):
        g.info["name"] = name_of(g, k)
        grouped.update(map(id, g.nodes))
        caps.append(ComputeCapability(list(g.nodes), MetaDef(
            g.info["name"], list(g.inputs), list(g.outputs),
            attributes={"fused_ops": "+".join(g.ops()), "fused_nodes": ",".join(n.name for n in g.nodes),
                        group_attr: g},
            min_level=min_level)))
    return caps + [ComputeCapability([n]) for n in claimed if id(n) not in grouped]


def _bits(mask: int):
    """Indices of the set bits of `mask`."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(
        x == y and x is not None for x, y in zip(a, b))


def plan_elementwise_groups(an: Analysis, eligible: list[Node], taken: set[int], spec_of: SpecOf,
                            max_in: int = 8, max_out: int = 4, max_nodes: int = 0,
                            baked: Callable[[list[Node]], set[str]] | None = None,
                            keep_single: Callable[[Node], bool] | None = None) -> list[Group]:
    """Greedy convex element-wise groups of one output shape (at least two nodes each, or one
    node that `keep_single` accepts).

    `spec_of(an, node)`: how the provider's generated code computes `node`, None where it cannot
    (kept per member in `info["specs"]`). A group has at most `max_in` inputs, `max_out`
    outputs and (when non-zero) `max_nodes` nodes; `baked(nodes)` names inputs the provider's
    code holds as literals, which are not group inputs. Nodes that join a group are added to
    `taken`."""
    elig = {id(n) for n in eligible}
    groups: list[dict] = []
    member: dict[int, int] = {}   # node -> group index
    for n in an.order:
        if id(n) not in elig or id(n) in taken:
            continue
        spec = spec_of(an, n)
        shape = an.shape(n.outputs[0]) if spec is not None else None
        if spec is None or shape is None:
            continue
        for i in n.inputs:
            p = an.producer.get(i)
            gi = member.get(id(p)) if p is not None else None
            if gi is None:
                continue
            g = groups[gi]
            if max_nodes and len(g["nodes"]) >= max_nodes:
                continue
            if not _same_shape(g["shape"], shape) or not an.can_join(n, g["mask"]):
                continue
            ins, outs = an.boundary(g["nodes"] + [n])
            if len(ins) > max_in or len(outs) > max_out:
                continue
            add_to_group(an, groups, member, n, gi)
            break
        else:
            add_to_group(an, groups, member, n, shape=shape)
    out = []
    for g in groups:
        if len(g["nodes"]) < 2 and (keep_single is None or not keep_single(g["nodes"][0])):
            continue
        ins, outs = an.boundary(g["nodes"])
        if not outs or any(not _same_shape(an.shape(o), g["shape"]) for o in outs):
            continue
        if baked is not None:
            held = baked(g["nodes"])
            ins = [i for i in ins if i not in held]
        taken.update(map(id, g["nodes"]))
        specs = [spec_of(an, n) for n in g["nodes"]]
        out.append(Group("elementwise", g["nodes"], ins, outs, {"specs": specs}))
    return out


def clip_bounds(node: Node, const: Callable[[str], Any]) -> tuple[float, float] | None:
    """(min, max) of a Clip node: its attributes below opset 11, else its bound inputs, which
    must be one-element constants (`const(name)`: the value or None); None where they are not."""
    if node.since_version < 11:
        return float(node.attr("min", -math.inf)), float(node.attr("max", math.inf))
    bounds = []
    for k, default in ((1, -math.inf), (2, math.inf)):
        name = node.inputs[k] if len(node.inputs) > k else ""
        if not name:
            bounds.append(default)
            continue
        v = const(name)
        if v is None or np.asarray(v).size != 1:
            return None
        bounds.append(float(np.asarray(v).reshape(())))
    return bounds[0], bounds[1]
