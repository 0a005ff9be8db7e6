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
    location: dict[str, Device] = {}
    for name in graph.outer_scope:
        location[name] = (outer_devices or {}).get(name, HOST)
    for name in list(graph.initializers) + [v.name for v in graph.inputs]:
        location[name] = HOST
    constants = graph.constant_initializers()
    copies: dict[tuple[str, Device], str] = {}
    device_constants: dict[str, tuple[str, Device]] = {}
    value_info = dict(graph.value_info)
    nodes: list[Node] = []
    out_assigned: dict[Node, Assignment] = {}
    n_copy = 0
    taken = set(graph.value_info) | set(graph.outer_scope) | {o for n in graph.nodes for o in n.outputs}

    def declare(new: str, like: str) -> None:
        vi = graph.value_info.get(like)
        value_info[new] = ValueInfo(new, vi.type if vi is not None else None)

    def place_value(name: str, dst: Device) -> str:
        nonlocal n_copy
        src = location[name]
        if src == dst:
            return name
        key = (name, dst)
        if key in copies:
            return copies[key]
        out = _fresh(f"{name}@{dst}", taken)
        taken.add(out)
        if name in constants:  # known at build: copied once, not per run
            device_constants[out] = (name, dst)
            declare(out, name)
            location[out] = dst
            copies[key] = out
            return out
        if not src.is_host and not dst.is_host and _find_transfer(providers, src, dst) is None:
            name = place_value(name, HOST)  # no direct path between two devices: via the host
            src = HOST
            if src == dst:
                return name
        found = _find_transfer(providers, src, dst)
        if found is None:
            raise InvalidGraph(f"no data transfer can copy value '{name}' from {src} to {dst}")
        transfer, owner = found
        op = "MemcpyFromHost" if src.is_host else "MemcpyToHost" if dst.is_host else "Memcpy"
        node = Node(op, [name], [out], name=f"{op}_{n_copy}_{name}", since_version=1, opset=1)
        node.input_types = [graph.type_of(name)]
        node.output_types = [graph.type_of(name)]
        declare(out, name)
        out_assigned[node] = Assignment(owner, transfer=(transfer, dst, src))
        nodes.append(node)
        location[out] = dst
        copies[key] = out
        n_copy += 1
        return out

    for node in graph.topological_order():
        a = assigned[node]
        inputs = [place_value(i, a.input_device(k)) if i else i for k, i in enumerate(node.inputs)]
        if inputs != node.inputs:
            node = dataclasses.replace(node, inputs=inputs)
        nodes.append(node)
        out_assigned[node] = a
        for k, o in enumerate(node.outputs):
            if o:
                location[o] = a.output_device(k)
    fetches = [place_value(v.name, HOST) for v in graph.outputs]
    placed = dataclasses.replace(graph, nodes=nodes, value_info=value_info)
    return Placement(placed, out_assigned, device_constants, fetches, location, n_copy)


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
