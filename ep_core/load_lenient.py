"""Where onnx's checker is stricter than onnxruntime, the load stage adjusts its weightless copy
of the model (never the model itself) so the check can run, and says so with a warning.

Each adjustment is one onnxruntime accepts and that leaves the model's meaning defined:
- IR version missing, below 3 or an IR 3 model whose initializers are not graph inputs: the copy
  is checked under IR 4 rules (the session still applies the model's own IR constness rule);
- main-graph inputs/outputs declared without a shape, outputs without a type: a placeholder is
  checked and removed again before inference;
- nodes out of topological order: the copy is sorted (a cycle is refused);
- declared shapes that contradict inference: stripped, and inference run again (strict);
- com.microsoft nodes without an opset import for that domain: version 1 is imported;
- the ops onnxruntime defines in the ONNX domain itself (SimplifiedLayerNormalization, and
  LayerNormalization below opset 17): the checker and inference see them in com.microsoft, which
  they skip, and the inferred copy gets the ONNX domain back (`hide_onnx_domain_contrib`).

`fill_function_defaults` is no leniency: onnx's strict inference expands the function body of
ops such as MeanVarianceNormalization and fails when a body refers to an attribute the node
leaves at its default; writing the schema's default out (same meaning) lets it expand.
"""
from __future__ import annotations

from typing import Callable

import onnx

from .errors import InvalidGraph
from .graph import stable_topological_order
from .graph_edit import MS_DOMAIN

Warn = Callable[[str], None]


def relax_for_checker(model: onnx.ModelProto, label: str, warn: Warn) -> list[Callable[[], None]]:
    """Adjust `model` for onnx.checker; returns the undo steps to run before shape inference."""
    g = model.graph
    if model.ir_version < 4:
        inputs = {v.name for v in g.input}
        if model.ir_version == 0:
            warn(f"{label} sets no ir_version; it is checked under IR 4 rules, as onnxruntime "
                 f"loads it")
        elif model.ir_version < 3:
            warn(f"{label} has IR version {model.ir_version}, older than opset imports; it is "
                 f"checked under IR 4 rules, as onnxruntime loads it")
        elif any(t.name not in inputs for t in g.initializer):
            warn(f"{label} is an IR 3 model with initializers that are not graph inputs; "
                 f"onnxruntime loads it, and so do we (they stay constants)")
        model.ir_version = 4
    undo: list[Callable[[], None]] = []
    for vi, is_output in [(v, False) for v in g.input] + [(v, True) for v in g.output]:
        kind = vi.type.WhichOneof("value") if vi.HasField("type") else None
        if kind is None and is_output:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            vi.type.tensor_type.shape.SetInParent()
            undo.append(lambda vi=vi: vi.ClearField("type"))
        elif kind in ("tensor_type", "sparse_tensor_type"):
            tt = getattr(vi.type, kind)
            if not tt.HasField("shape"):
                tt.shape.SetInParent()
                undo.append(lambda tt=tt: tt.ClearField("shape"))
    return undo





def import_contrib_domain(model: onnx.ModelProto, opsets: dict[str, int], label: str,
                          warn: Warn) -> None:
    """com.microsoft nodes with no opset import for their domain get version 1 (onnxruntime
    loads such models); `opsets` and the weightless copy both gain the import."""
    if MS_DOMAIN in opsets or not any(n.domain == MS_DOMAIN for g in _graphs(model.graph)
                                      for n in g.node):
        return
    opsets[MS_DOMAIN] = 1
    model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    warn(f"{label} uses com.microsoft ops without importing that domain; version 1 is assumed, "
         f"as onnxruntime does")


# Ops onnxruntime registers in the ONNX domain with no ONNX schema at these versions.
_ONNX_DOMAIN_CONTRIB = {"SimplifiedLayerNormalization": None, "LayerNormalization": 17}


def hide_onnx_domain_contrib(model: onnx.ModelProto, opsets: dict[str, int]
                             ) -> Callable[[onnx.ModelProto], None]:
    """Move onnxruntime's ONNX-domain contrib nodes to com.microsoft for the checker and
    inference; returns the step that moves them back in the inferred copy."""
    onnx_version = opsets.get("", 0)
    moved: list[tuple[int, int]] = []
    for gi, g in enumerate(_graphs(model.graph)):
        for ni, n in enumerate(g.node):
            if n.domain not in ("", "ai.onnx") or n.op_type not in _ONNX_DOMAIN_CONTRIB:
                continue
            below = _ONNX_DOMAIN_CONTRIB[n.op_type]
            if below is None or onnx_version < below:
                n.domain = MS_DOMAIN
                moved.append((gi, ni))
    added = bool(moved) and not any(o.domain == MS_DOMAIN for o in model.opset_import)
    if added:
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))

    def restore(inferred: onnx.ModelProto) -> None:
        graphs = list(_graphs(inferred.graph))
        for gi, ni in moved:
            graphs[gi].node[ni].domain = ""
        if added:
            keep = [o for o in inferred.opset_import if o.domain != MS_DOMAIN]
            del inferred.opset_import[:]
            inferred.opset_import.extend(keep)
    return restore


def fill_function_defaults(model: onnx.ModelProto, opsets: dict[str, int]) -> None:
    """Write out the schema defaults of omitted attributes of ops that onnx defines by a
    function body (ai.onnx and ai.onnx.ml only)."""
    for g in _graphs(model.graph):
        for n in g.node:
            domain = "" if n.domain in ("", "ai.onnx") else n.domain
            if domain not in ("", "ai.onnx.ml") or domain not in opsets:
                continue
            try:
                schema = onnx.defs.get_schema(n.op_type, opsets[domain], domain)
            except onnx.defs.SchemaError:
                continue
            if not (schema.has_function or schema.has_context_dependent_function):
                continue
            given = {a.name for a in n.attribute}
            for name, attr in schema.attributes.items():
                default = attr.default_value
                if name not in given and default.type != onnx.AttributeProto.UNDEFINED:
                    added = n.attribute.add()
                    added.CopyFrom(default)
                    added.name = name


def strip_declared_shapes(model: onnx.ModelProto) -> None:
    """Drop declared shapes of intermediate values (every graph) and of the main outputs."""
    for g in _graphs(model.graph):
        for vi in g.value_info:
            _clear_shape(vi)
    for vi in model.graph.output:
        _clear_shape(vi)


def _clear_shape(vi: onnx.ValueInfoProto) -> None:
    kind = vi.type.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        getattr(vi.type, kind).ClearField("shape")


def _graphs(g: onnx.GraphProto):
    stack = [g]
    while stack:
        g = stack.pop()
        yield g
        for n in g.node:
            for a in n.attribute:
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)


# --- topological order ----------------------------------------------------------------------------

def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's bodies read from enclosing graphs (all nesting levels)."""
    used: set[str] = set()
    defined: set[str] = set()
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for g in _graphs(sub):
                defined.update(v.name for v in g.input)
                defined.update(t.name for t in g.initializer)
                defined.update(s.values.name for s in g.sparse_initializer)
                for n in g.node:
                    used.update(n.input)
                    defined.update(n.output)
                used.update(v.name for v in g.output)
    return used - defined


def sort_nodes(model: onnx.ModelProto, label: str, warn: Warn) -> None:
    """Put every graph's nodes in topological order (onnxruntime sorts; onnx's checker refuses
    unsorted graphs). Names nobody produces are left for the checker to report."""
    stack: list[tuple[onnx.GraphProto, set[str], str]] = [(model.graph, set(), "main graph")]
    while stack:
        g, outer, where = stack.pop()
        available = outer | {v.name for v in g.input} | {t.name for t in g.initializer}
        available |= {s.values.name for s in g.sparse_initializer} | {""}
        produced = {o for n in g.node for o in n.output if o}
        needs = [[i for i in list(n.input) + sorted(_subgraph_reads(n)) if i in produced]
                 if _has_subgraph(n) else [i for i in n.input if i in produced] for n in g.node]
        seen = set(available)
        in_order = True
        for n, deps in zip(g.node, needs):
            if any(d not in seen for d in deps):
                in_order = False
                break
            seen.update(n.output)
        if not in_order:
            _reorder(g, needs, available, f"{label}, {where}")
            warn(f"{label}: nodes of the {where} are not in topological order; they are sorted, "
                 f"as onnxruntime does")
        visible = available | produced
        for n in g.node:
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    stack.append((sub, visible, f"body '{a.name}' of node '{n.name}'"))


def _has_subgraph(n: onnx.NodeProto) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in n.attribute)


def _reorder(g: onnx.GraphProto, needs: list[list[str]], available: set[str], where: str) -> None:
    producer = {o: k for k, n in enumerate(g.node) for o in n.output if o}
    order = stable_topological_order([{producer[d] for d in deps if d not in available}
                                      for deps in needs])
    if len(order) != len(g.node):
        stuck = sorted(g.node[k].name or g.node[k].op_type for k in set(range(len(g.node))) - set(order))
        raise InvalidGraph(f"{where} has a cycle through node(s) {', '.join(stuck[:5])}")
    nodes = [g.node[k] for k in order]
    copies = []
    for n in nodes:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del g.node[:]
    g.node.extend(copies)
