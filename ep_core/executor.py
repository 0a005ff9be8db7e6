"""Execution plan (kernels created once, value slots, release after last use) and executors."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import EPError, Fail
from .graph import Graph, Node
from .kernel import KernelContext
from .partition import Assignment
from .provider import HOST


class _CopyKernel:
    """Runs a copy node through the owning provider's DataTransfer."""

    def __init__(self, transfer, dst, provider):
        self.transfer, self.dst, self.provider = transfer, dst, provider

    def compute(self, value):
        return (self.transfer.copy(value, self.dst),)


class _CompiledKernel:
    def __init__(self, fn: Callable):
        self.fn = fn

    def compute(self, *inputs):
        return self.fn(*inputs)


@dataclass
class Step:
    node: Node
    provider: Any
    kernel: Any
    inputs: list[int | None]        # slot per input (None: omitted optional)
    outputs: list[int | None]
    release: list[int] = field(default_factory=list)  # slots dead after this step

    def execute(self, args: list, observer: Callable | None = None) -> tuple:
        """Run the kernel; returns its outputs as a tuple. Kernel errors become Fail."""
        t0 = time.perf_counter() if observer else 0.0
        try:
            outs = self.kernel.compute(*args)
        except EPError:
            raise
        except Exception as e:
            raise Fail(f"{self.node.describe()} on provider '{self.provider.type}' failed: "
                       f"{type(e).__name__}: {e}") from e
        if observer:
            observer(self, args, time.perf_counter() - t0)
        if not isinstance(outs, tuple) and not (isinstance(outs, list) and len(self.outputs) > 1):
            outs = (outs,)  # a single value; a list for a one-output node is a sequence value
        return outs


@dataclass
class Plan:
    """Everything needed to run a graph repeatedly."""
    steps: list[Step]
    slot_of: dict[str, int]
    constants: dict[int, Any]       # slot -> initializer value (host or pre-copied to a device)
    input_slots: list[int | None]   # per graph input
    output_slots: list[int]         # per graph output (host copies)
    n_slots: int
    providers: list[Any]

    def initial_slots(self, feeds: dict[str, Any]) -> list[Any]:
        """A fresh slot table holding the constants and the feeds."""
        slots: list[Any] = [None] * self.n_slots
        for s, v in self.constants.items():
            slots[s] = v
        for name, value in feeds.items():
            s = self.slot_of.get(name)
            if s is not None:
                slots[s] = value
        return slots

    def run(self, feeds: dict[str, Any], fetch_slots: list[int], observer=None) -> list[Any]:
        """Sequential executor: steps in topological order; dead values are dropped at once."""
        slots = self.initial_slots(feeds)
        for step in self.steps:
            outs = step.execute([slots[s] if s is not None else None for s in step.inputs], observer)
            for s, v in zip(step.outputs, outs):
                if s is not None:
                    slots[s] = v
            for s in step.release:
                slots[s] = None
        return [slots[s] for s in fetch_slots]


def build_plan(graph: Graph, assigned: dict[Node, Assignment], placed_initializers: dict,
               providers: list[Any], make_subgraph_runner: Callable, session_options: Any) -> Plan:
    """Create each node's kernel once and lay out value slots with last-use release."""
    slot_of: dict[str, int] = {}

    def slot(name: str) -> int:
        if name not in slot_of:
            slot_of[name] = len(slot_of)
        return slot_of[name]

    constants: dict[int, Any] = {}
    for name, value in graph.initializers.items():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False  # shared by every run; lets the GEMM cache packed weights
        constants[slot(name)] = value
    for (name, dst), placed in placed_initializers.items():
        transfer = next(t for t in (p.get_data_transfer() for p in providers)
                        if t is not None and t.can_copy(HOST, dst))
        constants[slot(placed)] = transfer.copy(graph.initializers[name], dst)
    input_slots = [slot(v.name) for v in graph.inputs]
    constant_names = graph.constant_initializers()
    for name in graph.outer_scope:
        slot(name)
    steps = []
    # insert_copy_nodes left graph.nodes in topological order; re-sorting would reject the
    # pre-placed initializer copies ('W@dev'), which are plan constants, not graph values.
    for node in graph.nodes:
        a = assigned[node]
        if a.transfer is not None:
            kern = _CopyKernel(a.transfer[0], a.transfer[1], a.provider)
        elif a.compiled is not None:
            kern = _CompiledKernel(a.compiled)
        else:
            ctx = KernelContext(
                a.provider, session_options,
                constant_inputs={k: graph.initializers[i] for k, i in enumerate(node.inputs)
                                 if i in constant_names},
                subgraph_runners={name: ([make_subgraph_runner(g) for g in v] if isinstance(v, list)
                                         else make_subgraph_runner(v))
                                  for name, v in node.attrs.items()
                                  if isinstance(v, Graph) or (isinstance(v, list) and v and isinstance(v[0], Graph))},
                intra_op_threads=int(getattr(session_options, "intra_op_num_threads", 0) or 0),
                max_tensor_bytes=int(getattr(session_options, "max_tensor_bytes", 0) or 0))
            try:
                kern = a.kernel_def.factory(node, ctx)
            except EPError:
                raise
            except Exception as e:
                raise Fail(f"{node.describe()}: creating the '{a.provider.type}' kernel failed: "
                           f"{type(e).__name__}: {e}") from e
        ins = [slot(i) if i else None for i in list(node.inputs) + node.implicit_inputs]
        outs = [slot(o) if o else None for o in node.outputs]
        steps.append(Step(node, a.provider, kern, ins, outs))
    output_slots = [slot(graph.fetch_map[v.name]) for v in graph.outputs]
    # Release each non-constant, non-output slot after its last reader (or its producer if unread).
    keep = set(constants) | set(output_slots)
    last_use: dict[int, int] = {}
    for k, st in enumerate(steps):
        for s in st.outputs + st.inputs:
            if s is not None:
                last_use[s] = k
    for s, k in last_use.items():
        if s not in keep:
            steps[k].release.append(s)
    return Plan(steps, slot_of, constants, input_slots, output_slots, len(slot_of), providers)

