"""onnxruntime's QLinear* contrib ops (`com.microsoft`) on uint8/int8 data with per-tensor scales:
QLinearAdd, QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, QLinearConcat,
QLinearGlobalAveragePool, QLinearAveragePool.

Arithmetic is float32 as in onnxruntime: scale ratios are float32 products/quotients, results
are rounded half-to-even and saturated (`quantize.quantize`). Unary ops and requantizing
Concat inputs go through a 256-entry lookup table built from the scales at each run (the table
holds exactly quantize(f(dequantize(x))) for every possible x).
"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_cpu.gemm_epilogue import sigmoid
from ep_cpu.registry import kernel

from .contrib_common import MS, required
from .pool import AveragePool
from .quantize import quantize

_F32 = np.float32


def _scalar(node, v, what: str, dtype=None) -> np.generic:
    """A per-tensor scale / zero point (zero point 0 of `dtype` when omitted)."""
    if v is None:
        return np.dtype(dtype).type(0)
    v = np.asarray(v)
    if v.size != 1:
        raise InvalidArgument(f"{node.describe()}: {what} must be a scalar (per-tensor), got shape {v.shape}")
    return v.reshape(-1)[0]


def _dequantize(x: np.ndarray, scale, zp) -> np.ndarray:
    return (x.astype(_F32) - _F32(zp)) * _F32(scale)


def _requantize(v: np.ndarray, scale, zp, dtype) -> np.ndarray:
    """float32 values -> quantized: round(v / scale) + zp, saturated."""
    return quantize((v / _F32(scale)).astype(_F32), np.asarray(zp), np.dtype(dtype))


def _table(dtype: np.dtype, fn, x_scale, x_zp, y_scale, y_zp) -> np.ndarray:
    """quantize(fn(dequantize(x))) for every value x of the 8-bit type, indexed by x - min."""
    info = np.iinfo(dtype)
    vals = np.arange(info.min, int(info.max) + 1).astype(dtype)
    with np.errstate(over="ignore"):
        return _requantize(fn(_dequantize(vals, x_scale, x_zp)), y_scale, y_zp, dtype)


def _lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    return table[x.astype(np.int16) - int(np.iinfo(x.dtype).min)]


class _QLinearBinary(Kernel):
    def compute(self, a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp=None):
        if a.dtype != b.dtype:
            raise InvalidArgument(f"{self.node.describe()}: A is {a.dtype} but B is {b.dtype}")
        n = self.node
        sa, sb, sc = (_scalar(n, s, w) for s, w in ((a_scale, "A_scale"), (b_scale, "B_scale"),
                                                    (c_scale, "C_scale")))
        za, zb, zc = (_scalar(n, z, w, a.dtype) for z, w in ((a_zp, "A_zero_point"), (b_zp, "B_zero_point"),
                                                             (c_zp, "C_zero_point")))
        da = a.astype(_F32) - _F32(za)
        db = b.astype(_F32) - _F32(zb)
        v = self.combine(da, db, _F32(sa), _F32(sb), _F32(sc)) + _F32(zc)
        return quantize(v, None, a.dtype)


@kernel("QLinearAdd", domain=MS)
class QLinearAdd(_QLinearBinary):
    """C = (A_scale (A - A_zp) + B_scale (B - B_zp)) / C_scale + C_zp, numpy broadcasting."""

    @staticmethod
    def combine(da, db, sa, sb, sc):
        return da * (sa / sc) + db * (sb / sc)


@kernel("QLinearMul", domain=MS)
class QLinearMul(_QLinearBinary):
    """C = (A - A_zp)(B - B_zp) A_scale B_scale / C_scale + C_zp, numpy broadcasting."""

    @staticmethod
    def combine(da, db, sa, sb, sc):
        return da * db * (sa * sb / sc)


class _QLinearUnary(Kernel):
    def compute(self, x, x_scale, x_zp=None, y_scale=None, y_zp=None):
        n = self.node
        table = _table(x.dtype, self.f, _scalar(n, x_scale, "X_scale"), _scalar(n, x_zp, "X_zero_point", x.dtype),
                       _scalar(n, y_scale, "Y_scale"), _scalar(n, y_zp, "Y_zero_point", x.dtype))
        return _lookup(table, x)


@kernel("QLinearSigmoid", domain=MS)
class QLinearSigmoid(_QLinearUnary):
    """quantize(Sigmoid(dequantize(X)))."""

    @staticmethod
    def f(v):
        return sigmoid(v)


@kernel("QLinearLeakyRelu", domain=MS)
class QLinearLeakyRelu(_QLinearUnary):
    """quantize(LeakyRelu(dequantize(X), alpha)), alpha defaulting to 0.01."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = _F32(self.attr("alpha", 0.01))

    def f(self, v):
        return np.where(v >= 0, v, v * self.alpha)


@kernel("QLinearSoftmax", domain=MS)
class QLinearSoftmax(Kernel):
    """Softmax of dequantized X, quantized with y_scale / y_zero_point. `opset` < 13: one softmax
    over all axes from `axis`; else along `axis` (default -1 for both).

    exp(x_scale * (x - max)) comes from a table over the 256 possible differences; the row sum
    is float32, y = round(e / sum / y_scale) + y_zp."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.legacy = int(required(self, "opset")) < 13
        self.axis = int(self.attr("axis", -1))  # -1 at every opset, as onnxruntime

    def compute(self, x, x_scale, x_zp=None, y_scale=None, y_zp=None):
        n = self.node
        scale = _F32(_scalar(n, x_scale, "X_scale"))
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        xi = x.astype(np.int32)
        if self.legacy:
            rows = xi.reshape(x.shape[:axis] + (-1,))
        else:
            rows = np.moveaxis(xi, axis, -1)
        # Zero point cancels out: exp of (x - row max) * scale from a table of the 256 differences.
        exp_table = np.exp(-np.arange(256, dtype=np.float64) * float(scale)).astype(_F32)
        e = exp_table[rows.max(axis=-1, keepdims=True) - rows]
        total = e.sum(axis=-1, keepdims=True, dtype=_F32)
        inv = _F32(1) / _F32(_scalar(n, y_scale, "y_scale"))
        y = quantize(((e * inv) / total).astype(_F32), np.asarray(_scalar(n, y_zp, "y_zero_point", x.dtype)),
                     x.dtype)
        if self.legacy:
            return y.reshape(x.shape)
        return np.ascontiguousarray(np.moveaxis(y, -1, axis))


@kernel("QLinearConcat", domain=MS)
class QLinearConcat(Kernel):
    """Concat of (X, X_scale, X_zero_point) triples along `axis`, each requantized to Y's scale
    and zero point (copied as is where they already match)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(required(self, "axis"))

    def compute(self, y_scale, y_zp, *inputs):
        if len(inputs) % 3 or not inputs:
            raise InvalidArgument(f"{self.node.describe()}: inputs after Y_scale, Y_zero_point must be "
                                  f"(X, X_scale, X_zero_point) triples, got {len(inputs)}")
        n = self.node
        ys, yz = _scalar(n, y_scale, "Y_scale"), _scalar(n, y_zp, "Y_zero_point")
        parts = []
        for x, xs, xz in zip(inputs[0::3], inputs[1::3], inputs[2::3]):
            xs, xz = _scalar(n, xs, "X_scale"), _scalar(n, xz, "X_zero_point", x.dtype)
            if _F32(xs) == _F32(ys) and xz == yz:
                parts.append(x)
            else:
                parts.append(_lookup(_table(x.dtype, lambda v: v, xs, xz, ys, yz), x))
        try:
            return np.concatenate(parts, axis=self.axis)
        except ValueError as e:
            raise InvalidArgument(f"{self.node.describe()}: {e}") from None


def _channels_first(x: np.ndarray, channels_last: bool) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if channels_last else x


@kernel("QLinearGlobalAveragePool", domain=MS)
class QLinearGlobalAveragePool(Kernel):
    """Mean over the spatial axes: round((sum - N x_zp) * x_scale / y_scale / N) + y_zp."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.channels_last = bool(self.attr("channels_last", 0))

    def compute(self, x, x_scale, x_zp, y_scale, y_zp):
        channels_last = self.channels_last
        xc = _channels_first(x, channels_last)
        axes = tuple(range(2, xc.ndim))
        count = int(np.prod([xc.shape[a] for a in axes]))
        n = self.node
        acc = xc.sum(axis=axes, keepdims=True, dtype=np.int64) - count * int(_scalar(n, x_zp, "x_zero_point"))
        mult = _F32(_scalar(n, x_scale, "x_scale")) / _F32(_scalar(n, y_scale, "y_scale")) / _F32(count)
        y = quantize((acc.astype(_F32) * mult).astype(_F32), np.asarray(_scalar(n, y_zp, "y_zero_point")),
                     x.dtype)
        return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y


@kernel("QLinearAveragePool", domain=MS)
class QLinearAveragePool(AveragePool):
    """AveragePool of the dequantized input (AveragePool's attributes, plus `channels_last`),
    quantized with y_scale / y_zero_point. No ONNX schema: omitted pooling attributes are off
    (PoolAttributes), channels_last 0."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.channels_last = bool(self.attr("channels_last", 0))

    def compute(self, x, x_scale, x_zp=None, y_scale=None, y_zp=None):
        n = self.node
        channels_last = self.channels_last
        xf = _dequantize(_channels_first(x, channels_last), _scalar(n, x_scale, "x_scale"),
                         _scalar(n, x_zp, "x_zero_point", x.dtype))
        y = _requantize(super().compute(xf), _scalar(n, y_scale, "y_scale"),
                        _scalar(n, y_zp, "y_zero_point", x.dtype), x.dtype)
        return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y
