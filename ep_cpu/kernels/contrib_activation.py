"""onnxruntime's `com.microsoft` element-wise contrib ops: BiasGelu, QuickGelu, BiasAdd,
BiasSplitGelu, BiasSoftmax.

Gelu and FastGelu of that domain are the kernels of `fused.py` (registered there for both
domains: the semantics are the same). Half-precision inputs compute in float32.
"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_cpu.gemm_epilogue import sigmoid
from ep_cpu.registry import kernel

from .contrib_common import MS
from .conv import compute_dtype
from .fused import _gelu


def _check_bias(node, x: np.ndarray, bias: np.ndarray) -> None:
    if bias.ndim != 1 or x.ndim == 0 or bias.shape[0] != x.shape[-1]:
        raise InvalidArgument(f"{node.describe()}: bias must be 1-D of the input's last dim "
                              f"{x.shape[-1:]}, got shape {bias.shape}")


@kernel("BiasGelu", domain=MS)
class BiasGelu(Kernel):
    """Gelu(A + B), B a 1-D bias over the last axis."""

    def compute(self, a, b):
        _check_bias(self.node, a, b)
        cdt = compute_dtype(a.dtype)
        return _gelu(np.add(a, b, dtype=cdt)).astype(a.dtype, copy=False)


@kernel("QuickGelu", domain=MS)
class QuickGelu(Kernel):
    """x * sigmoid(alpha * x), alpha defaulting to 1.702."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.702))

    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        xf = x.astype(cdt)
        s = sigmoid(xf * cdt.type(self.alpha))
        s *= xf
        return s.astype(x.dtype, copy=False)


@kernel("BiasAdd", domain=MS)
class BiasAdd(Kernel):
    """X + bias + skip; X and skip (N, S, C), bias (C,)."""

    def compute(self, x, bias, skip):
        _check_bias(self.node, x, bias)
        if skip.shape != x.shape:
            raise InvalidArgument(f"{self.node.describe()}: skip shape {skip.shape} != input {x.shape}")
        cdt = compute_dtype(x.dtype)
        y = np.add(x, bias, dtype=cdt)
        y += skip
        return y.astype(x.dtype, copy=False)


@kernel("BiasSplitGelu", domain=MS)
class BiasSplitGelu(Kernel):
    """(X + bias) split in halves along the last axis: left * Gelu(right)."""

    def compute(self, x, bias):
        _check_bias(self.node, x, bias)
        if x.shape[-1] % 2:
            raise InvalidArgument(f"{self.node.describe()}: last dim {x.shape[-1]} is odd")
        cdt = compute_dtype(x.dtype)
        s = np.add(x, bias, dtype=cdt)
        half = s.shape[-1] // 2
        y = _gelu(s[..., half:])
        y *= s[..., :half]
        return y.astype(x.dtype, copy=False)


@kernel("BiasSoftmax", domain=MS)
class BiasSoftmax(Kernel):
    """softmax(data + bias) jointly over the axes from `axis` on; bias broadcasts numpy-style
    (over the leading axes, or the inner ones when `is_inner_broadcast`)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis", 1))
        self.inner_broadcast = bool(self.attr("is_inner_broadcast", 0))

    def compute(self, data, bias):
        cdt = compute_dtype(data.dtype)
        axis = self.axis + data.ndim if self.axis < 0 else self.axis
        if bias.ndim < data.ndim:  # aligned on the leading axes (is_inner_broadcast) or trailing
            lead = data.ndim - bias.ndim
            if self.inner_broadcast:
                bias = bias.reshape(bias.shape[:1] + (1,) * lead + bias.shape[1:])
        try:
            s = np.add(data, bias, dtype=cdt)
        except ValueError:
            raise InvalidArgument(f"{self.node.describe()}: bias {bias.shape} does not broadcast "
                                  f"to data {data.shape}") from None
        flat = s.reshape(s.shape[:axis] + (-1,))
        flat -= flat.max(axis=-1, keepdims=True)
        np.exp(flat, out=flat)
        flat /= flat.sum(axis=-1, keepdims=True)
        return flat.reshape(data.shape).astype(data.dtype, copy=False)
