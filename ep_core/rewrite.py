"""What a graph rewrite is and what it may ask: the `Rewrite` base class and its context.

Rewrites live in `rewrites_*.py` by category; `optimizer.py` lists them and runs them by level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence
import numpy as np

from .graph import Graph, Node
from .graph_edit import GraphEditor
from .options import GraphOptimizationLevel, SessionOptions
from .partition import Assignment
from .provider import ExecutionProvider


@dataclass
class OptimizerContext:
    """What rewrites may ask: the options, the CPU provider (constant folding runs its kernels) and,
    from level 2 on, which provider owns each node."""
    options: SessionOptions
    cpu: ExecutionProvider
    assigned: dict[Node, Assignment] | None = None   # None before partitioning (level 1)
    stats: dict[str, int] = field(default_factory=dict)

    def provider_for(self, node: Node) -> ExecutionProvider | None:
        """The provider that owns `node` (level >= 2 only: nothing is assigned before)."""
        if self.assigned is None:
            raise RuntimeError("provider_for is known only after partitioning (rewrites of level >= 2)")
        a = self.assigned.get(node)
        return a.provider if a is not None else None

    def supports(self, anchor: Node, fused: Node, replaced: Sequence[Node] = ()) -> bool:
        """Whether `fused` may replace `replaced` (anchor included): the provider owning `anchor`
        owns every replaced node and has a kernel for `fused`; if so `fused` is assigned to it.
        Before partitioning (level 1) only the CPU provider, which runs everything in the end, is
        asked."""
        if self.assigned is None:
            return self.cpu.get_kernel_registry().lookup(fused) is not None
        owner = self.provider_for(anchor)
        if owner is None or any(self.provider_for(n) is not owner for n in replaced):
            return False
        kdef = owner.get_kernel_registry().lookup(fused)
        if kdef is None:
            return False
        self.assigned[fused] = Assignment(owner, kdef)
        return True


class Rewrite:
    """One graph rewrite; `apply` returns True when it changed the graph (in place).

    `self.ctx` (an OptimizerContext) is set by the optimizer before `apply` runs.
    """
    name = ""
    level: int = GraphOptimizationLevel.ORT_ENABLE_BASIC
    ctx: OptimizerContext | None = None

    def apply(self, graph: Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def editor(self, graph: Graph) -> GraphEditor:
        return GraphEditor(graph)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={int(self.level)})"


def nodes_in_order(graph: Graph) -> list[Node]:
    """Topological order; model order for a malformed graph (reported later by the planner)."""
    try:
        return graph.topological_order()
    except Exception:
        return list(graph.nodes)


def int_list(ed: GraphEditor, node: Node, attr: str, pos: int) -> list[int] | None | bool:
    """An int-list parameter that is an attribute in old opsets and a constant input in new ones.

    Returns the list, None when absent, or False when it is a non-constant input.
    """
    if attr in node.attrs:
        return [int(a) for a in node.attrs[attr]]
    if len(node.inputs) > pos and node.inputs[pos]:
        c = ed.const(node.inputs[pos])
        return False if c is None else [int(a) for a in np.asarray(c).reshape(-1)]
    return None
