"""Level-2 fusions of an op with the activation (and residual Add) after it.

`FusedConv(X, W, B?, Z?)` computes act(conv(X, W) + B + Z), `FusedGemm(A, B, C?)` is Gemm then
act, `FusedMatMul(A, B, bias?)` is act(A @ B + bias) for A of any rank and a (K, N) B, and
`FusedAdd(A, B)` is Add then act. `activation` names the ONNX activation op and
`activation_params` holds its parameters in onnxruntime's order (Clip: min, max; LeakyRelu and
Elu: alpha; HardSigmoid: alpha, beta). Where onnxruntime has the same op in its `com.microsoft`
domain (FusedConv and FusedGemm, for the activations its CPU kernels take, FusedGemm's
parameters then named `activation_alpha` / `activation_beta`; Add of a 1-D bias then Gelu or
FastGelu as its BiasGelu / FastGelu), that op is written, so optimized models run in
onnxruntime; otherwise, or where the provider lacks it, our own domain's (`com.ep_core`).
FusedMatMul and FusedAdd otherwise have no onnxruntime counterpart. A fusion happens only where
the provider that would run the original node also has a kernel for the fused op.
"""
from __future__ import annotations

import numpy as np

from .graph import Graph, Node
from .graph_edit import MS_DOMAIN, OWN_DOMAIN, GraphEditor
from .rewrite import Rewrite, nodes_in_order
from .options import GraphOptimizationLevel

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
# Activations onnxruntime's com.microsoft kernels take (FusedConv: MLAS's; FusedGemm: its functors).
MS_ACTIVATIONS = {"FusedConv": {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip"},
                  "FusedGemm": {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Elu"}}
_SIMPLE = {"Relu": (), "Sigmoid": (), "Tanh": (), "HardSwish": (),
           "LeakyRelu": (("alpha", 0.01),), "Elu": (("alpha", 1.0),),
           "HardSigmoid": (("alpha", 0.2), ("beta", 0.5))}
_FLOAT_MAX = float(np.finfo(np.float32).max)


def activation_of(ed: GraphEditor, node: Node) -> tuple[str, list[float]] | None:
    """(activation name, params) when `node` is an activation the fused kernels implement."""
    op = node.op_type
    if node.domain == "":
        if op in _SIMPLE:
            return op, [float(node.attr(k, d)) for k, d in _SIMPLE[op]]
        if op == "Clip":
            if node.since_version < 11:
                return op, [float(node.attr("min", -_FLOAT_MAX)), float(node.attr("max", _FLOAT_MAX))]
            bounds = []
            for k, default in ((1, -np.inf), (2, np.inf)):
                if len(node.inputs) > k and node.inputs[k]:
                    c = ed.const(node.inputs[k])
                    if c is None:
                        return None
                    bounds.append(float(np.asarray(c).reshape(-1)[0]))
                else:
                    bounds.append(float(default))
            return op, bounds
        if op == "Gelu":
            return ("FastGelu" if node.attr("approximate", "none") == "tanh" else "Gelu"), []
        return None
    if node.domain in (OWN_DOMAIN, MS_DOMAIN) and op in ("Gelu", "FastGelu") and \
            len([i for i in node.inputs if i]) == 1:
        return op, []
    return None


def following_activation(ed: GraphEditor, value: str) -> tuple[Node, str, list[float], list[Node]] | None:
    """The activation that alone consumes `value`: (node writing its result, name, params, every
    node it spans). Besides single activation nodes this matches x * Sigmoid(x) as Silu, the
    SiLU/Swish that YOLO, EfficientNet and Whisper-style exports spell as two nodes."""
    silu = _silu_pair(ed, value)
    if silu is not None:
        return silu[1], "Silu", [], list(silu)
    act = ed.only_consumer(value)
    if act is None or not act.inputs or act.inputs[0] != value or len([o for o in act.outputs if o]) != 1:
        return None
    found = activation_of(ed, act)
    if found is None:
        return None
    return act, found[0], found[1], [act]


def _silu_pair(ed: GraphEditor, value: str) -> tuple[Node, Node] | None:
    """(Sigmoid, Mul) when `value`'s only readers are y = Sigmoid(value) and Mul(value, y) (either
    order), y feeds nothing else, and neither is a graph output."""
    users = ed.consumers(value)
    if ed.is_output(value) or len(users) != 2:
        return None
    sig = next((n for n in users if n.op_type == "Sigmoid" and not n.domain), None)
    mul = next((n for n in users if n.op_type == "Mul" and not n.domain), None)
    if sig is None or mul is None or mul.since_version < 7 or len(mul.inputs) != 2 \
            or len([o for o in sig.outputs if o]) != 1 or len([o for o in mul.outputs if o]) != 1:
        return None
    if sorted(mul.inputs) != sorted([value, sig.outputs[0]]) or ed.only_consumer(sig.outputs[0]) is not mul:
        return None
    dt = ed.dtype(value)
    return (sig, mul) if dt is not None and dt.kind == "f" else None


def residual_add(ed: GraphEditor, value: str) -> tuple[Node, str] | None:
    """The Add/Sum of two same-shaped tensors that is the single consumer of `value`: (node, Z)."""
    add = ed.only_consumer(value)
    if add is None or add.domain or add.op_type not in ("Add", "Sum") or len(add.inputs) != 2:
        return None
    if add.op_type == "Add" and add.since_version < 7:
        return None
    z = add.inputs[1] if add.inputs[0] == value else add.inputs[0]
    sv, sz = ed.shape(value), ed.shape(z)
    if z == value or sv is None or sz != sv or None in sv or ed.dtype(z) != ed.dtype(value):
        return None
    return add, z


def _bias_gelu(ed: GraphEditor, inputs: list[str], act: tuple | None) -> tuple[str, list[str]] | None:
    """(op, [X, bias]) of com.microsoft's BiasGelu / FastGelu when Add(X, bias) -> Gelu / FastGelu
    has a 1-D bias over X's last axis (the same computation), else None."""
    if act is None or act[1] not in ("Gelu", "FastGelu") or len(inputs) != 2:
        return None
    for x, b in (inputs, inputs[::-1]):
        xs, bs = ed.shape(x), ed.shape(b)
        if xs and bs is not None and len(bs) == 1 and isinstance(bs[0], int) and xs[-1] == bs[0]:
            return ("BiasGelu" if act[1] == "Gelu" else "FastGelu"), [x, b]
    return None


class _ActivationFusion(Rewrite):
    level = GraphOptimizationLevel.ORT_ENABLE_EXTENDED

    def fuse(self, ed: GraphEditor, anchor: Node, op: str, inputs: list[str], attrs: dict,
             absorbed: list[Node], act: tuple | None, out: str) -> bool:
        own, ms = dict(attrs), None
        if act is not None:
            own["activation"] = act[1]
            if act[2]:
                own["activation_params"] = [float(p) for p in act[2]]
        if op in MS_ACTIVATIONS and (act is None or act[1] in MS_ACTIVATIONS[op]):
            ms = own
            if op == "FusedGemm" and act is not None:   # named parameters there
                ms = dict(attrs, activation=act[1])
                ms.update(zip(("activation_alpha", "activation_beta"), (float(p) for p in act[2])))
        while inputs and not inputs[-1]:
            inputs = inputs[:-1]
        name = ed.fresh(anchor.name + "_" + op)
        candidates = [] if ms is None else [ed.make_node(op, inputs, [out], name=name, domain=MS_DOMAIN, attrs=ms)]
        bias_gelu = _bias_gelu(ed, inputs, act) if op == "FusedAdd" else None
        if bias_gelu is not None:
            candidates.append(ed.make_node(bias_gelu[0], bias_gelu[1], [out], name=name, domain=MS_DOMAIN))
        candidates.append(ed.make_node(op, inputs, [out], name=name, domain=OWN_DOMAIN, attrs=own))
        for fused in candidates:
            if self.ctx.supports(anchor, fused, [anchor] + absorbed):
                ed.replace_outputs([anchor] + absorbed, [fused])
                return True
        return False


def _conv_attrs(conv: Node) -> dict:
    return {k: v for k, v in conv.attrs.items() if k in CONV_ATTRS}


class FuseConvAddActivation(_ActivationFusion):
    """Conv -> Add/Sum(residual Z) [-> activation]  =>  FusedConv(X, W, B, Z)."""
    name = "FuseConvAddActivation"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for conv in nodes_in_order(graph):
            if not ed.alive(conv) or conv.op_type != "Conv" or conv.domain:
                continue
            hit = residual_add(ed, conv.outputs[0])
            if hit is None:
                continue
            add, z = hit
            act = following_activation(ed, add.outputs[0])
            absorbed = [add] + (act[3] if act else [])
            out = act[0].outputs[0] if act else add.outputs[0]
            b = conv.inputs[2] if len(conv.inputs) > 2 else ""
            self.fuse(ed, conv, "FusedConv", [conv.inputs[0], conv.inputs[1], b, z],
                      _conv_attrs(conv), absorbed, act, out)
        return ed.commit()


class FuseConvActivation(_ActivationFusion):
    """Conv -> activation  =>  FusedConv(X, W, B) with `activation`."""
    name = "FuseConvActivation"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for conv in nodes_in_order(graph):
            if not ed.alive(conv) or conv.op_type != "Conv" or conv.domain:
                continue
            act = following_activation(ed, conv.outputs[0])
            if act is None:
                continue
            self.fuse(ed, conv, "FusedConv", list(conv.inputs), _conv_attrs(conv), act[3], act,
                      act[0].outputs[0])
        return ed.commit()


class FuseGemmActivation(_ActivationFusion):
    """Gemm -> activation  =>  FusedGemm(A, B, C) with `activation`."""
    name = "FuseGemmActivation"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for gemm in nodes_in_order(graph):
            if not ed.alive(gemm) or gemm.op_type != "Gemm" or gemm.domain:
                continue
            act = following_activation(ed, gemm.outputs[0])
            if act is None:
                continue
            attrs = {k: v for k, v in gemm.attrs.items() if k in ("alpha", "beta", "transA", "transB")}
            self.fuse(ed, gemm, "FusedGemm", list(gemm.inputs), attrs, act[3], act, act[0].outputs[0])
        return ed.commit()


class FuseAddActivation(_ActivationFusion):
    """Add -> activation  =>  FusedAdd(A, B) with `activation` (one pass over the data)."""
    name = "FuseAddActivation"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for add in nodes_in_order(graph):
            if not ed.alive(add) or add.op_type != "Add" or add.domain or add.since_version < 7:
                continue
            dt = ed.dtype(add.outputs[0])
            if dt is None or dt.kind != "f":
                continue
            act = following_activation(ed, add.outputs[0])
            if act is None:
                continue
            self.fuse(ed, add, "FusedAdd", list(add.inputs), {}, act[3], act, act[0].outputs[0])
        return ed.commit()


def _bias_add(ed: GraphEditor, value: str, n: int, dtype: np.dtype) -> tuple[Node, str, tuple | None] | None:
    """The Add (or FusedAdd) of a constant (N,) bias that is the single consumer of `value`:
    (node, bias name, activation it already carries as (None, name, params) or None)."""
    add = ed.only_consumer(value)
    if add is None or len(add.inputs) != 2 or len([o for o in add.outputs if o]) != 1:
        return None
    if add.domain == "" and add.op_type == "Add":
        if add.since_version < 7:
            return None  # legacy broadcasting semantics
        carried = None
    elif add.domain == OWN_DOMAIN and add.op_type == "FusedAdd":
        name = add.attr("activation") or None
        carried = (None, name, list(add.attr("activation_params") or [])) if name else None
    else:
        return None
    bias = add.inputs[1] if add.inputs[0] == value else add.inputs[0]
    c = ed.const(bias)
    # Only a true (N,) vector: anything of higher rank could broadcast the result to a new shape.
    if bias == value or c is None or c.ndim != 1 or c.shape[0] != n or c.dtype != dtype:
        return None
    return add, bias, carried


class FuseMatMulBiasActivation(_ActivationFusion):
    """MatMul(A of any rank, constant (K, N) B) -> Add(constant (N,) bias) [-> activation]
    =>  FusedMatMul(A, B, bias) with `activation` (one GEMM with bias and activation in its
    per-tile epilogue). Level 1's MatMul+Add->Gemm covers 2-D A only; this covers BERT/GPT-2's
    (batch, seq, hidden) projections and FFNs."""
    name = "FuseMatMulBiasActivation"

    def apply(self, graph: Graph) -> bool:
        ed = self.editor(graph)
        for mm in nodes_in_order(graph):
            if not ed.alive(mm) or mm.op_type != "MatMul" or mm.domain or len(mm.inputs) != 2:
                continue
            dt = ed.dtype(mm.inputs[0])
            w = ed.const(mm.inputs[1])
            if dt is None or dt.kind != "f" or w is None or w.ndim != 2 or w.dtype != dt:
                continue
            rank = ed.rank(mm.inputs[0])
            if rank is not None and rank < 1:
                continue
            hit = _bias_add(ed, mm.outputs[0], w.shape[1], dt)
            if hit is None:
                continue
            add, bias, act = hit
            absorbed = [add]
            out = add.outputs[0]
            if act is None:
                follow = following_activation(ed, out)
                if follow is not None:
                    act, absorbed, out = follow, [add] + follow[3], follow[0].outputs[0]
            # The Add/activation must not belong to another (higher-priority) provider either.
            home = self.ctx.provider_for(mm)
            if any(self.ctx.provider_for(n) is not home for n in absorbed):
                continue
            self.fuse(ed, mm, "FusedMatMul", [mm.inputs[0], mm.inputs[1], bias], {}, absorbed, act, out)
        return ed.commit()
