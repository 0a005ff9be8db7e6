"""Static cost estimates from inferred shapes: FLOPs of the compute-heavy ops, weight bytes and
a peak-activation estimate (values live from their producer to their last reader)."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import shape_inference

from ep_core.types import np_dtype


def _fixed_inputs(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A weightless copy whose symbolic input dims are fixed (--dim values, default 1)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:   # shape inference needs only dims and types
        init.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            init.ClearField(f)
        init.ClearField("external_data")
        init.data_location = onnx.TensorProto.DEFAULT
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = dims.get(d.dim_param, 1)
    return m


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[list[int] | None, np.dtype | None]]:
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:   # inference refuses some contrib/custom graphs: estimate from what is declared
        inferred = model
    out = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] \
            if t.HasField("shape") else None
        try:
            dtype = np_dtype(t.elem_type) if t.elem_type else None
        except Exception:
            dtype = None
        out[vi.name] = (shape, dtype)
    for init in g.initializer:
        out[init.name] = (list(init.dims), np_dtype(init.data_type))
    return out


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def node_flops(node: onnx.NodeProto, shapes: dict) -> int | None:
    """Multiply-adds x 2 of Conv, ConvTranspose, Gemm and MatMul; None when shapes are unknown."""
    def sh(k):
        return shapes.get(node.input[k], (None, None))[0] if len(node.input) > k and node.input[k] else None
    out = shapes.get(node.output[0], (None, None))[0] if node.output else None
    if node.op_type in ("Conv", "ConvTranspose"):
        w = sh(1)
        ref = out if node.op_type == "Conv" else sh(0)
        if not (_known(w) and _known(ref)):
            return None
        # Conv: every output element takes Cin/group * kernel MACs; ConvTranspose: every input element
        # scatters over Cout/group * kernel outputs (W is Cin x Cout/group x k).
        per = int(np.prod(w[1:]))
        return 2 * int(np.prod(ref)) * per
    if node.op_type == "Gemm":
        a, b = sh(0), sh(1)
        if not (_known(a) and _known(b)):
            return None
        attrs = {a_.name: a_.i for a_ in node.attribute}
        k = a[0] if attrs.get("transA", 0) else a[-1]
        n = b[0] if attrs.get("transB", 0) else b[-1]
        m = a[1] if attrs.get("transA", 0) else a[0]
        return 2 * m * n * k
    if node.op_type == "MatMul":
        a, b = sh(0), sh(1)
        if not (_known(a) and _known(b) and _known(out)):
            return None
        k = a[-1]
        return 2 * int(np.prod(out)) * k
    return None


def estimate(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict[str, Any]:
    """FLOPs by op type (MatMuls of two activations counted apart as attention-like), weight bytes,
    peak activation bytes (main graph, topological order, each value freed after its last reader)."""
    fixed = _fixed_inputs(model, dims or {})
    shapes = _shapes(fixed)
    g = model.graph
    weights = {i.name for i in g.initializer}
    weight_bytes = sum(int(np.prod(i.dims)) * np_dtype(i.data_type).itemsize for i in g.initializer
                       if i.data_type != onnx.TensorProto.STRING)
    flops: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for node in g.node:
        f = node_flops(node, shapes)
        key = node.op_type
        if node.op_type == "MatMul" and not any(i in weights for i in node.input):
            key = "MatMul (activation x activation: attention-like)"
        if f is None:
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                unknown[key] = unknown.get(key, 0) + 1
            continue
        flops[key] = flops.get(key, 0) + f

    def nbytes(name: str) -> int:
        shape, dtype = shapes.get(name, (None, None))
        if not _known(shape) or dtype is None or dtype == object:
            return 0
        return int(np.prod(shape)) * dtype.itemsize

    last_use: dict[str, int] = {}
    for k, node in enumerate(g.node):
        for i in node.input:
            last_use[i] = k
    outputs = {o.name for o in g.output}
    live = {i.name: nbytes(i.name) for i in g.input if i.name not in weights}
    peak = sum(live.values())
    for k, node in enumerate(g.node):
        for o in node.output:
            if o:
                live[o] = nbytes(o)
        peak = max(peak, sum(live.values()))
        for i in set(node.input) | {o for o in node.output if o not in last_use}:
            if last_use.get(i, k) == k and i not in outputs and i in live:
                del live[i]
    return {"flops": flops, "total_flops": sum(flops.values()), "flops_unknown_shapes": unknown,
            "weight_bytes": weight_bytes, "peak_activation_bytes": peak}
