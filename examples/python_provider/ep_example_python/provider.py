"""Capability query (groups of connected supported nodes) and compilation of each group."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ep_core.plugin import (Allocator, ComputeCapability, DataTransfer, ExecutionProvider, Graph,
                            GraphView, Node, make_meta_def)

from .memory import DEVICE, DeviceBuffer, ExampleAllocator, ExampleTransfer, device_data


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# op_type -> numpy implementation; every one keeps float32 in, float32 out
OPS: dict[str, Callable[..., np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "MatMul": np.matmul,
    "Relu": lambda x: np.maximum(x, np.float32(0)), "Tanh": np.tanh, "Sigmoid": _sigmoid,
}


def supported(node: Node) -> bool:
    """Default-domain ops from OPS, with every input and output known to be float32."""
    if node.domain != "" or node.op_type not in OPS or node.subgraphs:
        return False
    return all(d == np.float32 for d in node.input_dtypes + node.output_dtypes)


def connected_groups(graph_view: GraphView, ok: Callable[[Node], bool]) -> list[list[Node]]:
    """Groups of connected nodes accepted by `ok`, none of which could form a cycle once fused.

    Walks the whole graph in topological order, tracking for every node which groups it depends
    on. A node joins a producer's group only if none of its other producers depends on that group:
    otherwise group -> outside node -> group would be a cycle after fusion.
    """
    free = {id(n) for n in graph_view.nodes}
    producers = graph_view.producers()
    group_of: dict[int, int] = {}
    depends: dict[int, set[int]] = {}
    groups: list[list[Node]] = []
    for n in graph_view.graph.topological_order():
        preds = [producers[i] for i in list(n.inputs) + list(n.implicit_inputs) if i in producers]
        upstream: set[int] = set()
        for p in preds:
            upstream |= depends.get(id(p), set())
            if id(p) in group_of:
                upstream.add(group_of[id(p)])
        depends[id(n)] = upstream
        if id(n) not in free or not ok(n):
            continue
        target = None
        for p in preds:
            g = group_of.get(id(p))
            if g is not None and all(group_of.get(id(q)) == g or g not in depends[id(q)]
                                     for q in preds):
                target = g
                break
        if target is None:
            target = len(groups)
            groups.append([])
        group_of[id(n)] = target
        groups[target].append(n)
    return groups


class ExamplePythonProvider(ExecutionProvider):
    """Runs float32 Add/Sub/Mul/MatMul/Relu/Tanh/Sigmoid as fused groups on its own device."""
    type = "example_python"
    abi_version = "1.0"
    device = DEVICE

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.transfer = ExampleTransfer()
        self.compiled_groups: list[list[str]] = []  # op types of each compiled group, for tests

    def get_capability(self, graph_view: GraphView, kernel_lookup) -> list[ComputeCapability]:
        caps = []
        # No state may change here (get_capability is side-effect free): names are unique within
        # the graph asked about, which is all a fused node's name needs.
        for k, members in enumerate(connected_groups(graph_view, supported)):
            name = f"{self.type}_fused_{k}"
            caps.append(ComputeCapability(members, make_meta_def(graph_view, members, name)))
        return caps

    def compile(self, fused_node: Node, subgraph: Graph) -> Callable[..., Sequence[Any]]:
        # "Compiling" here means resolving each node to its function once; a real provider would
        # build a kernel or an engine for the whole group.
        steps = [(OPS[n.op_type], list(n.inputs), n.outputs[0]) for n in subgraph.topological_order()]
        inputs, outputs = list(fused_node.inputs), list(fused_node.outputs)
        self.compiled_groups.append([n.op_type for n in subgraph.nodes])

        def run(*values: Any) -> tuple:
            env = {name: device_data(v) for name, v in zip(inputs, values)}
            for fn, ins, out in steps:
                env[out] = np.asarray(fn(*[env[i] for i in ins]), dtype=np.float32)
            return tuple(DeviceBuffer(env[o]) for o in outputs)
        return run

    def get_allocator(self, mem_type: str = "default") -> Allocator:
        return ExampleAllocator() if mem_type == "default" else Allocator()

    def get_data_transfer(self) -> DataTransfer:
        return self.transfer
