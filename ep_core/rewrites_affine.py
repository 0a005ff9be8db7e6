"""Level-1 folding of per-channel affine ops into the op before them (weights change, nodes go).

Conv+BatchNormalization, Conv+Mul/Div/Add/Sub by a per-output-channel constant, and
BatchNormalization followed by such a constant all reduce to new constant weights, computed once
here in float64 and stored in the weights' dtype. MatMul+Add becomes one Gemm.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .graph_edit import GraphEditor
from .rewrite import Rewrite, nodes_in_order

AFFINE_OPS = ("Mul", "Div", "Add", "Sub")


def per_channel(c: np.ndarray, channels: int, rank: int, axis: int = 1) -> np.ndarray | None:
    """If `c`, broadcast against a rank-`rank` value, varies only along `axis`: its float64 vector
    of length `channels`; else None (it would mix channels or grow the result)."""
    c = np.asarray(c)
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if any(d != 1 for k, d in enumerate(shape) if k != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (channels,)).copy()


def affine_follower(ed: GraphEditor, value: str, channels: int, rank: int, dtype: np.dtype
                    ) -> tuple[Node, str, np.ndarray] | None:
    """The single consumer of `value` when it is Mul/Div/Add/Sub by a per-channel constant:
    (node, op, vector). Div/Sub only with `value` as the left operand."""
    node = ed.only_consumer(value)
    if node is None or node.domain or node.op_type not in AFFINE_OPS or len(node.inputs) != 2:
        return None
    if node.since_version < 7 or node.attr("broadcast") is not None:
        return None  # legacy broadcasting semantics
    a, b = node.inputs
    if a == value:
        other = b
    elif node.op_type in ("Mul", "Add"):
        other = a
    else:
        return None
    c = ed.const(other)
    if c is None or c.dtype != dtype:
        return None
    vec = per_channel(c, channels, rank)
    if vec is None:
        return None
    return node, node.op_type, vec


def _float(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def _bn_params(ed: GraphEditor, bn: Node) -> tuple | None:
    """(scale, bias, mean, var, eps) of an inference-mode BatchNormalization with constant stats."""
    if bn.domain or bn.op_type != "BatchNormalization" or len(bn.inputs) != 5:
        return None
    if bn.attr("training_mode", 0) or bn.attr("spatial", 1) != 1:
        return None
    if any(o and ed.used(o) for o in bn.outputs[1:]):
        return None
    vals = [ed.const(i) for i in bn.inputs[1:5]]
    if any(v is None for v in vals) or not all(_float(v.dtype) for v in vals):
        return None
    if len({v.size for v in vals}) != 1:
        return None
    return tuple(v.reshape(-1).astype(np.float64) for v in vals) + (float(bn.attr("epsilon", 1e-5)),)


def _conv_weights(ed: GraphEditor, conv: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """Constant (W, bias as float64 vector) of a Conv; bias zeros when absent."""
    if conv.domain or conv.op_type != "Conv" or len(conv.inputs) < 2:
        return None
    w = ed.const(conv.inputs[1])
    if w is None or not _float(w.dtype) or w.ndim < 3:
        return None
    if len(conv.inputs) > 2 and conv.inputs[2]:
        b = ed.const(conv.inputs[2])
        if b is None:
            return None
        b = b.reshape(-1).astype(np.float64)
    else:
        b = np.zeros(w.shape[0], np.float64)
    return w, b


def _set_conv_weights(ed: GraphEditor, conv: Node, w: np.ndarray, b: np.ndarray, dtype) -> None:
    wname = ed.add_initializer(conv.inputs[1] + "_fused", w.astype(dtype, copy=False))
    bname = ed.add_initializer((conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2]
                                else conv.inputs[1] + "_bias") + "_fused", b.astype(dtype))
    ed.set_inputs(conv, [conv.inputs[0], wname, bname])


def _scale_rows(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """W scaled per output channel, in W's precision (float32 at least; big weights stay cheap).
    One new array: a copy of W before the product and another after it (`_set_conv_weights`)
    were 200 MB more of fresh memory to fault in and write for ResNet-50 at session build."""
    cdt = np.promote_types(w.dtype, np.float32)
    return np.multiply(w, s.astype(cdt).reshape((-1,) + (1,) * (w.ndim - 1)), dtype=cdt)


class FuseConvBatchNorm(Rewrite):
    """Conv -> BatchNormalization (inference) becomes one Conv with rescaled weights and bias."""
    name = "FuseConvBatchNorm"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for bn in nodes_in_order(graph):
            if not ed.alive(bn) or bn.op_type != "BatchNormalization":
                continue
            params = _bn_params(ed, bn)
            conv = ed.producer_of(bn.inputs[0], "Conv")
            if params is None or conv is None or ed.only_consumer(conv.outputs[0]) is not bn:
                continue
            wb = _conv_weights(ed, conv)
            if wb is None:
                continue
            w, b = wb
            scale, bias, mean, var, eps = params
            if scale.size != w.shape[0]:
                continue
            s = scale / np.sqrt(var + eps)
            _set_conv_weights(ed, conv, _scale_rows(w, s), (b - mean) * s + bias, w.dtype)
            ed.remove(bn)
            ed.rename_output(conv, conv.outputs[0], bn.outputs[0])
        return ed.commit()


def _follow_affine(op: str, vec: np.ndarray, scale: np.ndarray, bias: np.ndarray):
    """(scale, bias) of `op(x * scale + bias, vec)` per channel; None if it cannot fold (x / 0)."""
    if op == "Mul":
        return scale * vec, bias * vec
    if op == "Div":
        return None if (vec == 0).any() else (scale / vec, bias / vec)
    if op == "Add":
        return scale, bias + vec
    return scale, bias - vec


class FuseConvMulAdd(Rewrite):
    """Conv followed by Mul/Div/Add/Sub with a per-output-channel constant folds into W and B."""
    name = "FuseConvMulAdd"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for conv in nodes_in_order(graph):
            if not ed.alive(conv) or conv.op_type != "Conv" or conv.domain:
                continue
            wb = _conv_weights(ed, conv)
            if wb is None:
                continue
            w, b = wb
            hit = affine_follower(ed, conv.outputs[0], w.shape[0], w.ndim, w.dtype)
            if hit is None:
                continue
            node, op, vec = hit
            folded = _follow_affine(op, vec, np.ones_like(vec), b)
            if folded is None:
                continue
            row_scale, b = folded
            _set_conv_weights(ed, conv, _scale_rows(w, row_scale) if op in ("Mul", "Div") else w,
                              b, w.dtype)
            ed.remove(node)
            ed.rename_output(conv, conv.outputs[0], node.outputs[0])
        return ed.commit()


class FuseBatchNormMulAdd(Rewrite):
    """BatchNormalization followed by a per-channel Mul/Div/Add/Sub constant: new scale and bias."""
    name = "FuseBatchNormMulAdd"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for bn in nodes_in_order(graph):
            if not ed.alive(bn) or bn.op_type != "BatchNormalization":
                continue
            params = _bn_params(ed, bn)
            rank = ed.rank(bn.inputs[0]) or ed.rank(bn.outputs[0])
            if params is None or not rank or rank < 2:
                continue
            scale, bias, mean, var, eps = params
            dtype = ed.const(bn.inputs[1]).dtype
            hit = affine_follower(ed, bn.outputs[0], scale.size, rank, ed.dtype(bn.outputs[0]) or dtype)
            if hit is None:
                continue
            node, op, vec = hit
            folded = _follow_affine(op, vec, scale, bias)
            if folded is None:
                continue
            scale, bias = folded
            sname = ed.add_initializer(bn.inputs[1] + "_fused", scale.astype(dtype))
            bname = ed.add_initializer(bn.inputs[2] + "_fused", bias.astype(ed.const(bn.inputs[2]).dtype))
            ed.set_inputs(bn, [bn.inputs[0], sname, bname, bn.inputs[3], bn.inputs[4]])
            ed.remove(node)
            ed.rename_output(bn, bn.outputs[0], node.outputs[0])
        return ed.commit()


class FuseMatMulAddToGemm(Rewrite):
    """MatMul of two matrices followed by Add of a bias broadcastable to the result: one Gemm."""
    name = "FuseMatMulAddToGemm"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for mm in nodes_in_order(graph):
            if not ed.alive(mm) or mm.op_type != "MatMul" or mm.domain:
                continue
            sa, sb = ed.shape(mm.inputs[0]), ed.shape(mm.inputs[1])
            dt = ed.dtype(mm.inputs[0])
            if sa is None or sb is None or len(sa) != 2 or len(sb) != 2 or dt is None or not _float(dt):
                continue
            add = ed.only_consumer(mm.outputs[0])
            if add is None or add.op_type != "Add" or add.domain or add.since_version < 7:
                continue
            c = add.inputs[1] if add.inputs[0] == mm.outputs[0] else add.inputs[0]
            sc = ed.shape(c)
            if sc is None or len(sc) > 2 or ed.dtype(c) != dt:
                continue
            m, n = sa[0], sb[1]
            sc2 = [1] * (2 - len(sc)) + list(sc)
            if not (sc2[0] in (1, m) and sc2[1] in (1, n)) or None in sc2:
                continue
            gemm = ed.make_node("Gemm", [mm.inputs[0], mm.inputs[1], c], [add.outputs[0]],
                                name=ed.fresh(mm.name + "_gemm"))
            if gemm.since_version < 7:
                continue
            ed.replace_outputs([mm, add], [gemm])
        return ed.commit()
