"""Scale / zero-point choice and weight quantization (per tensor or per channel).

Ranges always include 0 (so zero padding and ReLU's zero are exact). Symmetric ranges use the
restricted integer range (-127..127 for int8) so that the zero point is 0 for int8 and 128 for
uint8, as integer kernels expect of weights; `reduce_range` uses 7 bits (the range of CPUs whose
u8*s8 instructions saturate on 16-bit pair sums).
"""
from __future__ import annotations

import numpy as np

from .quant_types import QuantType


def qrange(qtype: QuantType, reduce_range: bool = False, symmetric: bool = False) -> tuple[int, int]:
    """The integer range used for `qtype`."""
    if qtype is QuantType.QInt8:
        if reduce_range:
            return (-64, 64)
        return (-127, 127) if symmetric else (-128, 127)
    if reduce_range:
        return (0, 127)
    return (1, 255) if symmetric else (0, 255)


def scale_zero_point(rmin, rmax, qtype: QuantType, symmetric: bool = False,
                     reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (qtype) mapping [rmin, rmax] (scalars or per-channel arrays)
    onto the integer range."""
    rmin = np.minimum(np.asarray(rmin, np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, np.float64), 0.0)
    qmin, qmax = qrange(qtype, reduce_range, symmetric)
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / float(qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)       # an all-zero tensor: any scale is exact
    if symmetric:
        zp = np.full(scale.shape, (qmin + qmax) // 2, np.float64) if scale.ndim else np.float64((qmin + qmax) // 2)
    else:
        zp = np.clip(np.rint(qmin - rmin / scale), qmin, qmax)
    return np.asarray(scale, np.float32), np.asarray(zp).astype(qtype.np_dtype)


def quantize_array(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, qtype: QuantType,
                   axis: int | None = None) -> np.ndarray:
    """round(x / scale) + zp saturated, with per-channel parameters along `axis`."""
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp, np.float64)
    if axis is not None and s.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    info = np.iinfo(qtype.np_dtype)
    q = np.rint(x.astype(np.float32) / s).astype(np.float64) + z
    return np.clip(q, info.min, info.max).astype(qtype.np_dtype)


def quantize_weight(w: np.ndarray, qtype: QuantType, per_channel: bool = False, axis: int = 0,
                    reduce_range: bool = False, symmetric: bool | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantized weight, scale, zero point); per channel along `axis` gives 1-D parameters.
    Weights are symmetric by default for int8 (zero point 0), asymmetric for uint8."""
    if symmetric is None:
        symmetric = qtype is QuantType.QInt8
    w = np.asarray(w, np.float32)
    if per_channel and w.ndim >= 1:
        axis = axis % w.ndim
        other = tuple(i for i in range(w.ndim) if i != axis)
        rmin, rmax = (w.min(axis=other), w.max(axis=other)) if w.size else (0.0, 0.0)
        scale, zp = scale_zero_point(rmin, rmax, qtype, symmetric, reduce_range)
        return quantize_array(w, scale, zp, qtype, axis), scale.reshape(-1), zp.reshape(-1)
    rmin, rmax = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    scale, zp = scale_zero_point(rmin, rmax, qtype, symmetric, reduce_range)
    return quantize_array(w, scale, zp, qtype), scale.reshape(()), zp.reshape(())


def quantize_bias(bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias in the accumulator's scale (input_scale * weight_scale), zero point 0."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(np.asarray(bias, np.float64) / scale), -(2 ** 31), 2 ** 31 - 1)
    return q.astype(np.int32), scale
