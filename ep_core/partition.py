"""Partitioning nodes across providers, fusing MetaDef groups, and inserting copy nodes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import InvalidGraph, NotImplemented
from .graph import Graph, Node, ValueInfo
from .kernel import KernelDef
from .provider import HOST, ComputeCapability, Device, ExecutionProvider, GraphView

COPY_OPS = ("MemcpyFromHost", "MemcpyToHost", "Memcpy")


@dataclass(eq=False)
class Assignment:
    """Which provider runs a node and with what: a registered kernel def or a compiled callable."""
    provider: ExecutionProvider
    kernel_def: KernelDef | None = None
    compiled: Callable | None = None
    subgraph: Graph | None = None   # the nodes a fused node stands for
    transfer: tuple | None = None   # (DataTransfer, dst Device) for copy nodes

    def input_device(self, k: int) -> Device:
        if self.transfer is not None:  # a copy node reads wherever its source lives
            return self.transfer[2]
        if self.kernel_def is not None and k in self.kernel_def.host_inputs:
            return HOST
        return self.provider.device

    def output_device(self, k: int) -> Device:
        if self.transfer is not None:
            return self.transfer[1]
        if self.kernel_def is not None and k in self.kernel_def.host_outputs:
            return HOST
        return self.provider.device


def partition(graph: Graph, providers: list[ExecutionProvider]) -> dict[Node, Assignment]:
    """Greedy assignment in provider priority order; the CPU provider (last) takes the rest."""
    assigned: dict[Node, Assignment] = {}
    for p in providers:
        registry = p.get_kernel_registry()
        free = [n for n in graph.nodes if n not in assigned]
        if not free:
            break
        caps = p.get_capability(GraphView(graph, free), registry.lookup)
        for cap in caps:
            if any(n in assigned for n in cap.nodes):
                continue  # a provider may not claim a node twice
            if cap.meta_def is None:
                for n in cap.nodes:
                    kdef = registry.lookup(n)
                    if kdef is None:
                        raise InvalidGraph(f"provider '{p.type}' claimed {n.describe()} without a kernel")
                    assigned[n] = Assignment(p, kdef)
            else:
                _fuse(graph, p, cap, assigned)
    for n in graph.nodes:
        if n not in assigned:
            raise NotImplemented(
                f"{n.describe()}: no kernel for op '{n.op_type}' in domain '{n.domain or 'ai.onnx'}' "
                f"at opset {n.opset} (schema version {n.since_version}) in providers "
                f"{[p.type for p in providers]}")
    return assigned


def _fuse(graph: Graph, p: ExecutionProvider, cap: ComputeCapability,
          assigned: dict[Node, Assignment]) -> None:
    """Replace the capability's nodes by one fused node compiled by the provider."""
    md = cap.meta_def
    members = set(map(id, cap.nodes))
    sub = Graph([n for n in graph.nodes if id(n) in members],
                [graph.value_info.get(i) or ValueInfo(i) for i in md.inputs],
                [graph.value_info.get(o) or ValueInfo(o) for o in md.outputs],
                {}, graph.value_info, graph.opset_imports, name=md.name)
    fused = Node(md.name, list(md.inputs), list(md.outputs), name=md.name, domain=md.domain,
                 attrs=dict(md.attributes), since_version=1, opset=1)
    fused.input_types = [graph.type_of(i) for i in md.inputs]
    fused.output_types = [graph.type_of(o) for o in md.outputs]
    position = min(k for k, n in enumerate(graph.nodes) if id(n) in members)
    rest = [n for n in graph.nodes if id(n) not in members]
    rest.insert(min(position, len(rest)), fused)
    graph.nodes[:] = rest
    assigned[fused] = Assignment(p, compiled=p.compile(fused, sub), subgraph=sub)


@dataclass
class CopyReport:
    copy_nodes: int = 0
    initializer_copies: int = 0
    placed_initializers: dict[tuple[str, Device], str] = field(default_factory=dict)


def insert_copy_nodes(graph: Graph, assigned: dict[Node, Assignment],
                      providers: list[ExecutionProvider]) -> CopyReport:
    """Put a Memcpy node on every edge whose producer's device differs from the consumer's.

    Feeds and initializers start on the host and fetches must end there. Initializers needed on a
    device are copied once at session build (recorded in the report), not per run.
    """
    report = CopyReport()
    location: dict[str, Device] = {}
    for name in list(graph.initializers) + [v.name for v in graph.inputs] + list(graph.outer_scope):
        location[name] = HOST
    feedable = {v.name for v in graph.inputs}  # overridable initializers are copied per run
    copies: dict[tuple[str, Device], str] = {}
    new_nodes: list[Node] = []

    def place(name: str, dst: Device) -> str:
        src = location[name]
        if src == dst:
            return name
        key = (name, dst)
        if key in copies:
            return copies[key]
        if name in graph.initializers and name not in feedable:  # constant: place once at build
            report.placed_initializers[key] = f"{name}@{dst}"
            copies[key] = report.placed_initializers[key]
            report.initializer_copies += 1
            return copies[key]
        if not src.is_host and not dst.is_host and _find_transfer(providers, src, dst) is None:
            name = place(name, HOST)  # no direct path between two devices: go through the host
            src = HOST
            if src == dst:
                return name
        transfer, owner = _find_transfer(providers, src, dst) or (None, None)
        if transfer is None:
            raise InvalidGraph(f"no data transfer can copy value '{name}' from {src} to {dst}")
        op = "MemcpyFromHost" if src.is_host else "MemcpyToHost" if dst.is_host else "Memcpy"
        out = f"{name}@{dst}"
        node = Node(op, [name], [out], name=f"{op}_{len(copies)}_{name}", since_version=1, opset=1)
        assigned[node] = Assignment(owner, transfer=(transfer, dst, src))
        new_nodes.append(node)
        location[out] = dst
        copies[key] = out
        report.copy_nodes += 1
        return out

    for node in graph.topological_order():
        a = assigned[node]
        node.inputs = [place(i, a.input_device(k)) if i else i for k, i in enumerate(node.inputs)]
        # Subgraph bodies read outer values on the host: their own plan inserts their copies.
        node.implicit_inputs = [place(i, HOST) for i in node.implicit_inputs]
        new_nodes.append(node)
        for k, o in enumerate(node.outputs):
            if o:
                location[o] = a.output_device(k)
    fetch_map = {}
    for v in graph.outputs:
        fetch_map[v.name] = place(v.name, HOST)
    graph.nodes[:] = new_nodes
    graph.fetch_map = fetch_map  # graph output name -> value holding it on the host
    return report


def _find_transfer(providers: list[ExecutionProvider], src: Device, dst: Device):
    for p in providers:
        t = p.get_data_transfer()
        if t is not None and t.can_copy(src, dst):
            return t, p
    return None
