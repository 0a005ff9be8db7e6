"""Type conversion: Cast, CastLike, BitCast (float8 saturation, float8e8m0 rounding, 4/2-bit ints, strings)."""
from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
from onnx import TensorProto

from ep_core.kernel import Kernel
from ep_core.types import np_dtype
from ep_cpu.registry import kernel

_STRING = np.dtype(object)
# float8 types whose conversion obeys the `saturate` attribute
_FLOAT8 = {np.dtype(t) for t in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz,
                                  ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)}
_E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
# numpy's own numeric types (ml_dtypes' float8/bfloat16/int4 also report kind 'f'/'i' but have
# their own saturation and rounding rules)
_NUMPY_NUMERIC = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                         np.int64, np.uint8, np.uint16, np.uint32, np.uint64)}


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt.name.startswith(("bfloat", "float"))


def _target_dtype(to) -> np.dtype:
    """`to` is an element-type enum, or a type name such as "FLOAT" in Cast-1."""
    if isinstance(to, str):
        to = getattr(TensorProto, to.upper())
    return np_dtype(int(to))


def _parse_string(s, dt: np.dtype):
    """One string element -> Python number for dtype `dt` ("INF", "-inf", "NaN", "1e-5" accepted)."""
    if isinstance(s, bytes):
        s = s.decode("utf-8")
    s = str(s).strip()
    if dt.kind in "iu":
        try:
            return int(s)  # exact for big int64 values
        except ValueError:
            return int(float(s))
    if dt.kind == "b":
        low = s.lower()
        if low in ("true", "false"):
            return low == "true"
        return float(s) != 0.0
    return float(s)


def _from_string(x: np.ndarray, dt: np.dtype) -> np.ndarray:
    flat = [_parse_string(s, dt) for s in x.reshape(-1)]
    if dt.kind in "iub":
        inter = np.array(flat, dtype=np.int64 if dt.kind != "b" else bool).reshape(x.shape)
        if dt.kind == "u":
            inter = np.array([v & ((1 << 64) - 1) for v in flat], dtype=np.uint64).reshape(x.shape)
        return inter.astype(dt)
    return cast_array(np.array(flat, dtype=np.float64).reshape(x.shape), dt)


def _format_number(v) -> str:
    """Number -> plain string; special floats spelled as ONNX expects (NaN, INF, -INF)."""
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if np.isnan(f):
        return "NaN"
    if np.isinf(f):
        return "INF" if f > 0 else "-INF"
    return str(v)  # shortest representation that round-trips in the source precision


def _to_string(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "V" or x.dtype.name.startswith(("bfloat", "float8", "float4", "int4",
                                                         "uint4", "int2", "uint2")):
        x = x.astype(np.float32) if _is_float(x.dtype) else x.astype(np.int64)
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for k, v in enumerate(x.reshape(-1)):
        flat[k] = _format_number(v)
    return out


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float -> float8e8m0 (a bare power-of-two exponent): the result's code is float32's exponent
    field, rounded by `round_mode` over the dropped mantissa bits."""
    f = np.ascontiguousarray(x.astype(np.float32) if x.dtype != np.float32 else x)
    bits = f.view(np.uint32)
    exp = ((bits >> 23) & 0xFF).astype(np.int32)
    frac = bits & 0x7FFFFF
    special = exp == 0xFF  # inf or nan
    if round_mode == "up":
        exp = exp + (frac != 0)
    elif round_mode == "nearest":
        exp = exp + (frac >= 0x400000)  # halfway rounds up
    elif round_mode != "down":
        raise ValueError(f"Cast: unknown round_mode '{round_mode}'")
    overflow = exp > 0xFE
    if saturate:
        exp = np.where(overflow, 0xFE, exp)
        is_inf = special & (frac == 0)
        exp = np.where(is_inf, 0xFE, np.where(special, 0xFF, exp))
    else:
        exp = np.where(overflow | special, 0xFF, exp)
        exp = np.where((f == 0), 0xFF, exp)  # zero is below the smallest power of two
    return exp.astype(np.uint8).view(_E8M0).reshape(x.shape)


def cast_array(x: np.ndarray, dt: np.dtype, saturate: bool = True,
               round_mode: str = "up") -> np.ndarray:
    """Convert `x` to numpy dtype `dt` following ONNX Cast semantics."""
    dt = np.dtype(dt)
    if x.dtype == dt:
        return x.copy()
    if dt == _STRING:
        return _to_string(x)
    if x.dtype == _STRING or x.dtype.kind in "US":
        return _from_string(x.astype(object), dt)
    # Out-of-range conversions are defined as wrap/inf/undefined: numpy's errors are off for the
    # whole run (and during constant folding), so no errstate here.
    if dt == _E8M0:
        src = x if _is_float(x.dtype) else x.astype(np.float64)
        return _to_e8m0(src.astype(np.float32), saturate, round_mode)
    if dt in _FLOAT8 and saturate:
        v = x.astype(np.float32) if x.dtype.itemsize < 4 or not _is_float(x.dtype) else x
        if x.dtype.kind in "iu" and x.dtype.itemsize >= 4:
            v = x.astype(np.float64)
        lim = float(ml_dtypes.finfo(dt).max)
        return np.clip(v, -lim, lim).astype(dt)  # inf -> +-max, nan stays nan
    if dt.kind == "b":
        src = x.astype(np.float32) if x.dtype.kind == "V" else x
        return (src != 0).reshape(x.shape) if src.dtype != bool else src.copy()
    if x.dtype.kind == "b" and dt.kind == "V":
        return x.astype(np.float32).astype(dt)
    return np.asarray(x.astype(dt))


class _CastBase(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.saturate = bool(self.attr("saturate", 1))
        self.round_mode = str(self.attr("round_mode", "up"))


@kernel("Cast")
class Cast(_CastBase):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.to = _target_dtype(self.attr("to"))
        dts = node.input_dtypes
        src = dts[0] if dts else None
        # numpy's own conversion between its native int/float types is ONNX's Cast: bind it.
        if src is not None and src in _NUMPY_NUMERIC and self.to in _NUMPY_NUMERIC and src != self.to:
            self.compute = functools.partial(np.ndarray.astype, dtype=self.to)

    def compute(self, x):
        return cast_array(x, self.to, self.saturate, self.round_mode)


@kernel("CastLike")
class CastLike(_CastBase):
    def compute(self, x, like):
        return cast_array(x, like.dtype, self.saturate, self.round_mode)


@kernel("BitCast")
class BitCast(Kernel):
    """Reinterpret bits; same width required. Sub-byte types hold one code per byte in numpy."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.to = _target_dtype(self.attr("to"))

    def compute(self, x):
        if _bit_width(x.dtype) != _bit_width(self.to):
            raise ValueError(f"BitCast: {x.dtype} and {self.to} differ in bit width")
        shape = x.shape
        x = np.ascontiguousarray(x)
        if self.to == bool:
            return (x.view(np.uint8) != 0).reshape(shape)  # any nonzero byte is true
        return x.view(self.to).reshape(shape).copy()


def _bit_width(dt: np.dtype) -> int:
    name = dt.name
    if name.startswith(("int4", "uint4", "float4")):
        return 4
    if name.startswith(("int2", "uint2")):
        return 2
    return dt.itemsize * 8
