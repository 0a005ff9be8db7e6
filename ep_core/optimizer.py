"""Provider-independent graph rewrites, applied by level as in onnxruntime."""
from __future__ import annotations

from .graph import Graph
from .options import GraphOptimizationLevel, SessionOptions


class Rewrite:
    """One graph rewrite; `apply` returns True when it changed the graph."""
    name = ""
    level = GraphOptimizationLevel.ORT_ENABLE_BASIC

    def apply(self, graph: Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class EliminateIdentity(Rewrite):
    """Identity/Dropout(inference) nodes whose output is not a graph output are bypassed."""
    name = "EliminateIdentity"

    def apply(self, graph: Graph) -> bool:
        outputs = {v.name for v in graph.outputs}
        changed = False
        for node in list(graph.nodes):
            if node.op_type != "Identity" or node.domain or node.outputs[0] in outputs:
                continue
            if node.input_types and node.input_types[0] is not None and \
                    node.input_types[0].WhichOneof("value") != "tensor_type":
                continue
            src, dst = node.inputs[0], node.outputs[0]
            graph.nodes.remove(node)
            for n in graph.nodes:
                n.inputs = [src if i == dst else i for i in n.inputs]
                n.implicit_inputs = [src if i == dst else i for i in n.implicit_inputs]
                for g in n.subgraphs:
                    _rename_in_subgraph(g, dst, src)
            changed = True
        return changed


def _rename_in_subgraph(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        n.implicit_inputs = [new if i == old else i for i in n.implicit_inputs]
        for g in n.subgraphs:
            _rename_in_subgraph(g, old, new)
    for v in graph.outputs:
        if v.name == old:
            v.name = new


REWRITES: list[Rewrite] = [EliminateIdentity()]


def optimize(graph: Graph, options: SessionOptions) -> None:
    """Apply every enabled rewrite up to the session's level until none changes the graph."""
    level = options.graph_optimization_level
    active = [r for r in REWRITES if r.level <= level and r.name not in options.disabled_optimizers]
    for _ in range(10):
        if not any(r.apply(graph) for r in active):
            break
