"""Geometry helpers shared by the convolution, pooling, quantized and variant conv kernels: the
accumulation dtype, spatial padding, and strided window views of a padded input."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulation dtype: float64 stays, everything narrower computes in float32."""
    if dtype is _F32:   # the usual case, without a dtype construction (every conv call asks)
        return _F32
    return _F64 if np.dtype(dtype) == _F64 else _F32


def pad_spatial(x: np.ndarray, begin, end, value=0) -> np.ndarray:
    """Pad the trailing len(begin) axes (negative pads crop)."""
    if not any(begin) and not any(end):
        return x
    nd = len(begin)
    lead = x.ndim - nd
    src, dst, shape = [slice(None)] * lead, [slice(None)] * lead, list(x.shape[:lead])
    for i in range(nd):
        n = x.shape[lead + i]
        size = n + begin[i] + end[i]
        shape.append(max(size, 0))
        s0 = max(0, -begin[i])
        s1 = n - max(0, -end[i])
        src.append(slice(s0, max(s1, s0)))
        d0 = max(0, begin[i])
        dst.append(slice(d0, d0 + max(s1 - s0, 0)))
    out = np.full(shape, value, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


def window_view(xp: np.ndarray, kernel_shape, strides, dilations, out_shape) -> np.ndarray:
    """Read-only view (..., *out_shape, *kernel_shape) of the windows of the padded input."""
    nd = len(kernel_shape)
    lead = xp.ndim - nd
    st = xp.strides
    shape = tuple(xp.shape[:lead]) + tuple(out_shape) + tuple(kernel_shape)
    strides_ = (tuple(st[:lead]) + tuple(st[lead + i] * strides[i] for i in range(nd))
                + tuple(st[lead + i] * dilations[i] for i in range(nd)))
    return as_strided(xp, shape=shape, strides=strides_, writeable=False)
