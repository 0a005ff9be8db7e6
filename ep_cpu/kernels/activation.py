"""Activations (element-wise, parametric) and the Softmax family (Softmax, LogSoftmax, Hardmax)."""
from __future__ import annotations

import numpy as np
from scipy import special

from ep_core.kernel import Kernel
from ep_cpu.gemm_epilogue import _clip_ufunc, ACTIVATIONS, relu, sigmoid
from ep_cpu.kernels.math import _NATIVE_FLOATS, _ndarray, as_dtype, declared_dtypes, direct, upcast
from ep_cpu import vector_math
from ep_cpu.registry import kernel


def _softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, v)  # log(1 + exp(v)) without overflow


def _native_float_input(node) -> np.dtype | None:
    """The declared float32/float64 dtype of input 0, else None (`None in _NATIVE_FLOATS` would
    be True: numpy compares None as float64)."""
    dts = declared_dtypes(node)
    dt = dts[0] if dts else None
    return dt if dt is not None and dt in _NATIVE_FLOATS else None


class _Elementwise(Kernel):
    """y = f(x) computed in float32 for low-precision floats, returned in x's dtype.

    numpy's errors are off for the whole run (exp overflow etc. give the IEEE results we want):
    no errstate here. A declared float32/float64 input skips the upcast."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if _native_float_input(node) is not None:
            self.compute = self.compute_native

    def f(self, v: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_native(self, x):
        r = self.f(x)
        return r if r.__class__ is _ndarray and r.dtype == x.dtype else as_dtype(r, x.dtype)

    def compute(self, x):
        return as_dtype(self.f(upcast(x)), x.dtype)


def _native_relu(typ):
    zero, inf = typ(0), typ(np.inf)

    def compute(x):
        return _clip_ufunc(x, zero, inf)   # clip propagates NaN, as relu() does
    return compute


@kernel("Relu")
class Relu(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        dt = _native_float_input(node)
        if dt is not None:
            self.compute = direct(_native_relu(dt.type), node)

    def compute(self, x):
        if x.dtype.kind in "iu":  # Relu-14 accepts signed ints
            return as_dtype(np.maximum(x, 0), x.dtype)
        return as_dtype(relu(upcast(x)), x.dtype)  # NaN stays NaN


@kernel("LeakyRelu")
class LeakyRelu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 0.01))

    def f(self, v):
        return np.where(v >= 0, v, v * v.dtype.type(self.alpha))


@kernel("PRelu")
class PRelu(Kernel):
    def compute(self, x, slope):
        dt = x.dtype
        v, s = upcast(x), upcast(slope)
        # PRelu-1/6 followed Caffe: a 1-D slope of size C is per channel (axis 1), not per last axis.
        if (self.node.since_version < 7 and s.ndim == 1 and x.ndim > 2 and s.size == x.shape[1]
                and s.size != 1):
            s = s.reshape((-1,) + (1,) * (x.ndim - 2))
        if dt.kind in "iu":
            return as_dtype(np.where(x < 0, x * slope, x), dt)
        return as_dtype(np.where(v < 0, v * s, v), dt)


@kernel("Elu")
class Elu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))

    def f(self, v):
        return np.where(v > 0, v, self.alpha * np.expm1(np.minimum(v, 0)))


@kernel("Selu")
class Selu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.67326319217681884765625))
        self.gamma = float(self.attr("gamma", 1.05070102214050292968750))

    def f(self, v):
        return self.gamma * np.where(v > 0, v, self.alpha * np.expm1(np.minimum(v, 0)))


@kernel("Celu")
class Celu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))

    def f(self, v):
        a = self.alpha
        return np.maximum(v, 0) + np.minimum(0, a * np.expm1(v / a))


@kernel("HardSigmoid")
class HardSigmoid(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 0.2))
        self.beta = float(self.attr("beta", 0.5))

    def f(self, v):
        return np.clip(self.alpha * v + self.beta, 0, 1)


@kernel("HardSwish")
class HardSwish(_Elementwise):
    def f(self, v):
        return v * np.clip(v / 6.0 + 0.5, 0, 1)


def _sigmoid_any_rank(v: np.ndarray) -> np.ndarray:
    # sigmoid() works in place on a new array: a 0-d input would become a numpy scalar
    return sigmoid(v) if v.ndim else sigmoid(v.reshape(1)).reshape(())


@kernel("Sigmoid")
class Sigmoid(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if _native_float_input(node) is not None:
            # a new array of x's dtype; sigmoid itself when the rank is known to be >= 1
            self.compute = direct(sigmoid, node) if direct(sigmoid, node) is sigmoid else _sigmoid_any_rank

    def f(self, v):
        return _sigmoid_any_rank(v)


@kernel("Tanh")
class Tanh(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if _native_float_input(node) is not None:
            self.compute = direct(np.tanh, node)

    def f(self, v):
        return np.tanh(v)


@kernel("Softplus")
class Softplus(_Elementwise):
    def f(self, v):
        return _softplus(v)


@kernel("Softsign")
class Softsign(_Elementwise):
    def f(self, v):
        return v / (1 + np.abs(v))


@kernel("ThresholdedRelu")
class ThresholdedRelu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))

    def f(self, v):
        return np.where(v > self.alpha, v, 0)


@kernel("Shrink")
class Shrink(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lambd = float(self.attr("lambd", 0.5))
        self.bias = float(self.attr("bias", 0.0))

    def compute(self, x):
        v = upcast(x).astype(np.float64) if x.dtype.kind in "iu" else upcast(x)
        y = np.where(v < -self.lambd, v + self.bias, np.where(v > self.lambd, v - self.bias, 0))
        return as_dtype(y, x.dtype)


@kernel("Mish")
class Mish(_Elementwise):
    def f(self, v):
        return v * np.tanh(_softplus(v))


@kernel("Gelu")
class Gelu(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.approx = str(self.attr("approximate", "none"))

    def f(self, v):
        if self.approx == "tanh":
            inner = np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)
            return 0.5 * v * (1 + np.tanh(inner))
        if v.dtype == np.float32:
            # float32: the chunked in-place epilogue with fast_erf (|error| < 1e-6), ~5x scipy's erf.
            y = np.array(v, dtype=np.float32, order="C", copy=True)
            ACTIVATIONS["Gelu"](y.reshape(-1), {})  # 1-D view: 0-d would yield scalars
            return y
        return 0.5 * v * (1 + special.erf(v / np.sqrt(2)))  # float64: exact


@kernel("Swish")
class Swish(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))

    def f(self, v):
        return v * special.expit(self.alpha * v)


@kernel("SwiGLU")
class SwiGLU(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))

    def compute(self, a, b):
        va, vb = upcast(a), upcast(b)
        return as_dtype(va * special.expit(self.alpha * va) * vb, a.dtype)


# Experimental ops of opset 1-9, still found in old models (no schema in current onnx).
@kernel("Affine")
class Affine(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 0.0))

    def f(self, v):
        return self.alpha * v + self.beta


@kernel("ScaledTanh")
class ScaledTanh(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))

    def f(self, v):
        return self.alpha * np.tanh(self.beta * v)


@kernel("ParametricSoftplus")
class ParametricSoftplus(_Elementwise):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))

    def f(self, v):
        return self.alpha * _softplus(self.beta * v)


@kernel("ImageScaler")
class ImageScaler(Kernel):
    """y = scale * x + bias[c] over NCHW input."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.scale = float(self.attr("scale", 1.0))
        self.bias = self.attr("bias")

    def compute(self, x):
        v = upcast(x) * self.scale
        if self.bias is not None:
            b = np.asarray(self.bias, dtype=v.dtype)
            v = v + b.reshape((1, -1) + (1,) * (x.ndim - 2))
        return as_dtype(v, x.dtype)


class _SoftmaxFamily(Kernel):
    """Softmax-1/11 flatten the input to 2-D at `axis` (default 1); Softmax-13 work along `axis`
    (default -1)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.legacy = node.since_version < 13
        self.axis = int(self.attr("axis", 1 if self.legacy else -1))

    def compute(self, x):
        v = upcast(x)
        shape = v.shape
        axis = self.axis + v.ndim if self.axis < 0 else self.axis
        if v.ndim == 0:
            v = v.reshape(1)
            axis = 0
        elif self.legacy:
            v = v.reshape(int(np.prod(shape[:axis], dtype=np.int64)),
                          int(np.prod(shape[axis:], dtype=np.int64)))
            axis = 1
        y = self.along(v, axis)
        return as_dtype(y.reshape(shape), x.dtype)

    def along(self, v: np.ndarray, axis: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _shifted(v: np.ndarray, axis: int) -> np.ndarray:
    """A new array v - max(v) along axis (so exp cannot overflow); all -inf slices stay
    finite-safe. Raw ufunc reductions: decoder steps run the softmaxes on a few hundred values,
    where each Python-level numpy wrapper costs as much as the arithmetic."""
    m = np.maximum.reduce(v, axis=axis, keepdims=True)
    if not np.isfinite(m).all():
        m = np.where(np.isfinite(m), m, 0)
    return np.subtract(v, m)


@kernel("Softmax")
class Softmax(_SoftmaxFamily):
    def along(self, v, axis):
        if v.size == 0:
            return v
        if axis == v.ndim - 1 and v.dtype == np.float32 and v.flags.c_contiguous:
            e = v.copy()
            if vector_math.softmax_last_axis(e):   # compiled, a row at a time
                return e
        e = _shifted(v, axis)
        np.exp(e, out=e)
        e /= np.add.reduce(e, axis=axis, keepdims=True)
        return e


@kernel("LogSoftmax")
class LogSoftmax(_SoftmaxFamily):
    def along(self, v, axis):
        if v.size == 0:
            return v
        s = _shifted(v, axis)
        return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


@kernel("Hardmax")
class Hardmax(_SoftmaxFamily):
    def along(self, v, axis):
        out = np.zeros_like(v)
        if v.size == 0:
            return out
        idx = np.expand_dims(np.argmax(v, axis=axis), axis)  # first maximum wins
        np.put_along_axis(out, idx, 1, axis=axis)
        return out
