"""What quantization changed: file sizes, and per-layer error from running the float and the
quantized model through our runtime on the same sample (cosine similarity and max |difference|
of each quantized layer's float output)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

LAYER_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "GlobalAveragePool", "AveragePool")


@dataclass
class LayerError:
    tensor: str
    op_type: str
    cosine: float
    max_abs: float

    def as_dict(self) -> dict:
        return asdict(self)


def model_size(path: "str | os.PathLike") -> int:
    """Bytes of the model file plus its external data files in the same folder."""
    path = str(path)
    total = os.path.getsize(path)
    try:
        m = onnx.load(path, load_external_data=False)
    except Exception:
        return total
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in locations:
        p = os.path.join(os.path.dirname(path), loc)
        if os.path.isfile(p):
            total += os.path.getsize(p)
    return total


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    return float(a @ b / (na * nb)) if na and nb else 0.0


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return m


def _expose_quantized(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """Add a DequantizeLinear for each layer output that only exists quantized (QOperator), using the
    `<name>_quantized` / `_scale` / `_zero_point` names the writers give; returns the names now there."""
    produced = {o for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    found = []
    for t in names:
        if t in produced:
            found.append(t)
            continue
        q, s, z = t + "_quantized", t + "_scale", t + "_zero_point"
        if q in produced and s in inits and z in inits:
            model.graph.node.append(helper.make_node("DequantizeLinear", [q, s, z], [t], name=t + "_report_dq"))
            found.append(t)
    return found


def layer_errors(float_model: "str | onnx.ModelProto", quant_model: "str | onnx.ModelProto",
                 feeds: dict[str, np.ndarray]) -> list[LayerError]:
    """Per-layer output error of the quantized model against the float one (our runtime runs both)."""
    import ep_core
    fm = float_model if isinstance(float_model, onnx.ModelProto) else onnx.load(str(float_model))
    qm = onnx.ModelProto()
    qm.CopyFrom(quant_model if isinstance(quant_model, onnx.ModelProto) else onnx.load(str(quant_model)))
    layers = [(n.output[0], n.op_type) for n in fm.graph.node if n.op_type in LAYER_OPS and n.output]
    names = _expose_quantized(qm, [t for t, _ in layers])
    # Graph outputs last so the final error is reported even where the last layer is not listed.
    names += [o.name for o in fm.graph.output if o.name not in names]
    ops = dict(layers)
    opts = ep_core.SessionOptions()
    opts.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_ENABLE_BASIC
    fs = ep_core.InferenceSession(_with_outputs(fm, names).SerializeToString(), opts, providers=["cpu"])
    qs = ep_core.InferenceSession(_with_outputs(qm, names).SerializeToString(), opts, providers=["cpu"])
    fv = fs.run(names, feeds)
    qv = qs.run(names, feeds)
    out = []
    for t, a, b in zip(names, fv, qv):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind != "f" or a.shape != b.shape:
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        out.append(LayerError(t, ops.get(t, "output"), cosine(a, b), diff))
    return out
