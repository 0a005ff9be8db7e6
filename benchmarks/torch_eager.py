"""The benchmark models executed op by op with PyTorch on the GPU: the "PyTorch eager" bar of
benchmarks/gpu_vs_cpu.py (cuDNN convolutions, cuBLAS GEMMs, PyTorch's own elementwise kernels,
no graph fusion), with the same weights as the ONNX model. Covers the op set of
benchmarks/models (ResNet-50, MobileNetV2, BERT, GPT-2 decoder step); an unknown op raises.
Benchmark tool only: never used by the runtime.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx
from onnx import numpy_helper

ONNX_TO_TORCH = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class TorchEager:
    def __init__(self, model: onnx.ModelProto, device: str = "cuda") -> None:
        import torch
        self.torch = torch
        self.device = device
        self.graph = model.graph
        self.host: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.consts = {k: torch.as_tensor(np.array(v, copy=True)).to(device) for k, v in self.host.items()}
        self.ops = {n.op_type for n in model.graph.node}
        missing = self.ops - set(OPS)
        if missing:
            raise NotImplementedError(f"torch eager: no mapping for {sorted(missing)}")
        self.nodes = [(n, OPS[n.op_type], _attrs(n)) for n in model.graph.node]

    def ints(self, name: str, v) -> list[int]:
        if name in self.host:
            return [int(x) for x in np.asarray(self.host[name]).reshape(-1)]
        return [int(x) for x in v.reshape(-1).tolist()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            env: dict[str, Any] = dict(self.consts)
            for k, v in feeds.items():
                env[k] = torch.as_tensor(v).to(self.device, non_blocking=False)
            for node, fn, attrs in self.nodes:
                args = [env.get(i) if i else None for i in node.input]
                outs = fn(self, node, args, attrs)
                if not isinstance(outs, (tuple, list)):
                    outs = (outs,)
                for name, v in zip(node.output, outs):
                    env[name] = v
            return [env[o.name].cpu().numpy() for o in self.graph.output]


def _conv(e, n, a, at):
    F = e.torch.nn.functional
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    nd = w.dim() - 2
    pads = at.get("pads", [0] * (2 * nd))
    if list(pads[:nd]) != list(pads[nd:]):
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
        pads = [0] * (2 * nd)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=at.get("strides", 1), padding=list(pads[:nd]),
                dilation=at.get("dilations", 1), groups=at.get("group", 1))


def _gemm(e, n, a, at):
    A = a[0].t() if at.get("transA", 0) else a[0]
    B = a[1].t() if at.get("transB", 0) else a[1]
    y = e.torch.matmul(A, B) * at.get("alpha", 1.0)
    if len(a) > 2 and a[2] is not None:
        y = y + at.get("beta", 1.0) * a[2]
    return y


def _gather(e, n, a, at):
    data, idx = a
    axis = at.get("axis", 0) % data.dim()
    if idx.dim() == 0:
        return data.select(axis, int(idx))
    flat = e.torch.index_select(data, axis, idx.reshape(-1))
    return flat.reshape(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]))


def _reshape(e, n, a, at):
    shape = e.ints(n.input[1], a[1])
    x = a[0]
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(e, n, a, at):
    axes = e.ints(n.input[1], a[1]) if len(a) > 1 and a[1] is not None else list(at["axes"])
    x = a[0]
    out_nd = x.dim() + len(axes)
    for ax in sorted(v % out_nd for v in axes):
        x = x.unsqueeze(ax)
    return x


def _split(e, n, a, at):
    x = a[0]
    axis = at.get("axis", 0)
    if len(a) > 1 and a[1] is not None:
        sizes = e.ints(n.input[1], a[1])
    else:
        parts = at.get("num_outputs", len(n.output))
        size = -(-x.shape[axis] // parts)
        sizes = [min(size, x.shape[axis] - k * size) for k in range(parts)]
    return tuple(e.torch.split(x, sizes, dim=axis))


def _clip(e, n, a, at):
    lo = float(a[1]) if len(a) > 1 and a[1] is not None else None
    hi = float(a[2]) if len(a) > 2 and a[2] is not None else None
    return e.torch.clamp(a[0], lo, hi)


def _reduce_mean(e, n, a, at):
    axes = list(at["axes"]) if "axes" in at else (e.ints(n.input[1], a[1]) if len(a) > 1 else None)
    return a[0].mean(dim=axes, keepdim=bool(at.get("keepdims", 1)))


def _cast(e, n, a, at):
    return a[0].to(getattr(e.torch, ONNX_TO_TORCH[at["to"]]))


def _maxpool(e, n, a, at):
    F = e.torch.nn.functional
    nd = a[0].dim() - 2
    pads = at.get("pads", [0] * (2 * nd))
    return {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd](
        a[0], at["kernel_shape"], stride=at.get("strides", 1), padding=list(pads[:nd]),
        dilation=at.get("dilations", 1), ceil_mode=bool(at.get("ceil_mode", 0)))


def _layernorm(e, n, a, at):
    x = a[0]
    axis = at.get("axis", -1) % x.dim()
    return e.torch.nn.functional.layer_norm(x, tuple(x.shape[axis:]), a[1],
                                            a[2] if len(a) > 2 else None, at.get("epsilon", 1e-5))


OPS: dict[str, Callable] = {
    "Conv": _conv, "Gemm": _gemm, "Gather": _gather, "Reshape": _reshape, "Unsqueeze": _unsqueeze,
    "Split": _split, "Clip": _clip, "ReduceMean": _reduce_mean, "Cast": _cast, "MaxPool": _maxpool,
    "LayerNormalization": _layernorm,
    "BatchNormalization": lambda e, n, a, at: e.torch.nn.functional.batch_norm(
        a[0], a[3], a[4], a[1], a[2], training=False, eps=at.get("epsilon", 1e-5)),
    "Relu": lambda e, n, a, at: e.torch.relu(a[0]),
    "Add": lambda e, n, a, at: a[0] + a[1], "Sub": lambda e, n, a, at: a[0] - a[1],
    "Mul": lambda e, n, a, at: a[0] * a[1], "Div": lambda e, n, a, at: a[0] / a[1],
    "Pow": lambda e, n, a, at: e.torch.pow(a[0], a[1]),
    "Sqrt": lambda e, n, a, at: e.torch.sqrt(a[0]), "Erf": lambda e, n, a, at: e.torch.erf(a[0]),
    "Tanh": lambda e, n, a, at: e.torch.tanh(a[0]), "Identity": lambda e, n, a, at: a[0],
    "MatMul": lambda e, n, a, at: e.torch.matmul(a[0], a[1]),
    "Transpose": lambda e, n, a, at: a[0].permute(*at.get("perm", list(range(a[0].dim() - 1, -1, -1)))),
    "Softmax": lambda e, n, a, at: e.torch.softmax(a[0], dim=at.get("axis", -1)),
    "Concat": lambda e, n, a, at: e.torch.cat([t for t in a if t is not None], dim=at["axis"]),
    "GlobalAveragePool": lambda e, n, a, at: a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True),
    "Flatten": lambda e, n, a, at: a[0].reshape(int(np.prod(a[0].shape[:at.get("axis", 1)])), -1),
}
