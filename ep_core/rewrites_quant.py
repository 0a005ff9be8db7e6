"""Level-2 fusions of the integer MatMul chains that dynamic quantization writes.

`quantize_dynamic` (ours for products of two activations, onnxruntime's for every MatMul) spells
a quantized MatMul as

    DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, x_zp, w_zp) -> Cast(to float)
        -> Mul(., Mul(x_scale, w_scale)) [-> Add(., bias)]

`FuseMatMulIntegerToFloat` turns MatMulInteger -> Cast -> Mul [-> Add] into
`com.microsoft::MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp, b_zp, bias)` (the int32
product never materialised; the CPU kernel scales it in its tiles), and
`FuseDynamicQuantizeMatMul` then folds a DynamicQuantizeLinear that feeds only that node, with
a constant B, into `com.microsoft::DynamicQuantizeMatMul(x, B, b_scale, b_zp, bias)`, as
onnxruntime's optimizer does. Where one DynamicQuantizeLinear feeds several products (Q, K and
V of a layer) it stays, and each product becomes a MatMulIntegerToFloat: x is quantized once.

The scale must be the product of the two operands' scales: when an operand comes from a
DynamicQuantizeLinear, its scale (and zero point) must be that node's; a_scale must be a
scalar, b_scale a scalar or one per column of a 2-D B (the ops' contract).
"""
from __future__ import annotations

import onnx

from .graph import Graph, Node
from .graph_edit import MS_DOMAIN, GraphEditor
from .options import GraphOptimizationLevel
from .rewrite import Rewrite, nodes_in_order

_FLOAT = onnx.TensorProto.FLOAT


def _is(node: Node | None, op: str, domain: str = "") -> bool:
    return node is not None and node.op_type == op and node.domain == domain


def _outputs(node: Node) -> list[str]:
    return [o for o in node.outputs if o]


def _size(ed: GraphEditor, name: str) -> int | None:
    """Element count of a value with a static shape (None if unknown)."""
    s = ed.shape(name)
    if s is None or any(not isinstance(d, int) for d in s):
        return None
    n = 1
    for d in s:
        n *= d
    return n


def _float32(ed: GraphEditor, name: str) -> bool:
    dt = ed.dtype(name)
    return dt is not None and dt.name == "float32"


def _quantized_by(ed: GraphEditor, value: str) -> Node | None:
    """The DynamicQuantizeLinear whose quantized output is `value`, if any."""
    dql = ed.producer_of(value, "DynamicQuantizeLinear")
    return dql if dql is not None and dql.outputs and dql.outputs[0] == value else None


def _scales(ed: GraphEditor, mmi: Node, product: str) -> tuple[str, str, Node | None] | None:
    """(a_scale, b_scale, the Mul of the two) when `product` is Mul(a_scale, b_scale) with the
    operands' scales: a DynamicQuantizeLinear operand's own scale and zero point."""
    mul = ed.producer_of(product, "Mul")
    if mul is None or len(mul.inputs) != 2 or len(_outputs(mul)) != 1 or mul.since_version < 7:
        return None
    a, b = mmi.inputs[0], mmi.inputs[1]
    za = mmi.inputs[2] if len(mmi.inputs) > 2 else ""
    zb = mmi.inputs[3] if len(mmi.inputs) > 3 else ""
    s0, s1 = mul.inputs
    dql_a, dql_b = _quantized_by(ed, a), _quantized_by(ed, b)
    if dql_a is not None:
        if s1 == dql_a.outputs[1]:
            s0, s1 = s1, s0
        if s0 != dql_a.outputs[1] or (za and za != dql_a.outputs[2]):
            return None
    if dql_b is not None:
        if s0 == dql_b.outputs[1] and dql_a is None:
            s0, s1 = s1, s0
        if s1 != dql_b.outputs[1] or (zb and zb != dql_b.outputs[2]):
            return None
    if dql_a is None and _size(ed, s0) != 1 and _size(ed, s1) == 1:
        s0, s1 = s1, s0     # neither operand says which is which: a_scale is the scalar one
    n = (ed.shape(b) or [None])[-1]
    b_size = _size(ed, s1)
    if _size(ed, s0) != 1 or not (b_size == 1 or (ed.rank(b) == 2 and ed.rank(s1) == 1 and b_size == n)):
        return None
    if za and _size(ed, za) != 1:
        return None                     # MatMulInteger's per-row zero points: no fused form
    if not all(_float32(ed, s) for s in (s0, s1)):
        return None
    return s0, s1, mul


class FuseMatMulIntegerToFloat(Rewrite):
    """MatMulInteger -> Cast(float) -> Mul(Mul(a_scale, b_scale)) [-> Add(bias)]
    =>  com.microsoft::MatMulIntegerToFloat."""
    name = "FuseMatMulIntegerToFloat"
    level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for mmi in nodes_in_order(graph):
            if not ed.alive(mmi) or not _is(mmi, "MatMulInteger") or len(mmi.inputs) < 2 \
                    or len(_outputs(mmi)) != 1:
                continue
            cast = ed.only_consumer(mmi.outputs[0])
            if not _is(cast, "Cast") or int(cast.attr("to", 0)) != _FLOAT:
                continue
            mul = ed.only_consumer(cast.outputs[0])
            if not _is(mul, "Mul") or len(mul.inputs) != 2 or mul.since_version < 7:
                continue
            product = mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0]
            found = _scales(ed, mmi, product)
            if found is None:
                continue
            a_scale, b_scale, scale_mul = found
            absorbed, out, bias = [cast, mul], mul.outputs[0], ""
            add = ed.only_consumer(out)
            n = (ed.shape(mmi.inputs[1]) or [None])[-1]
            if _is(add, "Add") and add.since_version >= 7 and len(add.inputs) == 2:
                other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
                if other != out and isinstance(n, int) and ed.shape(other) == [n] and _float32(ed, other):
                    absorbed, out, bias = absorbed + [add], add.outputs[0], other
            if ed.only_consumer(product) is mul:
                absorbed.insert(0, scale_mul)   # the fused node takes the place of the last one
            za = mmi.inputs[2] if len(mmi.inputs) > 2 else ""
            zb = mmi.inputs[3] if len(mmi.inputs) > 3 else ""
            inputs = [mmi.inputs[0], mmi.inputs[1], a_scale, b_scale, za, zb, bias]
            while inputs and not inputs[-1]:
                inputs.pop()
            fused = ed.make_node("MatMulIntegerToFloat", inputs, [out],
                                 name=ed.fresh(mmi.name + "_MatMulIntegerToFloat"), domain=MS_DOMAIN)
            if self.ctx.supports(mmi, fused, [mmi] + absorbed):
                ed.replace_outputs([mmi] + absorbed, [fused])
        return ed.commit()


class FuseDynamicQuantizeMatMul(Rewrite):
    """DynamicQuantizeLinear(x) -> MatMulIntegerToFloat(its outputs, constant B) =>
    com.microsoft::DynamicQuantizeMatMul(x, B, b_scale, b_zp, bias), where the
    DynamicQuantizeLinear feeds nothing else."""
    name = "FuseDynamicQuantizeMatMul"
    level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for node in nodes_in_order(graph):
            if not ed.alive(node) or not _is(node, "MatMulIntegerToFloat", MS_DOMAIN):
                continue
            ins = list(node.inputs) + [""] * (7 - len(node.inputs))
            dql = _quantized_by(ed, ins[0])
            # its zero point too: without one the product was taken as if it were 0
            if dql is None or ins[2] != dql.outputs[1] or not ins[4] or ins[4] != dql.outputs[2]:
                continue
            if any(ed.is_output(o) or any(u is not node for u in ed.consumers(o)) for o in _outputs(dql)):
                continue
            if not _float32(ed, dql.inputs[0]):
                continue
            if ed.const(ins[1]) is None or ed.const(ins[3]) is None or (ins[5] and ed.const(ins[5]) is None):
                continue
            inputs = [dql.inputs[0], ins[1], ins[3], ins[5], ins[6]]
            while inputs and not inputs[-1]:
                inputs.pop()
            fused = ed.make_node("DynamicQuantizeMatMul", inputs, list(node.outputs),
                                 name=ed.fresh(node.name + "_Dynamic"), domain=MS_DOMAIN)
            if self.ctx.supports(node, fused, [dql, node]):
                ed.replace_outputs([dql, node], [fused])
        return ed.commit()
