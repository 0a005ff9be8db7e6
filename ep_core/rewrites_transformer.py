"""Level-2 fusions of the subgraphs transformer exporters emit: Gelu, FastGelu, LayerNormalization,
SkipLayerNormalization and BERT-style multi-head self-attention.

Matching walks from a distinctive anchor (Erf, Tanh, ReduceMean, LayerNormalization, Softmax)
through single-consumer edges only, so no value a matched node produces is needed elsewhere.
The fused ops are onnxruntime's where it has them (ONNX ops, then its `com.microsoft` contrib
ops, then the ONNX-domain LayerNormalization it registers below opset 17), so optimized models
run in onnxruntime; our own domain's ops are the fallback for providers without those kernels.
"""
from __future__ import annotations

import numpy as np
import onnx

from .graph import Graph, Node
from .graph_edit import OWN_DOMAIN, GraphEditor, tensor_type
from .rewrite import Rewrite, int_list, nodes_in_order
from .options import GraphOptimizationLevel
from .rewrites_fusion import MS_DOMAIN

SQRT2 = float(np.sqrt(2.0))
SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


def scalar(ed: GraphEditor, name: str) -> float | None:
    """Value of a one-element constant."""
    c = ed.const(name)
    if c is None or c.size != 1 or c.dtype.kind not in "fiu":
        return None
    return float(c.reshape(-1)[0])


def near(v: float | None, target: float, rtol: float = 1e-3) -> bool:
    return v is not None and abs(v - target) <= rtol * abs(target)


def other_input(node: Node, value: str) -> str | None:
    """The other operand of a binary node that reads `value` once."""
    if len(node.inputs) != 2 or node.inputs.count(value) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


def single(ed: GraphEditor, value: str, op: str | tuple) -> Node | None:
    """The only consumer of `value`, if it is one of the ONNX ops `op`."""
    n = ed.only_consumer(value)
    ops = (op,) if isinstance(op, str) else op
    return n if n is not None and not n.domain and n.op_type in ops else None


def const_operand(ed: GraphEditor, node: Node) -> tuple[str, float] | None:
    """(variable input, constant) of a binary node with exactly one scalar-constant operand."""
    a, b = node.inputs[0], node.inputs[1]
    ca, cb = scalar(ed, a), scalar(ed, b)
    if cb is not None and ca is None:
        return a, cb
    if ca is not None and cb is None:
        return b, ca
    return None


def half_x_product(ed: GraphEditor, v: str, x: str) -> tuple[list[Node], str] | None:
    """Match 0.5 * x * v in any association; returns (nodes after v, final value)."""
    m1 = single(ed, v, "Mul")
    if m1 is None:
        return None
    o = other_input(m1, v)
    if o is None:
        return None
    if o == x:
        m2 = single(ed, m1.outputs[0], "Mul")
        if m2 is not None and near(scalar(ed, other_input(m2, m1.outputs[0]) or ""), 0.5):
            return [m1, m2], m2.outputs[0]
        return None
    if near(scalar(ed, o), 0.5):
        m2 = single(ed, m1.outputs[0], "Mul")
        if m2 is not None and other_input(m2, m1.outputs[0]) == x:
            return [m1, m2], m2.outputs[0]
        return None
    h = ed.producer_of(o, "Mul")
    if h is not None and ed.only_consumer(o) is m1 and x in h.inputs:
        hc = const_operand(ed, h)
        if hc is not None and hc[0] == x and near(hc[1], 0.5):
            return [h, m1], m1.outputs[0]
    return None


class _TransformerFusion(Rewrite):
    level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED

    def place(self, ed: GraphEditor, anchor: Node, candidates: list[Node], old: list[Node],
              inits: dict[str, np.ndarray] | None = None) -> bool:
        """Insert the first candidate the anchor's provider supports in place of `old`.

        `inits` (new constants the candidates read, under names from `ed.fresh`) are added only
        then, so a refused fusion leaves the graph untouched.
        """
        for cand in candidates:
            nodes = cand if isinstance(cand, list) else [cand]   # [helper nodes..., fused op]
            # The helpers (a Cast) go to the same provider as the fused op.
            if self.ctx.supports(anchor, nodes[-1], old) and \
                    all(self.ctx.supports(anchor, n, old) for n in nodes[:-1]):
                for name, value in (inits or {}).items():
                    ed.add_initializer(name, value, exact_name=True)
                for n in nodes:
                    ed.refresh_types(n)
                ed.replace_outputs(old, nodes)
                return True
        return False

    def gelu_nodes(self, ed: GraphEditor, x: str, out: str, name: str, tanh: bool) -> list[Node]:
        """Standard Gelu (opset >= 20) first, then onnxruntime's contrib op, then our own domain's."""
        own = "FastGelu" if tanh else "Gelu"
        cands = []
        if ed.graph.opset_imports.get("", 0) >= 20:
            cands.append(ed.make_node("Gelu", [x], [out], name=ed.fresh(name + "_gelu"),
                                      attrs={"approximate": "tanh"} if tanh else {}))
        for domain in (MS_DOMAIN, OWN_DOMAIN):
            cands.append(ed.make_node(own, [x], [out], name=ed.fresh(name + "_" + own), domain=domain))
        return cands


class FuseGelu(_TransformerFusion):
    """x * 0.5 * (1 + Erf(x / sqrt(2)))  (any association, Div or Mul by 1/sqrt(2))  =>  Gelu."""
    name = "FuseGelu"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for erf in nodes_in_order(graph):
            if not ed.alive(erf) or erf.op_type != "Erf" or erf.domain:
                continue
            t = ed.producer_of(erf.inputs[0], ("Div", "Mul"))
            if t is None or ed.only_consumer(t.outputs[0]) is not erf:
                continue
            if t.op_type == "Div":
                x, ok = t.inputs[0], near(scalar(ed, t.inputs[1]), SQRT2)
            else:
                xc = const_operand(ed, t)
                x, ok = (xc[0], near(xc[1], 1 / SQRT2)) if xc else (None, False)
            add = single(ed, erf.outputs[0], "Add")
            if not ok or add is None or not near(scalar(ed, other_input(add, erf.outputs[0]) or ""), 1.0):
                continue
            tail = half_x_product(ed, add.outputs[0], x)
            if tail is None:
                continue
            nodes, out = tail
            cands = self.gelu_nodes(ed, x, out, erf.name, tanh=False)
            self.place(ed, erf, cands, [t, erf, add] + nodes)
        return ed.commit()


class FuseFastGelu(_TransformerFusion):
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  =>  FastGelu."""
    name = "FuseFastGelu"

    def _cube_term(self, ed: GraphEditor, w: str, x: str) -> list[Node] | None:
        """Nodes computing w = 0.044715 * x^3 (Pow(x, 3) or x*x*x), else None."""
        m = ed.producer_of(w, "Mul")
        if m is None or ed.only_consumer(w) is None:
            return None
        mc = const_operand(ed, m)
        if mc is None or not near(mc[1], 0.044715):
            return None
        p = ed.producer_of(mc[0])
        if p is None or ed.only_consumer(mc[0]) is not m:
            return None
        if p.op_type == "Pow" and p.inputs[0] == x and near(scalar(ed, p.inputs[1]), 3.0):
            return [p, m]
        if p.op_type == "Mul" and x in p.inputs:
            sq_name = other_input(p, x)
            sq = ed.producer_of(sq_name or "", "Mul")
            if sq is not None and sq.inputs == [x, x] and ed.only_consumer(sq_name) is p:
                return [sq, p, m]
        return None

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for th in nodes_in_order(graph):
            if not ed.alive(th) or th.op_type != "Tanh" or th.domain:
                continue
            u = ed.producer_of(th.inputs[0], "Mul")
            if u is None or ed.only_consumer(th.inputs[0]) is not th:
                continue
            uc = const_operand(ed, u)
            if uc is None or not near(uc[1], SQRT_2_OVER_PI):
                continue
            v = ed.producer_of(uc[0], "Add")
            if v is None or ed.only_consumer(uc[0]) is not u:
                continue
            found = None
            for x, w in ((v.inputs[0], v.inputs[1]), (v.inputs[1], v.inputs[0])):
                cube = self._cube_term(ed, w, x)
                if cube is not None:
                    found = (x, cube)
                    break
            add = single(ed, th.outputs[0], "Add")
            if found is None or add is None or \
                    not near(scalar(ed, other_input(add, th.outputs[0]) or ""), 1.0):
                continue
            x, cube = found
            tail = half_x_product(ed, add.outputs[0], x)
            if tail is None:
                continue
            nodes, out = tail
            cands = self.gelu_nodes(ed, x, out, th.name, tanh=True)
            self.place(ed, th, cands, cube + [v, u, th, add] + nodes)
        return ed.commit()


def _reduce_axes(ed: GraphEditor, node: Node, rank: int) -> list[int] | None:
    """Normalized axes of a keepdims ReduceMean over the trailing axes, else None."""
    if node.attr("keepdims", 1) != 1:
        return None
    axes = int_list(ed, node, "axes", 1)
    if not axes:
        return None
    axes = sorted(a + rank if a < 0 else a for a in axes)
    return axes if axes == list(range(rank - len(axes), rank)) else None


class FuseLayerNormalization(_TransformerFusion):
    """ReduceMean / Sub / Pow / ReduceMean / Add(eps) / Sqrt / Div / Mul(gamma) / Add(beta)
    => LayerNormalization (ONNX's; below opset 17 the ONNX-domain one onnxruntime registers, whose
    models onnx.checker refuses, then our domain's)."""
    name = "FuseLayerNormalization"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for r1 in nodes_in_order(graph):
            if not ed.alive(r1) or r1.op_type != "ReduceMean" or r1.domain:
                continue
            x = r1.inputs[0]
            shape = ed.shape(x)
            dt = ed.dtype(x)
            if shape is None or dt is None or dt.kind != "f":
                continue
            axes = _reduce_axes(ed, r1, len(shape))
            sub = single(ed, r1.outputs[0], "Sub")
            if axes is None or sub is None or sub.inputs != [x, r1.outputs[0]]:
                continue
            d = sub.outputs[0]
            users = ed.consumers(d)
            if ed.is_output(d) or len(users) != 2:
                continue
            sq = next((n for n in users if not n.domain and (
                (n.op_type == "Pow" and n.inputs[0] == d and near(scalar(ed, n.inputs[1]), 2.0)) or
                (n.op_type == "Mul" and n.inputs == [d, d]))), None)
            div = next((n for n in users if not n.domain and n.op_type == "Div" and n.inputs[0] == d), None)
            if sq is None or div is None:
                continue
            r2 = single(ed, sq.outputs[0], "ReduceMean")
            if r2 is None or _reduce_axes(ed, r2, len(shape)) != axes:
                continue
            add_eps = single(ed, r2.outputs[0], "Add")
            eps = scalar(ed, other_input(add_eps, r2.outputs[0]) or "") if add_eps else None
            sqrt = single(ed, add_eps.outputs[0], "Sqrt") if add_eps else None
            if eps is None or sqrt is None or ed.only_consumer(sqrt.outputs[0]) is not div:
                continue
            nodes = [r1, sub, sq, r2, add_eps, sqrt, div]
            norm_shape = shape[axes[0]:]
            gamma = np.ones(norm_shape, dt) if all(isinstance(s, int) for s in norm_shape) else None
            beta = None
            out = div.outputs[0]
            mul = single(ed, out, "Mul")
            if mul is not None and ed.const(other_input(mul, out) or "") is not None:
                gamma = ed.const(other_input(mul, out))
                nodes.append(mul)
                out = mul.outputs[0]
                add = single(ed, out, "Add")
                if add is not None and ed.const(other_input(add, out) or "") is not None:
                    beta = ed.const(other_input(add, out))
                    nodes.append(add)
                    out = add.outputs[0]
            if gamma is None or gamma.dtype != dt or gamma.ndim > len(norm_shape):
                continue
            if not all(isinstance(s, int) for s in norm_shape):
                continue
            try:
                gamma = np.broadcast_to(gamma, norm_shape).copy()
                beta = None if beta is None else np.broadcast_to(beta, norm_shape).astype(dt)
            except ValueError:
                continue
            inits = {ed.fresh(r1.name + "_gamma"): gamma}
            if beta is not None:
                inits[ed.fresh(r1.name + "_beta")] = beta
            ins = [x] + list(inits)
            attrs = {"axis": axes[0] - len(shape), "epsilon": float(eps)}
            cands = [ed.make_node("LayerNormalization", ins, [out], ed.fresh(r1.name + "_ln"), attrs=attrs)]
            cands.append(ed.make_node("LayerNormalization", ins, [out], ed.fresh(r1.name + "_ln"),
                                      domain=OWN_DOMAIN, attrs=attrs))
            self.place(ed, r1, cands, nodes, inits)
        return ed.commit()


class FuseSkipLayerNormalization(_TransformerFusion):
    """Add(input, skip [+ bias]) -> LayerNormalization over the last axis => SkipLayerNormalization.

    When the sum is also read elsewhere (the residual stream), it becomes the fused op's fourth
    output so those readers stay correct.
    """
    name = "FuseSkipLayerNormalization"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for ln in nodes_in_order(graph):
            if not ed.alive(ln) or ln.op_type != "LayerNormalization" or ln.domain not in ("", OWN_DOMAIN):
                continue
            s = ln.inputs[0]
            shape = ed.shape(s)
            if shape is None or len(shape) < 2 or any(o and ed.used(o) for o in ln.outputs[1:]):
                continue
            axis = int(ln.attr("axis", -1))
            if axis not in (-1, len(shape) - 1):
                continue
            add = ed.producer_of(s, "Add")
            if add is None or add.since_version < 7 or len(add.inputs) != 2:
                continue
            a, b = add.inputs
            if ed.shape(a) != shape or ed.shape(b) != shape:
                continue
            ins, absorbed, bias = [a, b], [add], ""
            inner = ed.producer_of(a, "Add")
            if inner is not None and ed.only_consumer(a) is add:
                for y, c in ((inner.inputs[0], inner.inputs[1]), (inner.inputs[1], inner.inputs[0])):
                    cv = ed.const(c)
                    if cv is not None and cv.ndim == 1 and ed.shape(y) == shape:
                        ins, absorbed, bias = [y, b], [inner, add], c
                        break
            gamma = ln.inputs[1]
            beta = ln.inputs[2] if len(ln.inputs) > 2 else ""
            if ed.rank(gamma) != 1 or (beta and ed.rank(beta) != 1):
                continue
            keep_sum = ed.consumers(s) != [ln] or ed.is_output(s)
            outs = [ln.outputs[0]] + (["", "", s] if keep_sum else [])
            inputs = ins + [gamma, beta, bias]
            while not inputs[-1]:
                inputs.pop()
            cands = [ed.make_node("SkipLayerNormalization", inputs, outs, ed.fresh(ln.name + "_skip"),
                                  domain=domain, attrs={"epsilon": float(ln.attr("epsilon", 1e-5))})
                     for domain in (MS_DOMAIN, OWN_DOMAIN)]
            self.place(ed, ln, cands, absorbed + [ln])
        return ed.commit()


def key_mask_source(ed: GraphEditor, mask: str) -> tuple[str, float] | None:
    """(M, c) when the additive mask is (1 - Cast(Unsqueeze(M))) * c, M a 2-D (batch, keys) 0/1
    mask unsqueezed to (batch, 1, 1, keys) (one Unsqueeze or two, Cast before or after): how BERT
    exports turn the attention mask into a bias of the scores. onnxruntime's Attention takes M
    itself as mask_index (adding `mask_filter_value` c where M is 0): the same for 0/1 masks."""
    mul = ed.producer_of(mask, "Mul")
    mc = const_operand(ed, mul) if mul is not None else None
    sub = ed.producer_of(mc[0], "Sub") if mc is not None else None
    if sub is None or not near(scalar(ed, sub.inputs[0]), 1.0) or mc[1] >= 0:
        return None
    v, seen = sub.inputs[1], []
    shape = ed.shape(v)
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1:
        return None
    while len(seen) < 3:
        n = ed.producer_of(v, ("Cast", "Unsqueeze"))
        if n is None:
            break
        seen.append(n.op_type)
        v = n.inputs[0]
    if seen.count("Cast") != 1 or seen.count("Unsqueeze") not in (1, 2) or ed.rank(v) != 2:
        return None
    return v, mc[1]


class FuseAttention(_TransformerFusion):
    """BERT self-attention: three MatMul+Add projections of one input, Reshape/Transpose to heads,
    MatMul(Q, K^T), scale, additive mask, Softmax, MatMul(., V), Transpose, Reshape  => Attention:
    onnxruntime's (the mask as its mask_index when it is a 0/1 key mask made additive, see
    `key_mask_source`, or as its attention_bias when shaped (B|1, N|1, S, S)), else our domain's
    (additive mask of any broadcastable shape as the fourth input).
    """
    name = "FuseAttention"

    def _projection(self, ed: GraphEditor, value: str, perm: list[int], user: Node):
        """(nodes, X, W, b, heads, head_size) of Transpose(Reshape(MatMul(X, W) + b)) feeding `user`."""
        tr = ed.producer_of(value, "Transpose")
        if tr is None or ed.only_consumer(value) is not user or list(tr.attr("perm") or []) != perm:
            return None
        rs = ed.producer_of(tr.inputs[0], "Reshape")
        if rs is None or ed.only_consumer(tr.inputs[0]) is not tr:
            return None
        shape = ed.const(rs.inputs[1])
        add = ed.producer_of(rs.inputs[0], "Add")
        if shape is None or shape.size != 4 or add is None or ed.only_consumer(rs.inputs[0]) is not rs:
            return None
        for mm_out, b_name in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            mm = ed.producer_of(mm_out, "MatMul")
            b = ed.const(b_name)
            if mm is None or b is None or b.ndim != 1 or ed.only_consumer(mm_out) is not add:
                continue
            w = ed.const(mm.inputs[1])
            if w is None or w.ndim != 2 or w.shape[1] != b.shape[0]:
                continue
            heads, size = int(shape[2]), int(shape[3])
            if heads <= 0 and size > 0:
                heads = w.shape[1] // size
            elif size <= 0 and heads > 0:
                size = w.shape[1] // heads
            if heads <= 0 or heads * size != w.shape[1]:
                return None
            return [mm, add, rs, tr], mm.inputs[0], w, b, heads, size
        return None

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        int_masks: dict[str, str] = {}   # key mask -> its int32 copy (one Cast serves every layer)
        for sm in nodes_in_order(graph):
            if not ed.alive(sm) or sm.op_type != "Softmax" or sm.domain or ed.rank(sm.inputs[0]) != 4:
                continue
            axis = int(sm.attr("axis", -1 if sm.since_version >= 13 else 1))
            if axis not in (-1, 3):
                continue
            found = self._match(ed, sm)
            if found is None:
                continue
            old, ins, inits, heads, scale, out = found
            attrs = {"num_heads": heads, "scale": scale}
            name = ed.fresh(sm.name + "_attention")
            cands = [ed.make_node("Attention", ins, [out], name, domain=OWN_DOMAIN, attrs=attrs)]
            contrib = self._contrib(ed, ins, attrs, out, name, int_masks)
            if contrib is not None:
                cands.insert(0, contrib)
            self.place(ed, sm, cands, old, inits)
            if contrib is not None and len(contrib) == 2 and ed.alive(contrib[0]):
                int_masks[contrib[0].inputs[0]] = contrib[0].outputs[0]
        return ed.commit()

    def _contrib(self, ed: GraphEditor, ins: list[str], attrs: dict, out: str, name: str,
                 int_masks: dict[str, str]) -> list[Node] | None:
        """com.microsoft::Attention for the matched inputs (with a Cast of the key mask to int32
        in front where one is needed), or None when the mask fits neither of its inputs."""
        if len(ins) == 3:
            return [ed.make_node("Attention", ins, [out], name, domain=MS_DOMAIN, attrs=attrs)]
        x, mask = ins[0], ins[3]
        shape, xs = ed.shape(mask), ed.shape(x)
        if shape is not None and xs is not None and len(shape) == 4 and isinstance(xs[1], int) and \
                shape[0] in (1, xs[0]) and shape[1] in (1, attrs["num_heads"]) and shape[2:] == [xs[1], xs[1]]:
            return [ed.make_node("Attention", ins[:3] + ["", "", mask], [out], name, domain=MS_DOMAIN,
                                 attrs=attrs)]
        src = key_mask_source(ed, mask)
        if src is None:
            return None
        keys, filler = src
        attrs = dict(attrs, mask_filter_value=filler)
        if ed.dtype(keys) == np.int32:
            return [ed.make_node("Attention", ins[:3] + [keys], [out], name, domain=MS_DOMAIN, attrs=attrs)]
        if keys in int_masks:
            return [ed.make_node("Attention", ins[:3] + [int_masks[keys]], [out], name, domain=MS_DOMAIN,
                                 attrs=attrs)]
        keys32 = ed.fresh(keys + "_int32")
        ed.set_type(keys32, tensor_type(np.int32, ed.shape(keys)))
        cast = ed.make_node("Cast", [keys], [keys32], ed.fresh(keys + "_to_int32"),
                            attrs={"to": onnx.TensorProto.INT32})
        return [cast, ed.make_node("Attention", ins[:3] + [keys32], [out], name, domain=MS_DOMAIN, attrs=attrs)]

    def _match(self, ed: GraphEditor, sm: Node):
        s_in = sm.inputs[0]
        pre = ed.producer_of(s_in)
        if pre is None or ed.only_consumer(s_in) is not sm:
            return None
        mask, nodes = "", []
        if pre.op_type == "Add" and not pre.domain:
            for sc, m in ((pre.inputs[0], pre.inputs[1]), (pre.inputs[1], pre.inputs[0])):
                p = ed.producer_of(sc, ("Div", "Mul", "MatMul"))
                if p is not None and ed.only_consumer(sc) is pre:
                    mask, nodes, pre = m, [pre], p
                    break
            else:
                return None
        scale = 1.0
        qk = pre
        if pre.op_type in ("Div", "Mul") and not pre.domain:
            pc = const_operand(ed, pre)
            if pc is None or (pre.op_type == "Div" and pc[0] != pre.inputs[0]) or pc[1] == 0:
                return None
            scale = 1.0 / pc[1] if pre.op_type == "Div" else pc[1]
            qk = ed.producer_of(pc[0], "MatMul")
            if qk is None or ed.only_consumer(pc[0]) is not pre:
                return None
            nodes.append(pre)
        if qk.op_type != "MatMul" or qk.domain:
            return None
        q = self._projection(ed, qk.inputs[0], [0, 2, 1, 3], qk)
        k = self._projection(ed, qk.inputs[1], [0, 2, 3, 1], qk)
        ctx_mm = single(ed, sm.outputs[0], "MatMul")
        if q is None or k is None or ctx_mm is None or ctx_mm.inputs[0] != sm.outputs[0]:
            return None
        v = self._projection(ed, ctx_mm.inputs[1], [0, 2, 1, 3], ctx_mm)
        tr = single(ed, ctx_mm.outputs[0], "Transpose")
        if v is None or tr is None or list(tr.attr("perm") or []) != [0, 2, 1, 3]:
            return None
        rs = single(ed, tr.outputs[0], "Reshape")
        shape = ed.const(rs.inputs[1]) if rs is not None else None
        if shape is None or shape.size != 3:
            return None
        x = q[1]
        if k[1] != x or v[1] != x or not (q[4] == k[4] == v[4]) or q[2].shape != k[2].shape or \
                q[2].shape != v[2].shape or q[2].dtype != k[2].dtype or q[2].dtype != v[2].dtype:
            return None
        if int(shape[2]) not in (-1, q[2].shape[1]) or ed.rank(x) != 3:
            return None
        w = np.concatenate([q[2], k[2], v[2]], axis=1)
        b = np.concatenate([q[3], k[3], v[3]]).astype(w.dtype)
        inits = {ed.fresh(sm.name + "_qkv_weight"): w, ed.fresh(sm.name + "_qkv_bias"): b}
        ins = [x] + list(inits) + ([mask] if mask else [])
        old = q[0] + k[0] + v[0] + [qk] + nodes[::-1] + [sm, ctx_mm, tr, rs]
        return old, ins, inits, q[4], float(scale), rs.outputs[0]


class FuseTransposeMatMul(_TransformerFusion):
    """Transpose swapping the last two axes -> MatMul  =>  com.microsoft FusedMatMul with transA
    / transB, as onnxruntime's MatMul-Transpose fusion: the product reads the operand transposed
    in place (BLAS takes a transposed matrix as it is) instead of a copy made every run (GPT-2's
    K^T: a (1, 12, 128, 64) copy of ~80 us per layer and step). float32 (onnxruntime's
    FusedMatMul's type); the Transpose only where the MatMul is its one reader."""
    name = "FuseTransposeMatMul"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for mm in nodes_in_order(graph):
            if (not ed.alive(mm) or mm.op_type != "MatMul" or mm.domain or len(mm.inputs) != 2
                    or ed.dtype(mm.inputs[0]) != np.float32 or mm.inputs[0] == mm.inputs[1]):
                continue
            inputs, attrs, old = list(mm.inputs), {"alpha": 1.0}, []
            for k, flag in ((0, "transA"), (1, "transB")):
                t = ed.producer_of(inputs[k], "Transpose")
                rank = None if t is None else ed.rank(t.inputs[0])
                if (t is None or rank is None or rank < 2 or ed.only_consumer(inputs[k]) is not mm
                        or ed.is_output(inputs[k])):
                    continue
                perm = t.attr("perm", None)
                perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
                if perm != list(range(rank - 2)) + [rank - 1, rank - 2]:
                    continue
                inputs[k], attrs[flag] = t.inputs[0], 1
                old.append(t)
            if old:
                fused = ed.make_node("FusedMatMul", inputs, list(mm.outputs),
                                     name=ed.fresh(mm.name + "_trans"), domain=MS_DOMAIN, attrs=attrs)
                self.place(ed, mm, [fused], old + [mm])
        return ed.commit()
