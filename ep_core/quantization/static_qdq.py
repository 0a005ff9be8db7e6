"""Static quantization in QDQ format: the float graph stays as it is and QuantizeLinear /
DequantizeLinear pairs mark where values are quantized. Weights are stored quantized (per channel
where asked) behind a DequantizeLinear; Conv/Gemm biases as int32 in the accumulator's scale
(input scale x weight scale). A runtime that recognises DQ -> op -> Q runs the integer kernel;
one that does not still computes the same simulated-quantization result."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .model_edit import GraphIndex, remove_unused_initializers
from .quant_types import QuantType
from .static_plan import BINARY_OPS, StaticPlan, make_qdq_pair
from .weights import quantize_bias, quantize_weight


def weight_axis(node: onnx.NodeProto) -> int:
    """The output-channel axis of a node's weight: Conv's 0, MatMul's 1, Gemm's 0 if transB else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    return 1


class _Weights:
    def __init__(self, idx: GraphIndex, weight_type: QuantType, per_channel: bool, reduce_range: bool) -> None:
        self.idx, self.weight_type, self.per_channel, self.reduce_range = idx, weight_type, per_channel, reduce_range

    def quantize(self, name: str, axis: int, per_channel: bool | None = None):
        """(quantized initializer, scale name, zp name, scale array, axis or None)."""
        w = self.idx.constant(name)
        pc = self.per_channel if per_channel is None else per_channel
        q, s, z = quantize_weight(w, self.weight_type, pc and w.ndim > 1, axis, self.reduce_range)
        base = name.replace(":", "_")
        return (self.idx.add_initializer(base + "_quantized", q), self.idx.add_initializer(base + "_scale", s),
                self.idx.add_initializer(base + "_zero_point", z), s, axis if s.ndim == 1 else None)

    def bias(self, name: str, input_scale: np.ndarray, weight_scale: np.ndarray):
        b = self.idx.constant(name).astype(np.float32).reshape(-1)
        q, s = quantize_bias(b, input_scale, weight_scale)
        base = name.replace(":", "_")
        return (self.idx.add_initializer(base + "_quantized", q), self.idx.add_initializer(base + "_scale", s),
                self.idx.add_initializer(base + "_zero_point", np.zeros(s.shape, np.int32)), s.ndim == 1)


def _dq(idx: GraphIndex, q: str, s: str, z: str, axis: int | None) -> tuple[onnx.NodeProto, str]:
    out = idx.unique(q + "_DequantizeLinear_Output")
    node = helper.make_node("DequantizeLinear", [q, s, z], [out], name=idx.unique(q + "_DequantizeLinear"))
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node, out


def write_qdq(model: onnx.ModelProto, plan: StaticPlan, weight_type: QuantType, per_channel: bool,
              reduce_range: bool) -> onnx.ModelProto:
    graph = model.graph
    idx = GraphIndex(graph)
    weights = _Weights(idx, weight_type, per_channel, reduce_range)
    chosen = {id(n) for n in plan.nodes}
    fused_acts = {id(a) for a in plan.fused.values()}
    dq_of: dict[str, str] = {}          # activation -> its DequantizeLinear output
    pending = set(plan.params)
    nodes: list[onnx.NodeProto] = []

    def emit_pair(tensor: str) -> None:
        if tensor in pending:
            pair, _, _, dq = make_qdq_pair(idx, tensor, plan.params[tensor])
            nodes.extend(pair)
            dq_of[tensor] = dq
            pending.discard(tensor)

    for i in graph.input:
        emit_pair(i.name)
    for node in graph.node:
        if id(node) in fused_acts:
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if id(node) in chosen:
            new.output[0] = plan.output_name(node)
            _quantize_constants(new, node, idx, weights, plan, nodes)
        nodes.append(new)
        for o in new.output:
            emit_pair(o)
    # Every reader of a quantized activation (except its QuantizeLinear) reads the dequantized value.
    q_nodes = {id(n) for n in nodes if n.op_type == "QuantizeLinear"}
    for n in nodes:
        if id(n) in q_nodes:
            continue
        for k, i in enumerate(n.input):
            if i in dq_of and n.output[0] != dq_of[i]:
                n.input[k] = dq_of[i]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(idx.new_initializers())
    remove_unused_initializers(graph)
    return model


def _quantize_constants(new: onnx.NodeProto, node: onnx.NodeProto, idx: GraphIndex, weights: _Weights,
                        plan: StaticPlan, nodes: list[onnx.NodeProto]) -> None:
    """Replace a chosen node's float constants (weight, bias, constant operand) by DQ(quantized)."""
    op = node.op_type
    if op in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and idx.constant(node.input[1]) is not None:
        axis = weight_axis(node)
        q, s, z, w_scale, dq_axis = weights.quantize(node.input[1], axis)
        dq_node, out = _dq(idx, q, s, z, dq_axis)
        nodes.append(dq_node)
        new.input[1] = out
        x_params = plan.params.get(node.input[0])
        if len(node.input) > 2 and node.input[2] and x_params is not None:
            b = idx.constant(node.input[2])
            n_out = w_scale.size if w_scale.ndim == 1 else None
            if b is not None and b.ndim == 1 and (n_out is None or b.size == n_out):
                bq, bs, bz, per_axis = weights.bias(node.input[2], x_params.scale, w_scale)
                dq_node, out = _dq(idx, bq, bs, bz, 0 if per_axis else None)
                nodes.append(dq_node)
                new.input[2] = out
    elif op == "Gather" and idx.constant(node.input[0]) is not None and idx.constant(node.input[0]).dtype == np.float32:
        q, s, z, _, _ = weights.quantize(node.input[0], 0, per_channel=False)
        dq_node, out = _dq(idx, q, s, z, None)
        nodes.append(dq_node)
        new.input[0] = out
    elif op in BINARY_OPS:
        for k, i in enumerate(node.input):
            if idx.constant(i) is not None and idx.constant(i).dtype == np.float32:
                q, s, z, _, _ = weights.quantize(i, 0, per_channel=False)
                dq_node, out = _dq(idx, q, s, z, None)
                nodes.append(dq_node)
                new.input[k] = out
