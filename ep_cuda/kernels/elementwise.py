"""Element-wise ops (kernels_cu/elementwise.cu): arithmetic, comparison, logical, bitwise, math
functions, Where, Clip, Cast/CastLike, variadic Sum/Mean/Max/Min."""
from __future__ import annotations

from typing import Any

import numpy as np

from ep_core.types import np_dtype

from .. import loader
from ..launch import (ALL_NUMERIC, FLOATS, CudaKernel, broadcast_strides, collapse,
                      contiguous_strides, ctype, elem_strides, empty, f32, host_scalar, i64, launch,
                      storage, strided, STORAGE)
from ..registry import kernel

F32, F16, I32, I64, BOOL = np.float32, np.float16, np.int32, np.int64, np.bool_
U8, U32, U64 = np.uint8, np.uint32, np.uint64
NUM = (F32, F16, I32, I64)

# op -> (code in elementwise.cu, since, T dtypes, output dtype or None for T)
BINARY: dict[str, tuple[int, int, tuple, Any]] = {
    "Add": (0, 7, NUM, None), "Sub": (1, 7, NUM, None), "Mul": (2, 7, NUM, None),
    "Div": (3, 7, NUM, None),
    "Equal": (9, 7, NUM + (BOOL,), BOOL), "Less": (10, 7, NUM, BOOL), "Greater": (11, 7, NUM, BOOL),
    "LessOrEqual": (12, 12, NUM, BOOL), "GreaterOrEqual": (13, 12, NUM, BOOL),
    "And": (14, 7, (BOOL,), BOOL), "Or": (15, 7, (BOOL,), BOOL), "Xor": (16, 7, (BOOL,), BOOL),
    "BitwiseAnd": (17, 18, (I32, I64, U8), None), "BitwiseOr": (18, 18, (I32, I64, U8), None),
    "BitwiseXor": (19, 18, (I32, I64, U8), None),
}
B_POW, B_MOD, B_FMOD, B_MAX, B_MIN, B_ADD, B_SHL, B_SHR = 4, 5, 6, 7, 8, 0, 20, 21
POW_EXPONENT = (F32, F16, I32, I64)
SHIFT_TYPES = (U8, U32, U64)

# op -> (code, since, T dtypes, output dtype or None)
UNARY: dict[str, tuple[int, int, tuple, Any]] = {
    "Abs": (0, 6, NUM, None), "Neg": (1, 6, NUM, None), "Exp": (2, 6, FLOATS, None),
    "Log": (3, 6, FLOATS, None), "Sqrt": (4, 6, FLOATS, None), "Reciprocal": (5, 6, FLOATS, None),
    "Floor": (6, 6, FLOATS, None), "Ceil": (7, 6, FLOATS, None), "Round": (8, 11, FLOATS, None),
    "Sign": (9, 9, NUM, None), "Sin": (10, 7, FLOATS, None), "Cos": (11, 7, FLOATS, None),
    "Tan": (12, 7, FLOATS, None), "Asin": (13, 7, FLOATS, None), "Acos": (14, 7, FLOATS, None),
    "Atan": (15, 7, FLOATS, None), "Sinh": (16, 9, FLOATS, None), "Cosh": (17, 9, FLOATS, None),
    "Asinh": (18, 9, FLOATS, None), "Acosh": (19, 9, FLOATS, None), "Atanh": (20, 9, FLOATS, None),
    "Not": (21, 1, (BOOL,), None), "BitwiseNot": (22, 18, (I32, I64, U8), None),
    "IsNaN": (23, 9, FLOATS, BOOL), "IsInf": (24, 10, FLOATS, BOOL),
}
U_CLIP, U_SCALE = 25, 26
CAST_TYPES = (F32, F16, np.float64, np.int8, U8, I32, I64, BOOL)


def _e(name: str, *args) -> str:
    return f"{name}<{', '.join(str(a) for a in args)}>"


def _declare() -> None:
    exprs = []
    for code, _, types, out in BINARY.values():
        for t in types:
            o = out or t
            exprs.append(_e("binary_k", code, ctype(t), ctype(t), ctype(o)))
    for code in (B_MAX, B_MIN):
        exprs += [_e("binary_k", code, ctype(t), ctype(t), ctype(t)) for t in NUM]
    exprs += [_e("binary_k", c, ctype(t), ctype(t), ctype(t)) for c in (B_MOD, B_FMOD) for t in NUM]
    exprs += [_e("binary_k", B_POW, ctype(t), ctype(e), ctype(t)) for t in FLOATS for e in POW_EXPONENT]
    exprs += [_e("binary_k", c, ctype(t), ctype(t), ctype(t)) for c in (B_SHL, B_SHR) for t in SHIFT_TYPES]
    for code, _, types, out in UNARY.values():
        exprs += [_e("unary_k", code, ctype(t), ctype(out or t)) for t in types]
    exprs += [_e("unary_k", c, ctype(t), ctype(t)) for c in (U_CLIP, U_SCALE) for t in FLOATS]
    exprs += [_e("cast_k", ctype(s), ctype(d)) for s in CAST_TYPES for d in CAST_TYPES if s != d]
    exprs += [_e("where_k", t) for t in STORAGE.values()]
    loader.declare("elementwise", exprs)


_declare()


# ---------------------------------------------------------------------------- launch helpers
def binary(code: int, a: Any, b: Any, out_dtype=None, out: Any = None) -> Any:
    """y = a OP b with numpy broadcasting (a, b any strides); returns a new contiguous array."""
    out_dtype = np.dtype(out_dtype or a.dtype)
    shape = np.broadcast_shapes(a.shape, b.shape)
    y = empty(shape, out_dtype) if out is None else out
    if y.size == 0:
        return y
    sts = [broadcast_strides(a.shape, elem_strides(a), shape),
           broadcast_strides(b.shape, elem_strides(b), shape), list(elem_strides(y))]
    cshape, sts = collapse(shape, sts)
    launch("elementwise", _e("binary_k", code, ctype(a.dtype), ctype(b.dtype), ctype(out_dtype)),
           y.size, (a, b, y, i64(y.size), strided(cshape, sts)))
    return y


def unary(code: int, x: Any, out_dtype=None, p0: float = 0.0, p1: float = 0.0,
          out: Any = None) -> Any:
    """y = OP(x) elementwise (x any strides); a new contiguous array, or `out` (x allowed)."""
    out_dtype = np.dtype(out_dtype or x.dtype)
    y = empty(x.shape, out_dtype) if out is None else out
    if y.size == 0:
        return y
    cshape, sts = collapse(x.shape, [elem_strides(x), list(elem_strides(y))])
    launch("elementwise", _e("unary_k", code, ctype(x.dtype), ctype(out_dtype)), y.size,
           (x, y, i64(y.size), f32(p0), f32(p1), strided(cshape, sts)))
    return y


def cast(x: Any, dtype) -> Any:
    """x converted to dtype by our cast kernel (x itself when the dtype already matches)."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    y = empty(x.shape, dtype)
    if y.size == 0:
        return y
    cshape, sts = collapse(x.shape, [elem_strides(x), contiguous_strides(x.shape)])
    launch("elementwise", _e("cast_k", ctype(x.dtype), ctype(dtype)), y.size,
           (x, y, i64(y.size), strided(cshape, sts)))
    return y


def where(c: Any, a: Any, b: Any) -> Any:
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    y = empty(shape, a.dtype)
    if y.size == 0:
        return y
    sts = [broadcast_strides(v.shape, elem_strides(v), shape) for v in (c, a, b)]
    cshape, sts = collapse(shape, sts + [contiguous_strides(shape)])
    launch("elementwise", _e("where_k", storage(a.dtype)), y.size,
           (c, a, b, y, i64(y.size), strided(cshape, sts)))
    return y


# ---------------------------------------------------------------------------- kernels
class Binary(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        code, _, _, out = BINARY[node.op_type]
        self.code, self.out = code, out

    def forward(self, a, b):
        return binary(self.code, a, b, self.out or a.dtype)


for _name, (_code, _since, _types, _out) in BINARY.items():
    kernel(_name, since=_since, types={"T": _types})(Binary)


@kernel("Pow", since=7, types={"T": FLOATS, "T1": POW_EXPONENT})
class Pow(CudaKernel):
    def forward(self, a, b):
        return binary(B_POW, a, b, a.dtype)


@kernel("Mod", since=10, types={"T": NUM})
class Mod(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.code = B_FMOD if self.attr("fmod", 0) else B_MOD

    def forward(self, a, b):
        return binary(self.code, a, b, a.dtype)


@kernel("BitShift", since=11, types={"T": SHIFT_TYPES})
class BitShift(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.code = B_SHL if self.attr("direction", "LEFT") == "LEFT" else B_SHR

    def forward(self, a, b):
        return binary(self.code, a, b, a.dtype)


@kernel(["Max", "Min"], since=6, types={"T": NUM})
@kernel(["Sum", "Mean"], since=6, types={"T": FLOATS})
class Variadic(CudaKernel):
    """Folds the inputs pairwise with broadcasting; Mean scales the sum by 1/n afterwards."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.code = {"Max": B_MAX, "Min": B_MIN, "Sum": B_ADD, "Mean": B_ADD}[node.op_type]

    def forward(self, *xs):
        xs = [x for x in xs if x is not None]
        acc = xs[0]
        for x in xs[1:]:
            acc = binary(self.code, acc, x, acc.dtype)
        if self.node.op_type == "Mean" and len(xs) > 1:
            acc = unary(U_SCALE, acc, acc.dtype, 1.0 / len(xs))
        return acc


class Unary(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        code, _, _, out = UNARY[node.op_type]
        self.code, self.out = code, out
        # IsInf's flags travel as p0/p1
        self.p0 = float(self.attr("detect_negative", 1))
        self.p1 = float(self.attr("detect_positive", 1))

    def forward(self, x):
        return unary(self.code, x, self.out or x.dtype, self.p0, self.p1)


for _name, (_code, _since, _types, _out) in UNARY.items():
    key = "T1" if _name in ("IsNaN", "IsInf") else "T"
    kernel(_name, since=_since, types={key: _types})(Unary)


@kernel("Clip", since=6, types={"T": FLOATS}, host_inputs=(1, 2))
class Clip(CudaKernel):
    """min/max are attributes before opset 11 and host-resident scalar inputs from 11 on."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lo = float(self.attr("min", -np.inf))
        self.hi = float(self.attr("max", np.inf))

    def forward(self, x, lo=None, hi=None):
        if self.node.since_version >= 11:
            low = -np.inf if lo is None else float(host_scalar(lo))
            high = np.inf if hi is None else float(host_scalar(hi))
        else:
            low, high = self.lo, self.hi
        if x.dtype == np.float16:  # compare against the fp16-rounded bounds, as the CPU does
            low, high = float(np.float16(low)), float(np.float16(high))
        return unary(U_CLIP, x, x.dtype, low, high)


@kernel("Where", since=9, types={"T": ALL_NUMERIC})
class Where(CudaKernel):
    def forward(self, c, a, b):
        return where(c, a, b)


@kernel("Cast", since=6, types={"T1": CAST_TYPES, "T2": CAST_TYPES})
class Cast(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.to = np_dtype(int(self.attr("to")))

    def forward(self, x):
        return cast(x, self.to)  # the input itself when the dtype already matches

    @classmethod
    def supports(cls, node) -> bool:
        try:
            return np_dtype(int(node.attrs.get("to"))) in {np.dtype(t) for t in CAST_TYPES}
        except Exception:
            return False


@kernel("CastLike", since=15, types={"T1": CAST_TYPES, "T2": CAST_TYPES})
class CastLike(CudaKernel):
    def forward(self, x, like):
        return cast(x, like.dtype)

