"""Level-1 rewrites that need no knowledge of providers: folding and redundant-node elimination.

Constant folding evaluates nodes with the CPU provider's own kernels (looked up in its registry),
so a folded value is bit-for-bit what the kernel would have produced at run time.
"""
from __future__ import annotations

import logging

import numpy as np

from .graph import Graph, Node
from .graph_edit import MS_DOMAIN, OWN_DOMAIN, GraphEditor, array_attr_key, static_shape
from .kernel import KernelContext, normalize_outputs
from .rewrite import Rewrite, int_list, nodes_in_order
from .options import GraphOptimizationLevel
from .types import tensor_dtype

log = logging.getLogger("ep_core")

# Ops whose result is not a function of their inputs: never folded or merged.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "BiasDropout", "BitmaskDropout",
                    "BitmaskBiasDropout"}
# Domains whose ops are pure functions of their inputs (custom domains may have side effects).
FOLDABLE_DOMAINS = ("", "ai.onnx.ml", OWN_DOMAIN, MS_DOMAIN)


# --- constant folding -------------------------------------------------------------------------

class ConstantFolding(Rewrite):
    """Nodes whose inputs are all constants become initializers (values from the CPU kernels).

    Shape/Size of a value whose shape is fully static fold too, whatever the value itself is.
    """
    name = "ConstantFolding"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        registry = cpu = None
        for node in nodes_in_order(graph):
            if not ed.alive(node) or node.domain not in FOLDABLE_DOMAINS or node.subgraphs \
                    or node.op_type in NONDETERMINISTIC:
                continue
            outs = self._static_shape_value(ed, node)
            if outs is None:
                if any(i and ed.const(i) is None for i in node.inputs) or \
                        (not node.inputs and node.op_type != "Constant"):
                    continue
                if registry is None:
                    cpu = self.ctx.cpu
                    registry = cpu.get_kernel_registry()
                outs = self._evaluate(node, ed, registry, cpu)
                if outs is None:
                    continue
            for name, value in zip(node.outputs, outs):
                if name:
                    want = tensor_dtype(ed.type_of(name))
                    if want is not None and value.dtype != want:
                        value = value.astype(want)
                    graph.initializers.pop(name, None)
                    ed.add_initializer(name, value, exact_name=True)
            ed.remove(node)
        return ed.commit()

    @staticmethod
    def _static_shape_value(ed: GraphEditor, node: Node) -> tuple | None:
        if node.domain or node.op_type not in ("Shape", "Size") or not node.inputs:
            return None
        shape = static_shape(ed.type_of(node.inputs[0]))
        if shape is None:
            c = ed.const(node.inputs[0])
            shape = None if c is None else c.shape
        if shape is None:
            return None
        if node.op_type == "Size":
            return (np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64),)
        rank = len(shape)
        start, end = int(node.attr("start", 0)), node.attr("end")
        end = rank if end is None else int(end)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return (np.array(shape[start:end], dtype=np.int64),)

    def _evaluate(self, node: Node, ed: GraphEditor, registry, cpu) -> tuple | None:
        kdef = registry.lookup(node)
        if kdef is None:
            if node.op_type == "Constant" and isinstance(node.attrs.get("value"), np.ndarray):
                return (np.array(node.attrs["value"]),)
            return None
        args = [ed.const(i) if i else None for i in node.inputs]
        try:
            with np.errstate(all="ignore"):
                kern = kdef.factory(node, KernelContext(cpu, self.ctx.options, max_tensor_bytes=int(
                    getattr(self.ctx.options, "max_tensor_bytes", 0) or 0)))
                outs = kern.compute(*args)
        except Exception as e:  # not foldable here: the node simply stays and fails (or not) at run
            log.debug("constant folding skipped %s: %s: %s", node.describe(), type(e).__name__, e)
            return None
        outs = normalize_outputs(outs, len(node.outputs))
        if len(outs) < len([o for o in node.outputs if o]):
            return None
        result = []
        for name, v in zip(node.outputs, outs):
            if name and not isinstance(v, (np.ndarray, np.generic)):
                return None  # sequences / optionals stay as nodes
            result.append(np.array(v) if name else None)
        return tuple(result)


# --- redundant nodes --------------------------------------------------------------------------

class EliminateIdentity(Rewrite):
    """Identity on a tensor is bypassed (graph outputs keep their names)."""
    name = "EliminateIdentity"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in ed.nodes():
            if node.op_type != "Identity" or node.domain:
                continue
            tp = node.input_types[0] if node.input_types else None
            if tp is not None and tp.WhichOneof("value") != "tensor_type":
                continue
            ed.bypass(node, node.inputs[0], node.outputs[0])
        return ed.commit()


class EliminateDropout(Rewrite):
    """Dropout in inference mode is an identity when its mask output is unused."""
    name = "EliminateDropout"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in ed.nodes():
            if node.op_type != "Dropout" or node.domain:
                continue
            if any(o and ed.used(o) for o in node.outputs[1:]):
                continue
            if len(node.inputs) > 2 and node.inputs[2]:
                mode = ed.const(node.inputs[2])
                if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                    continue
            if node.attr("is_test", 1) == 0 and node.since_version < 7:
                continue  # opset <= 6 training-mode Dropout really drops
            ed.bypass(node, node.inputs[0], node.outputs[0])
        return ed.commit()


class EliminateNoopCast(Rewrite):
    """Cast to the type the value already has."""
    name = "EliminateNoopCast"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in ed.nodes():
            if node.op_type != "Cast" or node.domain:
                continue
            src = ed.dtype(node.inputs[0])
            to = node.attr("to")
            if src is None or to is None or isinstance(to, str):
                continue
            from .types import np_dtype
            try:
                if np_dtype(int(to)) != src:
                    continue
            except (KeyError, TypeError, ValueError):
                continue
            ed.bypass(node, node.inputs[0], node.outputs[0])
        return ed.commit()


def _perm(node: Node, rank: int | None) -> list[int] | None:
    perm = node.attr("perm")
    if perm is None:
        return None if rank is None else list(range(rank))[::-1]
    return [int(p) for p in perm]


class EliminateNoopTranspose(Rewrite):
    """Transpose with the identity permutation; two Transposes in a row become one (or none)."""
    name = "EliminateNoopTranspose"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in nodes_in_order(graph):
            if not ed.alive(node) or node.op_type != "Transpose" or node.domain:
                continue
            perm = _perm(node, ed.rank(node.inputs[0]))
            if perm is None:
                continue
            first = ed.producer_of(node.inputs[0], "Transpose")
            if first is not None:
                p1 = _perm(first, ed.rank(first.inputs[0]))
                if p1 is not None and len(p1) == len(perm):
                    composed = [p1[j] for j in perm]
                    alone = ed.only_consumer(first.outputs[0]) is node
                    if composed == list(range(len(perm))):
                        ed.bypass(node, first.inputs[0], node.outputs[0])
                        continue
                    if alone:
                        ed.set_inputs(node, [first.inputs[0]])
                        node.attrs["perm"] = composed
                        ed.remove(first)
                        continue
            if perm == list(range(len(perm))):
                ed.bypass(node, node.inputs[0], node.outputs[0])
        return ed.commit()


def _norm_axes(axes: list[int], rank: int) -> set[int] | None:
    out = {a + rank if a < 0 else a for a in axes}
    return out if all(0 <= a < rank for a in out) and len(out) == len(axes) else None


class EliminateUnsqueezeSqueeze(Rewrite):
    """Unsqueeze then Squeeze of the same axes (or the reverse) is the identity."""
    name = "EliminateUnsqueezeSqueeze"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in nodes_in_order(graph):
            if not ed.alive(node) or node.domain or node.op_type not in ("Squeeze", "Unsqueeze"):
                continue
            other = "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze"
            first = ed.producer_of(node.inputs[0], other)
            if first is None:
                continue
            x = first.inputs[0]
            rank_x = ed.rank(x)
            a1 = int_list(ed, first, "axes", 1)
            a2 = int_list(ed, node, "axes", 1)
            if rank_x is None or a1 is False or a2 is False:
                continue
            if node.op_type == "Squeeze":  # x -> Unsqueeze(a1) -> Squeeze(a2)
                if a1 is None:
                    continue
                mid = rank_x + len(a1)
                s1 = _norm_axes(a1, mid)
                if a2 is None:
                    shape = static_shape(ed.type_of(x))
                    if shape is None or 1 in shape:
                        continue
                    s2 = s1
                else:
                    s2 = _norm_axes(a2, mid)
            else:  # x -> Squeeze(a1) -> Unsqueeze(a2)
                if a2 is None:
                    continue
                if a1 is None:
                    shape = static_shape(ed.type_of(x))
                    if shape is None:
                        continue
                    s1 = {k for k, d in enumerate(shape) if d == 1}
                else:
                    s1 = _norm_axes(a1, rank_x)
                s2 = _norm_axes(a2, rank_x)
            if s1 is None or s1 != s2:
                continue
            ed.bypass(node, x, node.outputs[0])
        return ed.commit()


class FuseReshapeChain(Rewrite):
    """Reshape(Reshape|Flatten|Squeeze|Unsqueeze(x), s) = Reshape(x, s) for a constant s without
    copied (0) dims; a Reshape to the shape the value already has is dropped."""
    name = "FuseReshapeChain"
    SHAPE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in nodes_in_order(graph):
            if not ed.alive(node) or node.op_type != "Reshape" or node.domain or len(node.inputs) < 2:
                continue
            src_shape = static_shape(ed.type_of(node.inputs[0]))
            if src_shape is not None and src_shape == static_shape(ed.type_of(node.outputs[0])):
                ed.bypass(node, node.inputs[0], node.outputs[0])
                continue
            target = ed.const(node.inputs[1])
            first = ed.producer_of(node.inputs[0], self.SHAPE_OPS)
            if target is None or first is None:
                continue
            if (target == 0).any() and not node.attr("allowzero", 0):
                continue  # 0 copies a dim of the intermediate value, which differs from x's
            ed.set_inputs(node, [first.inputs[0], node.inputs[1]])
        return ed.commit()


class DeduplicateInitializers(Rewrite):
    """Constant initializers with equal dtype, shape and content are read through one name, so
    common-subexpression elimination sees the nodes reading them as equal."""
    name = "DeduplicateInitializers"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        groups: dict = {}
        for name, value in graph.initializers.items():
            if ed.const(name) is None or ed.is_output(name) or name in ed.inputs or value.dtype == object:
                continue
            groups.setdefault((value.dtype.str, value.shape), []).append(name)
        for names in groups.values():
            if len(names) < 2:
                continue
            kept: list[str] = []
            for name in names:
                value = graph.initializers[name]
                same = next((k for k in kept if _equal_arrays(graph.initializers[k], value)), None)
                if same is None:
                    kept.append(name)
                elif ed.used(name):
                    ed.replace_uses(name, same)
        return ed.commit()


def _equal_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads and -0.0 included): a cheap probe first, then the bytes."""
    if a.size and (a.flat[0].tobytes() != b.flat[0].tobytes() or a.flat[-1].tobytes() != b.flat[-1].tobytes()):
        return False
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


class CommonSubexpressionElimination(Rewrite):
    """Nodes with the same op, attributes and inputs compute the same values: keep one."""
    name = "CommonSubexpressionElimination"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        seen: dict = {}
        for node in nodes_in_order(graph):
            if not ed.alive(node) or node.subgraphs or node.op_type in NONDETERMINISTIC \
                    or node.domain not in FOLDABLE_DOMAINS:  # custom ops may have side effects
                continue
            try:
                key = (node.domain, node.op_type, tuple(node.inputs),
                       tuple(sorted((k, array_attr_key(v)) for k, v in node.attrs.items())),
                       tuple(bool(o) for o in node.outputs))
                hash(key)
            except TypeError:
                continue
            keep = seen.get(key)
            if keep is None or not ed.alive(keep):
                seen[key] = node
                continue
            if any(o and ed.is_output(o) for o in node.outputs):
                continue
            ed.remove(node)
            for dup, orig in zip(node.outputs, keep.outputs):
                if dup:
                    ed.replace_uses(dup, orig)
        return ed.commit()


class EliminateDeadNodes(Rewrite):
    """Nodes (of standard or our own domain) none of whose outputs is read, and initializers nobody
    reads (unless feedable)."""
    name = "EliminateDeadNodes"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in reversed(nodes_in_order(graph)):
            if ed.alive(node) and node.domain in FOLDABLE_DOMAINS and \
                    not any(o and ed.used(o) for o in node.outputs):
                ed.remove(node)   # custom-domain ops may have side effects: they stay
        changed = ed.commit()
        inputs = {v.name for v in graph.inputs}
        for name in list(graph.initializers):
            if name not in inputs and not ed.used(name):
                del graph.initializers[name]
                graph.value_info.pop(name, None)
                changed = True
        return changed


class EliminateDeadNodesExtended(EliminateDeadNodes):
    """The same clean-up after the extended fusions."""
    name = "EliminateDeadNodesExtended"
    level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED
