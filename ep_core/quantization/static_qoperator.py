"""Static quantization in QOperator format: each chosen node becomes its integer operator
(QLinearConv, QLinearMatMul, com.microsoft QGemm / QLinearAdd / QLinearMul /
QLinearGlobalAveragePool / QLinearAveragePool; MaxPool, Reshape, Flatten, Transpose, Squeeze and
Unsqueeze run on the quantized values directly). A QuantizeLinear is inserted where a float value
enters the quantized region and a DequantizeLinear (writing the original name) where a float
reader needs it, so graph outputs and float consumers keep their names."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .model_edit import MS_DOMAIN, GraphIndex, ensure_opset, remove_unused_initializers
from .quant_types import QuantType
from .static_plan import PASS_THROUGH_OPS, StaticPlan
from .static_qdq import _Weights, weight_axis
from .weights import quantize_bias

_MS_OPS = {"Add": "QLinearAdd", "Mul": "QLinearMul", "GlobalAveragePool": "QLinearGlobalAveragePool",
           "AveragePool": "QLinearAveragePool", "Gemm": "QGemm"}


class _QOperatorWriter:
    def __init__(self, model: onnx.ModelProto, plan: StaticPlan, weight_type: QuantType, per_channel: bool,
                 reduce_range: bool) -> None:
        self.model, self.plan = model, plan
        self.idx = GraphIndex(model.graph)
        self.weights = _Weights(self.idx, weight_type, per_channel, reduce_range)
        self.nodes: list[onnx.NodeProto] = []
        self.quantized: dict[str, tuple[str, str, str]] = {}   # float name -> (q tensor, scale, zp)
        self.float_available: set[str] = {i.name for i in model.graph.input} | set(self.idx.initializers)
        self.used_ms = False

    def params(self, tensor: str) -> tuple[str, str]:
        p = self.plan.params[tensor]
        base = tensor.replace(":", "_")
        return (self.idx.add_initializer(base + "_scale", np.asarray(p.scale, np.float32)),
                self.idx.add_initializer(base + "_zero_point", np.asarray(p.zero_point)))

    def q_input(self, tensor: str) -> tuple[str, str, str]:
        if tensor not in self.quantized:
            s, z = self.params(tensor)
            q = self.idx.unique(tensor.replace(":", "_") + "_quantized")
            self.nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [q],
                                               name=self.idx.unique(tensor + "_QuantizeLinear")))
            self.quantized[tensor] = (q, s, z)
        return self.quantized[tensor]

    def q_output(self, tensor: str) -> tuple[str, str, str]:
        s, z = self.params(tensor)
        q = self.idx.unique(tensor.replace(":", "_") + "_quantized")
        self.quantized[tensor] = (q, s, z)
        return q, s, z

    def need_float(self, tensor: str) -> None:
        if tensor and tensor not in self.float_available and tensor in self.quantized:
            q, s, z = self.quantized[tensor]
            self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [tensor],
                                               name=self.idx.unique(tensor + "_DequantizeLinear")))
        self.float_available.add(tensor)

    def const_operand(self, name: str) -> tuple[str, str, str]:
        q, s, z, _, _ = self.weights.quantize(name, 0, per_channel=False)
        return q, s, z

    # ------------------------------------------------------------------ conversion
    def convert(self, node: onnx.NodeProto) -> bool:
        op, plan = node.op_type, self.plan
        out = plan.output_name(node)
        if out not in plan.params or any(i and i not in plan.params and self.idx.constant(i) is None
                                         for i in node.input[:1]):
            return False
        attrs = list(node.attribute)
        if op in PASS_THROUGH_OPS:
            if node.input[0] not in self.quantized:
                return False
            q, s, z = self.quantized[node.input[0]]
            new_q = self.idx.unique(out.replace(":", "_") + "_quantized")
            n = helper.make_node(op, [q] + list(node.input[1:]), [new_q] + list(node.output[1:2]) if op == "MaxPool"
                                 and len(node.output) > 1 else [new_q], name=self.idx.unique(node.name or out))
            n.attribute.extend(attrs)
            self.nodes.append(n)
            self.quantized[out] = (new_q, s, z)
            return True
        if op in ("Conv", "Gemm") or (op == "MatMul" and self.idx.constant(node.input[1]) is not None):
            xq, xs, xz = self.q_input(node.input[0])
            wq, ws, wz, w_scale, _ = self.weights.quantize(node.input[1], weight_axis(node))
            bias = []
            if len(node.input) > 2 and node.input[2]:
                b = self.idx.constant(node.input[2])
                n_out = int(self.idx.constant(node.input[1]).shape[weight_axis(node)])
                # Conv: one bias per output channel; Gemm: a scalar or one per column (an (M, N)
                # C cannot become QGemm's per-column int32 bias).
                if b is None or b.size not in ((n_out,) if op == "Conv" else (1, n_out)) \
                        or (b.ndim == 2 and b.shape[0] != 1):
                    return False
                beta = next((a.f for a in attrs if a.name == "beta"), 1.0)
                alpha = next((a.f for a in attrs if a.name == "alpha"), 1.0) if op == "Gemm" else 1.0
                # QGemm scales (acc + C) by alpha: C carries beta / alpha.
                bq, _ = quantize_bias(np.broadcast_to(b.reshape(-1) * np.float32(beta / alpha), (n_out,)),
                                      self.plan.params[node.input[0]].scale, w_scale)
                bias = [self.idx.add_initializer(node.input[2].replace(":", "_") + "_quantized", bq)]
            yq, ys, yz = self.q_output(out)
            if op == "Conv":
                n = helper.make_node("QLinearConv", [xq, xs, xz, wq, ws, wz, ys, yz] + bias, [yq])
            elif op == "Gemm":
                n = helper.make_node("QGemm", [xq, xs, xz, wq, ws, wz, bias[0] if bias else "", ys, yz], [yq],
                                     domain=MS_DOMAIN)
                attrs = [a for a in attrs if a.name != "beta"]
            else:
                n = helper.make_node("QLinearMatMul", [xq, xs, xz, wq, ws, wz, ys, yz], [yq])
        elif op == "MatMul" or op in ("Add", "Mul"):
            ins = []
            for i in node.input[:2]:
                ins += list(self.const_operand(i) if self.idx.constant(i) is not None else self.q_input(i))
            yq, ys, yz = self.q_output(out)
            if op == "MatMul":
                n = helper.make_node("QLinearMatMul", ins + [ys, yz], [yq])
            else:
                n = helper.make_node(_MS_OPS[op], ins + [ys, yz], [yq], domain=MS_DOMAIN)
        elif op in ("GlobalAveragePool", "AveragePool"):
            xq, xs, xz = self.q_input(node.input[0])
            yq, ys, yz = self.q_output(out)
            n = helper.make_node(_MS_OPS[op], [xq, xs, xz, ys, yz], [yq], domain=MS_DOMAIN)
        else:
            return False
        n.name = self.idx.unique((node.name or out) + "_quant")
        n.attribute.extend(attrs)
        self.used_ms |= n.domain == MS_DOMAIN
        self.nodes.append(n)
        return True


def write_qoperator(model: onnx.ModelProto, plan: StaticPlan, weight_type: QuantType, per_channel: bool,
                    reduce_range: bool) -> onnx.ModelProto:
    w = _QOperatorWriter(model, plan, weight_type, per_channel, reduce_range)
    chosen = {id(n) for n in plan.nodes}
    fused_acts = {id(a) for a in plan.fused.values()}
    for node in model.graph.node:
        if id(node) in fused_acts:
            continue
        if id(node) in chosen and w.convert(node):
            continue
        if id(node) in chosen and node.output[0] in plan.fused:   # not converted: its activation runs in float
            w.need_float(node.input[0]) if node.input else None
            for i in node.input[1:]:
                w.need_float(i)
            w.nodes.append(node)
            w.float_available.update(node.output)
            act = plan.fused[node.output[0]]
            w.nodes.append(act)
            w.float_available.update(act.output)
            continue
        for i in node.input:
            w.need_float(i)
        w.nodes.append(node)
        w.float_available.update(node.output)
    for o in model.graph.output:
        w.need_float(o.name)
    g = model.graph
    del g.node[:]
    g.node.extend(w.nodes)
    g.initializer.extend(w.idx.new_initializers())
    remove_unused_initializers(g)
    if w.used_ms:
        ensure_opset(model, MS_DOMAIN, 1)
    return model
