"""Geometry helpers shared by the convolution, pooling, quantized and variant conv kernels: the
accumulation dtype, spatial padding, strided window views of a padded input, and the im2col
gather indices (with the thin conv's per-tap offsets derived from them)."""
from __future__ import annotations

import functools
import math

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


@functools.lru_cache(maxsize=256)
def _tap_offsets(spatial: tuple, ks: tuple, strides: tuple, dilations: tuple, begin: tuple,
                 out_shape: tuple) -> np.ndarray:
    """(prod(ks), prod(out)): per kernel tap and output position, the offset read within one
    channel's plane, -1 in the padding (the thin conv's gather: `conv_thin.ThinConv`)."""
    idx = _im2col_index((1,) + tuple(spatial), ks, strides, dilations, begin, out_shape)
    offs = np.where(idx == math.prod(spatial), -1, idx).astype(np.int64)
    offs.flags.writeable = False
    return offs


@functools.lru_cache(maxsize=256)
def _im2col_index(in_shape: tuple, ks: tuple, strides: tuple, dilations: tuple, begin: tuple,
                  out_shape: tuple) -> np.ndarray:
    """Flat indices (C * prod(ks), prod(out)) into one image x (C, *spatial) followed by a zero
    (index C * prod(spatial)) that every padded position reads."""
    c, spatial = in_shape[0], in_shape[1:]
    nd = len(ks)
    size = math.prod(spatial)
    # Per axis: input coordinate of (kernel offset, output position), and whether it is inside.
    coords = [np.arange(ks[i])[:, None] * dilations[i] + np.arange(out_shape[i])[None, :] * strides[i]
              - begin[i] for i in range(nd)]
    pos = np.zeros((1,) * (2 * nd), dtype=np.int64)
    inside = np.ones((1,) * (2 * nd), dtype=bool)
    stride = 1
    for i in reversed(range(nd)):
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = ks[i], out_shape[i]
        ci = coords[i].reshape(shape)
        inside = inside & (ci >= 0) & (ci < spatial[i])
        pos = pos + ci * stride
        stride *= spatial[i]
    pos = np.where(inside, pos, -1)   # (*ks, *out)
    idx = pos[None] + (np.arange(c) * size).reshape((c,) + (1,) * (2 * nd))
    idx = np.where(pos[None] < 0, c * size, idx)
    idx = idx.reshape(c * math.prod(ks), math.prod(out_shape))
    idx.flags.writeable = False
    return idx
