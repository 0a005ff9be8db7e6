"""Dynamic (weight-only-calibrated) INT8 quantization: weights quantized once, activations
quantized at run time from their own range.

- MatMul / Gemm with a constant 2-D weight -> one `com.microsoft::DynamicQuantizeMatMul` (Gemm's
  bias, or the bias Add that is a MatMul's only reader, folded in): a single node that both
  onnxruntime and our CPU provider run as one fused kernel, instead of the five-node
  DynamicQuantizeLinear + MatMulInteger + Cast + Mul + Mul chain.
- MatMul of two activations (attention's Q.K^T and P.V) -> DynamicQuantizeLinear on each side,
  MatMulInteger, Cast, and one Mul by the product of the two scales (not with the extra option
  `MatMulConstBOnly`).
- Conv with a constant weight -> DynamicQuantizeLinear + ConvInteger + Cast + Mul (+ Add bias).
- Gather from a constant table (embeddings) -> Gather of the 8-bit table + DequantizeLinear of the
  gathered rows: the table, often the largest tensor of a language model, is stored in 8 bits.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .model_edit import (MS_DOMAIN, GraphIndex, ensure_opset, float_dtype_of, remove_unused_initializers,
                         selected)
from .quant_types import QuantType
from .weights import quantize_weight

DYNAMIC_OPS = ("MatMul", "Gemm", "Conv", "Gather")


class _DynamicRewriter:
    def __init__(self, model: onnx.ModelProto, per_channel: bool, reduce_range: bool,
                 weight_type: QuantType, extra_options: dict) -> None:
        self.model = model
        self.graph = model.graph
        self.idx = GraphIndex(self.graph)
        self.types = float_dtype_of(model)
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.weight_type = weight_type
        self.extra = extra_options
        self.dq_cache: dict[str, tuple[str, str, str]] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.used_ms = False
        self.folded: set[int] = set()   # bias Adds folded into the node before them

    # ------------------------------------------------------------------ helpers
    def is_float(self, name: str) -> bool:
        return self.types.get(name) == TensorProto.FLOAT

    def dynamic_quantized(self, name: str) -> tuple[str, str, str]:
        """(uint8 tensor, scale, zero point) of an activation, one DynamicQuantizeLinear per tensor."""
        if name not in self.dq_cache:
            base = name.replace(":", "_")
            outs = [self.idx.unique(base + "_quantized"), self.idx.unique(base + "_scale"),
                    self.idx.unique(base + "_zero_point")]
            self.nodes.append(helper.make_node("DynamicQuantizeLinear", [name], outs,
                                               name=self.idx.unique(base + "_QuantizeLinear")))
            self.dq_cache[name] = tuple(outs)
        return self.dq_cache[name]

    def weight(self, base: str, w: np.ndarray, axis: int) -> tuple[str, str, str]:
        q, scale, zp = quantize_weight(w, self.weight_type, self.per_channel, axis, self.reduce_range)
        return (self.idx.add_initializer(base + "_quantized", q),
                self.idx.add_initializer(base + "_scale", scale),
                self.idx.add_initializer(base + "_zero_point", zp))

    # ------------------------------------------------------------------ per op
    def matmul(self, node: onnx.NodeProto) -> bool:
        a, b = node.input[0], node.input[1]
        if not self.is_float(a):
            return False
        w = self.idx.constant(b)
        if w is not None:
            if w.ndim != 2 or w.dtype != np.float32:
                return False
            bias, out = self._following_bias(node, w.shape[1])
            return self._dqmatmul(node, a, w, bias, out)
        if not self.is_float(b) or self.extra.get("MatMulConstBOnly", False):
            return False
        qa, sa, za = self.dynamic_quantized(a)
        qb, sb, zb = self.dynamic_quantized(b)
        base = node.name or node.output[0]
        acc, accf, scale = (self.idx.unique(base + s) for s in ("_output_quantized", "_output_float", "_scale"))
        self.nodes += [
            helper.make_node("MatMulInteger", [qa, qb, za, zb], [acc], name=self.idx.unique(base + "_quant")),
            helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=self.idx.unique(base + "_cast")),
            helper.make_node("Mul", [sa, sb], [scale], name=self.idx.unique(base + "_scales_mul")),
            helper.make_node("Mul", [accf, scale], [node.output[0]], name=self.idx.unique(base + "_output_scale_mul")),
        ]
        return True

    def gemm(self, node: onnx.NodeProto) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        a, b = node.input[0], node.input[1]
        w = self.idx.constant(b)
        if not self.is_float(a) or w is None or w.ndim != 2 or w.dtype != np.float32 or attrs.get("transA", 0):
            return False
        if attrs.get("transB", 0):
            w = w.T
        w = np.ascontiguousarray(w * np.float32(attrs.get("alpha", 1.0)), np.float32)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self.idx.constant(node.input[2])
            if c is None or c.size not in (1, w.shape[1]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                return False
            bias = np.broadcast_to(c.reshape(-1) * np.float32(attrs.get("beta", 1.0)), (w.shape[1],)).astype(np.float32)
        return self._dqmatmul(node, a, w, bias)

    def _following_bias(self, node: onnx.NodeProto, n: int) -> tuple[np.ndarray | None, str]:
        """A bias Add (constant of N values) that is the MatMul's only reader folds into the
        quantized op's bias input: (bias, output name to write)."""
        out = node.output[0]
        readers = self.idx.consumers.get(out, [])
        if len(readers) != 1 or out in self.idx.graph_outputs or self.extra.get("NoBiasFolding", False):
            return None, out
        add = readers[0]
        if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
            return None, out
        other = add.input[1] if add.input[0] == out else add.input[0]
        c = self.idx.constant(other)
        if c is None or c.dtype != np.float32 or c.size != n or c.shape[-1] != n or any(d != 1 for d in c.shape[:-1]):
            return None, out
        self.folded.add(id(add))
        return c.reshape(-1), add.output[0]

    def _dqmatmul(self, node: onnx.NodeProto, a: str, w: np.ndarray, bias: np.ndarray | None,
                  out: str | None = None) -> bool:
        base = node.input[1].replace(":", "_")
        qw, sw, zw = self.weight(base, w, axis=1)
        inputs = [a, qw, sw, zw]
        if bias is not None:
            inputs.append(self.idx.add_initializer(base + "_bias", bias))
        self.nodes.append(helper.make_node("DynamicQuantizeMatMul", inputs, [out or node.output[0]], domain=MS_DOMAIN,
                                           name=self.idx.unique((node.name or node.output[0]) + "_quant")))
        self.used_ms = True
        return True

    def conv(self, node: onnx.NodeProto) -> bool:
        x, wname = node.input[0], node.input[1]
        w = self.idx.constant(wname)
        if not self.is_float(x) or w is None or w.dtype != np.float32 or w.ndim < 3:
            return False
        bias = self.idx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            return False
        # onnxruntime's CPU ConvInteger takes uint8 weights with one zero point: per-channel weights
        # are symmetric (zero point 128 for every channel), only their scales differ.
        q, scale, zp = quantize_weight(w, QuantType.QUInt8, self.per_channel, 0, self.reduce_range,
                                       symmetric=self.per_channel)
        if zp.ndim:
            zp = zp[:1].reshape(())
        base = wname.replace(":", "_")
        qw = self.idx.add_initializer(base + "_quantized", q)
        zw = self.idx.add_initializer(base + "_zero_point", zp)
        bshape = (-1,) + (1,) * (w.ndim - 2)
        sw = self.idx.add_initializer(base + "_scale", scale.reshape(bshape) if scale.ndim else scale)
        qx, sx, zx = self.dynamic_quantized(x)
        name = node.name or node.output[0]
        acc, accf, s = (self.idx.unique(name + t) for t in ("_output_quantized", "_output_float", "_scale"))
        attrs = [a for a in node.attribute]
        conv = helper.make_node("ConvInteger", [qx, qw, zx, zw], [acc], name=self.idx.unique(name + "_quant"))
        conv.attribute.extend(attrs)
        scaled = node.output[0] if bias is None else self.idx.unique(name + "_scaled")
        self.nodes += [conv,
                       helper.make_node("Cast", [acc], [accf], to=TensorProto.FLOAT, name=self.idx.unique(name + "_cast")),
                       helper.make_node("Mul", [sx, sw], [s], name=self.idx.unique(name + "_scales_mul")),
                       helper.make_node("Mul", [accf, s], [scaled], name=self.idx.unique(name + "_output_scale_mul"))]
        if bias is not None:
            b = self.idx.add_initializer(node.input[2] + "_reshaped", bias.astype(np.float32).reshape(bshape))
            self.nodes.append(helper.make_node("Add", [scaled, b], [node.output[0]], name=self.idx.unique(name + "_bias_add")))
        return True


    def gather(self, node: onnx.NodeProto) -> bool:
        table = self.idx.constant(node.input[0])
        if table is None or table.dtype != np.float32:
            return False
        q, s, z = self._table(node.input[0], table)
        name = node.name or node.output[0]
        gathered = self.idx.unique(node.output[0] + "_quantized")
        g = helper.make_node("Gather", [q, node.input[1]], [gathered], name=self.idx.unique(name + "_quant"))
        g.attribute.extend(node.attribute)
        self.nodes += [g, helper.make_node("DequantizeLinear", [gathered, s, z], [node.output[0]],
                                           name=self.idx.unique(name + "_DequantizeLinear"))]
        return True

    def _table(self, name: str, table: np.ndarray) -> tuple[str, str, str]:
        """The table per tensor even when per-channel is asked: one DequantizeLinear then serves the
        gathered rows whatever the Gather's axis and index rank."""
        q, scale, zp = quantize_weight(table, self.weight_type, False, 0, self.reduce_range)
        base = name.replace(":", "_")
        return (self.idx.add_initializer(base + "_quantized", q), self.idx.add_initializer(base + "_scale", scale),
                self.idx.add_initializer(base + "_zero_point", zp))


def quantize_dynamic_model(model: onnx.ModelProto, op_types: set[str], per_channel: bool, reduce_range: bool,
                           weight_type: QuantType, include, exclude, extra_options: dict) -> onnx.ModelProto:
    """Rewrite `model` in place (and return it) with dynamically quantized MatMul / Gemm / Conv."""
    rw = _DynamicRewriter(model, per_channel, reduce_range, weight_type, extra_options)
    handlers = {"MatMul": rw.matmul, "Gemm": rw.gemm, "Conv": rw.conv, "Gather": rw.gather}
    for node in list(rw.graph.node):
        handler = handlers.get(node.op_type)
        if id(node) in rw.folded:
            continue
        if handler is None or not selected(node, op_types, include, exclude) or not handler(node):
            rw.nodes.append(node)
    del rw.graph.node[:]
    rw.graph.node.extend(rw.nodes)
    rw.graph.initializer.extend(rw.idx.new_initializers())
    remove_unused_initializers(rw.graph)
    ensure_opset(model, "", 11)
    if rw.used_ms:
        ensure_opset(model, MS_DOMAIN, 1)
    return model
