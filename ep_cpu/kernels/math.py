"""Element-wise math: binary/variadic arithmetic, comparison, logical, bitwise and unary math ops."""
from __future__ import annotations

import functools

import numpy as np
from scipy import special

from ep_core.kernel import Kernel
from ep_core.types import tensor_shape
from ep_cpu.registry import kernel

# Float types numpy has no native arithmetic for (ml_dtypes) or only a slow/low-precision one:
# compute in float32 and round back once at the end.
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def is_float(dt: np.dtype) -> bool:
    """True for every floating type, including ml_dtypes' bfloat16 / float8 / float4."""
    dt = np.dtype(dt)
    return dt.kind == "f" or (dt.kind == "V" and "float" in dt.name) or dt.name.startswith(("bfloat", "float"))


def upcast(x: np.ndarray) -> np.ndarray:
    """float16/bfloat16/float8 -> float32 for computing; other dtypes unchanged."""
    if is_float(x.dtype) and x.dtype not in _NATIVE_FLOATS:
        return x.astype(np.float32)
    return x


def as_dtype(r, dtype: np.dtype) -> np.ndarray:
    """Result as an ndarray of exactly `dtype` (numpy returns 0-d scalars and promotes types)."""
    r = np.asarray(r)
    return r if r.dtype == dtype else r.astype(dtype)


_ndarray = np.ndarray


def declared_dtypes(node) -> list:
    """The node's declared input dtypes (None where unknown). Kernels pick a specialised compute
    path from them once, in `__init__`: feeds are checked against the graph's types and shape
    inference types every intermediate, so a declared dtype is the dtype that arrives."""
    return node.input_dtypes


def direct(fn, node, k: int = 0):
    """`fn` itself as a kernel's compute when output `k` is declared with rank >= 1 (a ufunc then
    returns an ndarray), else a wrapper turning the numpy scalar a ufunc returns for 0-d inputs
    into a 0-d array. The per-node overhead of an element-wise node is then the ufunc call alone."""
    types = node.output_types
    shape = tensor_shape(types[k]) if k < len(types) else None
    if shape:
        return fn
    asarray = np.asarray

    def compute(*args):
        r = fn(*args)
        return r if r.__class__ is _ndarray else asarray(r)
    return compute


def keeps_dtype(fn, *dtypes: np.dtype, out: np.dtype | None = None) -> bool:
    """True when numpy's `fn` on arrays of `dtypes` returns `out` (default: the first dtype),
    probed once on one-element arrays: the direct path is exact only then."""
    try:
        with np.errstate(all="ignore"):  # at session build, outside a run's errstate
            r = fn(*[np.ones(1, dt) for dt in dtypes])
    except Exception:  # noqa: BLE001 - no loop for these types: keep the generic path
        return False
    return isinstance(r, _ndarray) and r.dtype == (out if out is not None else dtypes[0])


def legacy_broadcast(axis: int | None, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Opset <7 `broadcast`/`axis`: B's dims align with A's starting at `axis` instead of the
    suffix (`axis` None: numpy's rule)."""
    if axis is not None and b.ndim < a.ndim:
        if axis < 0:
            axis += a.ndim
        b = b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))
    return b


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero, as C does (numpy floors)."""
    if a.dtype.kind == "u":
        return np.floor_divide(a, b)
    q = np.floor_divide(a, b)
    r = np.remainder(a, b)
    # floor and trunc differ when the remainder is nonzero and the signs differ
    fix = (r != 0) & ((a < 0) != (b < 0))
    return q + fix.astype(q.dtype)


class _Binary(Kernel):
    """Shared plumbing of two-input broadcast ops (legacy broadcast handling, dtype preservation)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        axis = self.attr("axis")
        self.legacy_axis = (int(axis) if node.since_version < 7 and self.attr("broadcast", 0)
                            and axis is not None else None)

    def operands(self, a: np.ndarray, b: np.ndarray):
        if self.legacy_axis is not None:
            b = legacy_broadcast(self.legacy_axis, a, b)
        return a, b


@kernel(["Add", "Sub", "Mul", "Div"])
class Arithmetic(_Binary):
    _UFUNC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.op = node.op_type
        self.fn = self._UFUNC[self.op]
        dts = declared_dtypes(node)
        # Same declared dtype on both sides (the schema's T): the ufunc alone, when numpy keeps
        # that dtype (float32/64, same-width ints; integer Div truncates, so not that one).
        if (node.since_version >= 7 and len(dts) == 2 and dts[0] is not None and dts[0] == dts[1]
                and (dts[0] in _NATIVE_FLOATS or (dts[0].kind in "iu" and self.op != "Div"))
                and keeps_dtype(self.fn, dts[0], dts[0])):
            self.compute = direct(self.fn, node)

    # numpy's errors are off for the whole run (inf/nan and integer wrap-around are the defined
    # results): kernels set no errstate of their own.
    def compute(self, a, b):
        a, b = self.operands(a, b)
        dt = a.dtype
        if self.op == "Div" and dt.kind in "iu":
            return as_dtype(_trunc_div(a, b.astype(dt, copy=False)), dt)
        if dt.kind in "iub":
            return as_dtype(self.fn(a, b.astype(dt, copy=False)), dt)
        return as_dtype(self.fn(upcast(a), upcast(b)), dt)


@kernel("Mod")
class Mod(_Binary):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fmod = int(self.attr("fmod", 0))

    def compute(self, a, b):
        dt = a.dtype
        x, y = upcast(a), upcast(b)
        if self.fmod:
            r = np.fmod(x, y)        # sign of the dividend (C fmod)
        else:
            r = np.mod(x, y)         # sign of the divisor (Python %)
        return as_dtype(r, dt)


@kernel("Pow")
class Pow(_Binary):
    """Pow(X: T, Y: T1) -> T; exponent and base may have different types (opset 12+)."""

    def compute(self, x, y):
        x, y = self.operands(x, y)
        dt = x.dtype
        if dt.kind in "iu" and y.dtype.kind in "iu" and not (y < 0).any():
            r = np.power(x.astype(np.int64), y.astype(np.int64))
        elif dt == np.float32 and (y.dtype.kind in "iu" or y.dtype == np.float32 or
                                   (is_float(y.dtype) and y.dtype.itemsize < 4)):
            r = np.power(x, upcast(y).astype(np.float32))
        elif is_float(dt) and dt.itemsize < 4:
            r = np.power(upcast(x), upcast(y).astype(np.float32))
        else:
            r = np.power(x.astype(np.float64), upcast(y).astype(np.float64))
        if r.dtype.kind == "f" and y.size == 1 and float(np.asarray(y).reshape(-1)[0]) == 0.5:
            # numpy takes a scalar 0.5 as sqrt, which gives NaN for -inf; C's pow gives +inf.
            np.copyto(r, np.inf, where=np.isneginf(r) | np.isneginf(upcast(x)))
        return as_dtype(r, dt)


_COMPARE = {"Equal": np.equal, "Greater": np.greater, "Less": np.less,
            "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal}


@kernel(list(_COMPARE))
class Compare(_Binary):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = _COMPARE[node.op_type]
        dts = declared_dtypes(node)
        if (node.since_version >= 7 and len(dts) == 2 and dts[0] is not None and dts[0] == dts[1]
                and dts[0].kind in "fiub" and (dts[0] in _NATIVE_FLOATS or not is_float(dts[0]))
                and keeps_dtype(self.fn, dts[0], dts[0], out=np.dtype(bool))):
            self.compute = direct(self.fn, node)

    def compute(self, a, b):
        a, b = self.operands(a, b)
        if a.dtype == object or b.dtype == object:  # strings: compare element-wise as Python str
            return as_dtype(self.fn(a.astype(object), b.astype(object)), np.dtype(bool))
        return as_dtype(self.fn(upcast(a), upcast(b)), np.dtype(bool))


_LOGICAL = {"And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


@kernel(list(_LOGICAL))
class Logical(_Binary):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = _LOGICAL[node.op_type]
        dts = declared_dtypes(node)
        if node.since_version >= 7 and dts == [np.dtype(bool)] * 2:
            self.compute = direct(self.fn, node)

    def compute(self, a, b):
        a, b = self.operands(a, b)
        return as_dtype(self.fn(a, b), np.dtype(bool))


@kernel("Not")
class Not(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        if declared_dtypes(node) == [np.dtype(bool)]:
            self.compute = direct(np.logical_not, node)

    def compute(self, x):
        return as_dtype(np.logical_not(x), np.dtype(bool))


_BITWISE = {"BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor}


@kernel(list(_BITWISE))
class Bitwise(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.fn = _BITWISE[node.op_type]

    def compute(self, a, b):
        return as_dtype(self.fn(a, b), a.dtype)


@kernel("BitwiseNot")
class BitwiseNot(Kernel):
    def compute(self, x):
        return as_dtype(np.invert(x), x.dtype)


@kernel("BitShift")
class BitShift(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.left = str(self.attr("direction", "")).upper() == "LEFT"

    def compute(self, x, y):
        dt = x.dtype
        bits = dt.itemsize * 8
        y64 = y.astype(np.int64)
        # Shifts by a negative amount or >= the width are UB in C; the spec defines them as the
        # sign fill alone (0, or -1 for an arithmetic right shift of a negative value).
        valid = (y64 >= 0) & (y64 < bits)
        amount = np.where(valid, y64, 0).astype(dt)
        r = np.left_shift(x, amount) if self.left else np.right_shift(x, amount)
        if valid.all():
            return as_dtype(r, dt)
        fill = np.zeros((), dt)
        if not self.left and dt.kind == "i":
            fill = np.where(x < 0, np.asarray(-1, dt), fill)
        return as_dtype(np.where(valid, r, fill), dt)


class _Variadic(Kernel):
    """Max / Min / Sum / Mean over any number of broadcast inputs."""
    fn = None

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        dts = declared_dtypes(node)
        # Two inputs of one native float type (Max/Min/Sum): the ufunc alone.
        if (self.fn is not None and node.op_type != "Mean" and len(dts) == 2 and dts[0] is not None
                and dts[0] == dts[1] and dts[0] in _NATIVE_FLOATS and "" not in node.inputs):
            self.compute = direct(self.fn, node)

    def reduce(self, inputs):
        inputs = [x for x in inputs if x is not None]
        dt = inputs[0].dtype
        vals = [upcast(x) for x in inputs]
        if len(vals) == 1:
            return dt, np.array(vals[0], copy=True)
        return dt, functools.reduce(self.fn, vals)


@kernel("Max")
class Max(_Variadic):
    fn = staticmethod(np.maximum)

    def compute(self, *inputs):
        dt, r = self.reduce(inputs)
        return as_dtype(r, dt)


@kernel("Min")
class Min(_Variadic):
    fn = staticmethod(np.minimum)

    def compute(self, *inputs):
        dt, r = self.reduce(inputs)
        return as_dtype(r, dt)


@kernel("Sum")
class Sum(_Variadic):
    fn = staticmethod(np.add)

    def compute(self, *inputs):
        dt, r = self.reduce(inputs)
        return as_dtype(r, dt)


@kernel("Mean")
class Mean(_Variadic):
    fn = staticmethod(np.add)

    def compute(self, *inputs):
        n = sum(x is not None for x in inputs)
        dt, r = self.reduce(inputs)
        return as_dtype(r / n, dt)


def _round_half_even(x):
    return np.round(x)  # numpy rounds halves to even, as the spec requires


def _reciprocal(x):
    return 1.0 / x


_UNARY = {
    "Abs": np.abs, "Neg": np.negative, "Ceil": np.ceil, "Floor": np.floor, "Sqrt": np.sqrt,
    "Exp": np.exp, "Log": np.log, "Reciprocal": _reciprocal, "Sign": np.sign,
    "Round": _round_half_even, "Erf": special.erf,
    "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos,
    "Atan": np.arctan, "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh,
    "Acosh": np.arccosh, "Atanh": np.arctanh,
}
# Ops that are exact on integers and must not go through floating point.
_INT_SAFE = {"Abs", "Neg", "Sign", "Ceil", "Floor", "Round"}


@kernel(list(_UNARY))
class Unary(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.name = node.op_type
        self.fn = _UNARY[self.name]
        dts = declared_dtypes(node)
        dt = dts[0] if dts else None
        if dt is not None and (dt in _NATIVE_FLOATS or (dt.kind in "iu" and self.name in _INT_SAFE)) \
                and keeps_dtype(self.fn, dt):
            self.compute = direct(self.fn, node)

    def compute(self, x):
        dt = x.dtype
        if dt.kind in "iub" and self.name in _INT_SAFE:
            return as_dtype(self.fn(x), dt)
        if dt.kind in "iu":  # e.g. Reciprocal/Erf on ints: compute in double, truncate
            return as_dtype(self.fn(x.astype(np.float64)), dt)
        return as_dtype(self.fn(upcast(x)), dt)


@kernel("IsNaN")
class IsNaN(Kernel):
    def compute(self, x):
        if not is_float(x.dtype):
            return np.zeros(x.shape, dtype=bool)
        return as_dtype(np.isnan(upcast(x)), np.dtype(bool))


@kernel("IsInf")
class IsInf(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.neg = bool(self.attr("detect_negative", 1))
        self.pos = bool(self.attr("detect_positive", 1))

    def compute(self, x):
        if not is_float(x.dtype):
            return np.zeros(x.shape, dtype=bool)
        v = upcast(x)
        r = np.zeros(x.shape, dtype=bool)
        if self.pos:
            r |= np.isposinf(v)
        if self.neg:
            r |= np.isneginf(v)
        return r


@kernel("Clip")
class Clip(Kernel):
    """Clip-1/6: `min`/`max` attributes; Clip-11+: optional scalar inputs."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lo_attr = self.attr("min")
        self.hi_attr = self.attr("max")

    def compute(self, x, lo=None, hi=None):
        dt = x.dtype
        if self.node.since_version < 11:
            lo, hi = self.lo_attr, self.hi_attr
        v = upcast(x)
        # max then min: when min > max every value becomes max, as the spec says
        if lo is not None and np.size(lo):
            v = np.maximum(v, np.asarray(lo).astype(v.dtype).reshape(()))
        if hi is not None and np.size(hi):
            v = np.minimum(v, np.asarray(hi).astype(v.dtype).reshape(()))
        return as_dtype(v, dt) if v is not x else x.copy()


@kernel("Where")
class Where(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        dts = declared_dtypes(node)
        if (len(dts) == 3 and dts[0] == np.dtype(bool) and dts[1] is not None and dts[1] == dts[2]
                and dts[1] != object):
            self.compute = np.where   # always an ndarray, of x's (= y's) dtype

    def compute(self, cond, x, y):
        return as_dtype(np.where(cond.astype(bool, copy=False), x, y), x.dtype)
