"""Stage 6 (placement, always on): copy nodes wherever data crosses memory spaces.

Every edge whose producer's output device differs from the device the consumer's kernel reads
it on gets a `MemcpyFromHost` / `MemcpyToHost` / `Memcpy` node. Constants needed on a device are
copied once at session build: they are declared values of the placed graph (`device_constants`),
not copy nodes. Feeds enter on the host (or wherever `input_devices` says), fetches leave on the host.

Values read by control-flow bodies (`node.implicit_inputs`) are not copied here: a body is placed
when it is built, knowing where each outer value lives (`outer_devices`), and copies what it needs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import InvalidGraph
from .graph import Graph, Node, ValueInfo
from .partition import Assignment
from .provider import HOST, Device, ExecutionProvider


@dataclass
class Placement:
    """A valid graph with its copy nodes, and the assignment of each of its nodes."""
    graph: Graph
    assigned: dict[Node, Assignment]
    device_constants: dict[str, tuple[str, Device]] = field(default_factory=dict)
    """placed value name -> (constant initializer it copies, device), copied once at build"""
    fetches: list[str] = field(default_factory=list)
    """per graph output: the name of the value holding it on the host"""
    locations: dict[str, Device] = field(default_factory=dict)
    """where every value of the graph lives (outer values included)"""
    copy_nodes: int = 0

    @property
    def initializer_copies(self) -> int:
        return len(self.device_constants)


def place(graph: Graph, assigned: dict[Node, Assignment], providers: list[ExecutionProvider],
          outer_devices: dict[str, Device] | None = None) -> Placement:
    """Insert copy nodes; returns a new graph (the input graph and its nodes are not modified)."""
    placer = _Placer(graph, providers, outer_devices or {})
    nodes: list[Node] = []
    out_assigned: dict[Node, Assignment] = {}
    for node in graph.topological_order():
        a = assigned[node]
        inputs = [placer.value_on(i, a.input_device(k)) if i else i for k, i in enumerate(node.inputs)]
        if inputs != node.inputs:
            node = dataclasses.replace(node, inputs=inputs)
        nodes.extend(placer.take_copies())
        nodes.append(node)
        out_assigned[node] = a
        for k, o in enumerate(node.outputs):
            if o:
                placer.location[o] = a.output_device(k)
    fetches = [placer.value_on(v.name, HOST) for v in graph.outputs]
    nodes.extend(placer.take_copies())
    out_assigned.update(placer.copy_assigned)
    placed = dataclasses.replace(graph, nodes=nodes, value_info=placer.value_info)
    return Placement(placed, out_assigned, placer.device_constants, fetches, placer.location,
                     len(placer.copy_assigned))


class _Placer:
    """Where each value lives, and the copies made so far (a class, not closures: no cycles)."""

    def __init__(self, graph: Graph, providers: list[ExecutionProvider], outer: dict[str, Device]):
        self.graph, self.providers = graph, providers
        self.location: dict[str, Device] = {name: outer.get(name, HOST) for name in graph.outer_scope}
        for name in list(graph.initializers) + [v.name for v in graph.inputs]:
            self.location[name] = HOST
        self.constants = graph.constant_initializers()
        self.copies: dict[tuple[str, Device], str] = {}
        self.device_constants: dict[str, tuple[str, Device]] = {}
        self.value_info = dict(graph.value_info)
        self.copy_assigned: dict[Node, Assignment] = {}
        self.pending: list[Node] = []
        self.taken = set(graph.value_info) | set(graph.outer_scope) | {
            o for n in graph.nodes for o in n.outputs}

    def take_copies(self) -> list[Node]:
        out, self.pending = self.pending, []
        return out

    def _new_value(self, name: str, dst: Device) -> str:
        out = _fresh(f"{name}@{dst}", self.taken)
        self.taken.add(out)
        vi = self.graph.value_info.get(name)
        self.value_info[out] = ValueInfo(out, vi.type if vi is not None else None)
        self.location[out] = dst
        self.copies[(name, dst)] = out
        return out

    def value_on(self, name: str, dst: Device) -> str:
        """The name of `name`'s value on `dst`, adding a copy (or a build-time constant copy)."""
        src = self.location[name]
        if src == dst:
            return name
        if (name, dst) in self.copies:
            return self.copies[(name, dst)]
        if name in self.constants:  # known at build: copied once, not per run
            out = self._new_value(name, dst)
            self.device_constants[out] = (name, dst)
            return out
        if not src.is_host and not dst.is_host and _find_transfer(self.providers, src, dst) is None:
            name = self.value_on(name, HOST)  # no direct path between two devices: via the host
            src = HOST
            if src == dst:
                return name
        found = _find_transfer(self.providers, src, dst)
        if found is None:
            raise InvalidGraph(f"no data transfer can copy value '{name}' from {src} to {dst}")
        transfer, owner = found
        op = "MemcpyFromHost" if src.is_host else "MemcpyToHost" if dst.is_host else "Memcpy"
        out = self._new_value(name, dst)
        node = Node(op, [name], [out], name=f"{op}_{len(self.copy_assigned)}_{name}",
                    since_version=1, opset=1)
        node.input_types = [self.graph.type_of(name)]
        node.output_types = [self.graph.type_of(name)]
        self.copy_assigned[node] = Assignment(owner, transfer=(transfer, dst, src))
        self.pending.append(node)
        return out


def _fresh(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    k = 1
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


def _find_transfer(providers: list[ExecutionProvider], src: Device, dst: Device):
    for p in providers:
        t = p.get_data_transfer()
        if t is not None and t.can_copy(src, dst):
            return t, p
    return None
