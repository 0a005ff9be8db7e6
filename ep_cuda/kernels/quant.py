"""QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear (kernels_cu/quant.cu), ONNX and the
`com.microsoft` contrib forms, so a quantized graph stays on the GPU between its integer ops.

Per tensor and per axis; blocked quantization (`block_size`), float8/int4 types and the `precision`
attribute are left to the CPU provider (`supports`). Rounding matches the CPU provider exactly
(division in the scale's precision, round half to even, saturation).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ep_core.types import np_dtype

from .. import loader
from ..launch import CudaKernel, contiguous, ctype, empty, i64, launch
from ..registry import kernel

MS = "com.microsoft"
Q_IN = (np.float32, np.float16)
Q_OUT = (np.uint8, np.int8, np.uint16, np.int16)
DQ_IN = (np.uint8, np.int8, np.uint16, np.int16, np.int32)
DQ_OUT = (np.float32, np.float16)
DQL_PARTS = 256   # min/max partials of DynamicQuantizeLinear's first pass (at most)
loader.declare("quant", [f"quantize_k<{ctype(x)}, {ctype(y)}>" for x in Q_IN for y in Q_OUT]
               + [f"dequantize_k<{ctype(x)}, {ctype(y)}>" for x in DQ_IN for y in DQ_OUT]
               + ["dql_minmax_k", "dql_apply_k"])


def dtype_in(dt: np.dtype | None, allowed) -> bool:
    return dt is not None and dt in {np.dtype(t) for t in allowed}


def input_dtype(node, k: int) -> np.dtype | None:
    if k >= len(node.inputs) or not node.inputs[k]:
        return None
    dts = node.input_dtypes
    return dts[k] if k < len(dts) else None


def has_input(node, k: int) -> bool:
    return k < len(node.inputs) and bool(node.inputs[k])


def axis_params(shape: tuple, n_params: int, axis: int) -> tuple[int, int]:
    """(axis_dim, inner) of a per-tensor (1, 1) or per-axis parameter vector for `shape`."""
    if n_params == 1 or len(shape) == 0:
        return 1, 1
    a = axis + len(shape) if axis < 0 else axis
    if not 0 <= a < len(shape) or shape[a] != n_params:
        raise ValueError(f"a per-axis scale of {n_params} values does not match axis {axis} of "
                         f"shape {tuple(shape)}")
    return int(shape[a]), int(math.prod(shape[a + 1:]))


def _param(p: Any, what: str) -> Any:
    """A scale / zero point: a scalar or a 1-D vector (blocked layouts go to the CPU provider)."""
    if p is None:
        return None
    if p.ndim > 1:
        raise NotImplementedError(f"{what} of shape {tuple(p.shape)}: blocked quantization runs on "
                                  f"the CPU provider")
    return contiguous(p)


class _QuantizeBase(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(node.attrs.get("axis", 1))

    @classmethod
    def _plain(cls, node) -> bool:
        return not int(node.attrs.get("block_size", 0) or 0) and "precision" not in node.attrs


@kernel("QuantizeLinear", since=10)
@kernel("QuantizeLinear", domain=MS)
class QuantizeLinear(_QuantizeBase):
    """y = saturate(rint(x / y_scale) + y_zero_point) into uint8/int8/uint16/int16."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.out = self.out_dtype(node) or np.dtype(np.uint8)

    @staticmethod
    def out_dtype(node) -> np.dtype | None:
        zdt = input_dtype(node, 2)
        if zdt is not None:
            return zdt
        declared = node.output_dtypes[0] if node.output_dtypes else None
        if declared is not None:
            return declared
        t = int(node.attrs.get("output_dtype", 0) or 0)
        return np_dtype(t) if t else None

    @classmethod
    def supports(cls, node) -> bool:
        x, s = input_dtype(node, 0), input_dtype(node, 1)
        out = cls.out_dtype(node) or np.dtype(np.uint8)
        return cls._plain(node) and dtype_in(x, Q_IN) and s == x and dtype_in(out, Q_OUT)

    def forward(self, x, y_scale, y_zero_point=None):
        out = y_zero_point.dtype if y_zero_point is not None else self.out
        if y_scale.dtype != x.dtype:
            raise NotImplementedError(f"QuantizeLinear: {x.dtype} input with a {y_scale.dtype} scale")
        x = contiguous(x)
        y_scale = _param(y_scale, "y_scale")
        zp = _param(y_zero_point, "y_zero_point")
        axis_dim, inner = axis_params(x.shape, y_scale.size, self.axis)
        y = empty(x.shape, out)
        launch("quant", f"quantize_k<{ctype(x.dtype)}, {ctype(out)}>", x.size,
               (x, y_scale, zp, y, i64(x.size), i64(inner), i64(axis_dim)))
        return y


@kernel("DequantizeLinear", since=10)
@kernel("DequantizeLinear", domain=MS)
class DequantizeLinear(_QuantizeBase):
    """y = (x - x_zero_point) * x_scale, in the scale's type (float32 or float16)."""

    @classmethod
    def supports(cls, node) -> bool:
        x, s = input_dtype(node, 0), input_dtype(node, 1)
        out_t = int(node.attrs.get("output_dtype", 0) or 0)
        out_ok = not out_t or (s is not None and np_dtype(out_t) == s)
        return cls._plain(node) and dtype_in(x, DQ_IN) and dtype_in(s, DQ_OUT) and out_ok

    def forward(self, x, x_scale, x_zero_point=None):
        x = contiguous(x)
        x_scale = _param(x_scale, "x_scale")
        zp = _param(x_zero_point, "x_zero_point")
        axis_dim, inner = axis_params(x.shape, x_scale.size, self.axis)
        y = empty(x.shape, x_scale.dtype)
        launch("quant", f"dequantize_k<{ctype(x.dtype)}, {ctype(y.dtype)}>", x.size,
               (x, x_scale, zp, y, i64(x.size), i64(inner), i64(axis_dim)))
        return y


def dynamic_quantize(x: Any) -> tuple[Any, Any, Any]:
    """DynamicQuantizeLinear on the device: (uint8 q, float32 scale, uint8 zero point), the
    scalars as 0-d device arrays. Two launches: per-chunk min/max, then scale + quantization."""
    x = contiguous(x)
    n = int(x.size)
    y = empty(x.shape, np.uint8)
    scale = empty((), np.float32)
    zp = empty((), np.uint8)
    parts = max(1, min(DQL_PARTS, -(-n // 4096)))
    partial = empty((2 * parts,), np.float32)
    if n:
        loader.get_kernel("quant", "dql_minmax_k")((parts,), (256,), (x, i64(n), i64(parts), partial))
    used = parts if n else 0
    blocks = max(1, min(1024, -(-n // 256)))
    loader.get_kernel("quant", "dql_apply_k")(
        (blocks,), (256,), (x, i64(n), partial, i64(used), y, scale, zp))
    return y, scale, zp


@kernel("DynamicQuantizeLinear", since=11)
class DynamicQuantizeLinear(CudaKernel):
    """uint8 quantization with the scale and zero point of x's range (extended to include 0)."""

    @classmethod
    def supports(cls, node) -> bool:
        return input_dtype(node, 0) == np.dtype(np.float32)

    def forward(self, x):
        return dynamic_quantize(x)
