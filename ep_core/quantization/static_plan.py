"""What static quantization needs before it rewrites anything, shared by the QDQ and QOperator
writers: which nodes to quantize, which Relu/Clip nodes fold into their producer (quantizing the
producer's output over the activation's range [0, max] saturates at 0 exactly as the activation
would), which activation tensors to calibrate, and their scales and zero points."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from .model_edit import GraphIndex, float_dtype_of, selected
from .quant_types import QuantType
from .weights import scale_zero_point

WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
BINARY_OPS = ("Add", "Mul")
POOL_OPS = ("GlobalAveragePool", "AveragePool", "MaxPool")
# Ops whose output keeps its input's scale and zero point (they move or select values).
PASS_THROUGH_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
FUSABLE_ACTIVATIONS = ("Relu", "Clip")
TABLE_OPS = ("Gather",)   # QDQ only: the constant table stored in 8 bits behind a DequantizeLinear
STATIC_OPS = WEIGHTED_OPS + BINARY_OPS + POOL_OPS + FUSABLE_ACTIVATIONS + PASS_THROUGH_OPS + TABLE_OPS


@dataclass
class QuantParams:
    scale: np.ndarray   # float32 scalar
    zero_point: np.ndarray   # activation type scalar


@dataclass
class StaticPlan:
    nodes: list[onnx.NodeProto]                     # nodes to quantize (original protos)
    fused: dict[str, onnx.NodeProto] = field(default_factory=dict)   # producer output -> folded activation
    tensors: list[str] = field(default_factory=list)  # activation tensors to calibrate
    params: dict[str, QuantParams] = field(default_factory=dict)

    def output_name(self, node: onnx.NodeProto) -> str:
        """The tensor a quantized node writes: its folded activation's output where there is one."""
        act = self.fused.get(node.output[0])
        return act.output[0] if act is not None else node.output[0]


def _clip_min_is_zero(node: onnx.NodeProto, idx: GraphIndex) -> bool:
    if node.op_type == "Relu":
        return True
    lo = None
    for a in node.attribute:
        if a.name == "min":
            lo = a.f
    if len(node.input) > 1 and node.input[1]:
        v = idx.constant(node.input[1])
        lo = None if v is None else float(v)
    return lo == 0.0


def plan_static(model: onnx.ModelProto, op_types: set[str], include, exclude) -> StaticPlan:
    graph = model.graph
    idx = GraphIndex(graph)
    types = float_dtype_of(model)
    is_float = lambda n: types.get(n) == TensorProto.FLOAT  # noqa: E731
    chosen = []
    for node in graph.node:
        if not selected(node, op_types, include, exclude) or not node.input or not node.output:
            continue
        if not is_float(node.input[0]) or not is_float(node.output[0]):
            continue
        if node.op_type in WEIGHTED_OPS:
            w = idx.constant(node.input[1]) if len(node.input) > 1 else None
            if node.op_type in ("Conv", "Gemm") and (w is None or w.dtype != np.float32):
                continue
            if node.op_type == "MatMul" and w is not None and (w.ndim != 2 or w.dtype != np.float32):
                continue
            if node.op_type == "MatMul" and w is None and not is_float(node.input[1]):
                continue
            if len(node.input) > 2 and node.input[2] and idx.constant(node.input[2]) is None:
                continue
        if node.op_type in BINARY_OPS and not all(is_float(i) for i in node.input):
            continue
        chosen.append(node)
    plan = StaticPlan(nodes=[])
    chosen_ids = {id(n) for n in chosen}
    for node in chosen:
        if node.op_type in FUSABLE_ACTIVATIONS:
            prod = idx.producer.get(node.input[0])
            if (prod is not None and id(prod) in chosen_ids and prod.op_type in WEIGHTED_OPS + BINARY_OPS
                    and len(idx.consumers.get(node.input[0], [])) == 1 and node.input[0] not in idx.graph_outputs
                    and _clip_min_is_zero(node, idx)):
                plan.fused[node.input[0]] = node
                continue
            continue    # an activation not folded stays in float
        plan.nodes.append(node)
    tensors: list[str] = []
    for node in plan.nodes:
        if node.op_type in BINARY_OPS or node.op_type == "MatMul":
            activations = list(node.input[:2])
        else:
            activations = [node.input[0]]
        tensors += [i for i in activations if i and idx.constant(i) is None]
        tensors.append(plan.output_name(node))
    plan.tensors = list(dict.fromkeys(tensors))
    return plan


def set_params(plan: StaticPlan, ranges: dict[str, tuple[float, float]], activation_type: QuantType,
               reduce_range: bool = False, symmetric: bool = False) -> None:
    """Scale / zero point of every calibrated tensor; pass-through ops' outputs share their input's."""
    for t, (lo, hi) in ranges.items():
        s, z = scale_zero_point(lo, hi, activation_type, symmetric, reduce_range)
        plan.params[t] = QuantParams(np.float32(s), z.reshape(()))
    for node in plan.nodes:
        if node.op_type in PASS_THROUGH_OPS and node.input[0] in plan.params:
            plan.params[plan.output_name(node)] = plan.params[node.input[0]]


def make_qdq_pair(idx: GraphIndex, tensor: str, params: QuantParams, suffix: str = ""
                  ) -> tuple[list[onnx.NodeProto], str, str, str]:
    """QuantizeLinear + DequantizeLinear of an activation -> (nodes, scale name, zp name, dq output)."""
    base = tensor.replace(":", "_") + suffix
    s = idx.add_initializer(base + "_scale", np.asarray(params.scale, np.float32))
    z = idx.add_initializer(base + "_zero_point", np.asarray(params.zero_point))
    q, dq = idx.unique(base + "_QuantizeLinear_Output"), idx.unique(base + "_DequantizeLinear_Output")
    nodes = [helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=idx.unique(base + "_QuantizeLinear")),
             helper.make_node("DequantizeLinear", [q, s, z], [dq], name=idx.unique(base + "_DequantizeLinear"))]
    return nodes, s, z, dq
