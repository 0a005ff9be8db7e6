"""Normalizations: BatchNormalization (all versions), Instance/Layer/Group/RMS normalization,
LRN, LpNormalization, MeanVarianceNormalization.

Statistics are accumulated in float32 (float64 for double inputs), as the specs' stash_type
requires, and results are cast back to the input's dtype.
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import LRNAttributes, NormAttributes, int_attr, ints_attr, invalid
from ep_cpu.kernels.conv import compute_dtype
from ep_cpu.registry import kernel


def _out_dtype(k: Kernel, index: int, default) -> np.dtype:
    """Declared dtype of output `index` (from shape inference), else `default`."""
    dts = k.node.output_dtypes
    if index < len(dts) and dts[index] is not None:
        return dts[index]
    return np.dtype(default)


def stash_dtype(stash_type: int, x: np.ndarray) -> np.dtype:
    """Stage-one precision: float32 (stash_type=1) unless the input or stash_type is double."""
    if x.dtype == np.float64 or stash_type == 11:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


@kernel("BatchNormalization")
class BatchNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        v = node.since_version
        self.eps = NormAttributes.from_node(node).epsilon
        self.momentum = float(self.attr("momentum"))
        self.spatial = bool(self.attr("spatial")) if v < 9 else True
        n_out = sum(1 for o in node.outputs if o)
        if v >= 14:
            self.training = bool(self.attr("training_mode"))
        elif v < 7:
            self.training = not self.attr("is_test") and n_out > 1
        else:
            self.training = n_out > 1

    def compute(self, x, scale, b, mean, var):
        cdt = compute_dtype(x.dtype)
        xf = x.astype(cdt, copy=False)
        rank = x.ndim
        c = x.shape[1] if rank > 1 else x.shape[0]

        def shaped(p):
            p = np.asarray(p).astype(cdt, copy=False)
            if p.ndim > 1 or (not self.spatial and p.size == int(np.prod(x.shape[1:]))):
                return p.reshape((1,) + tuple(x.shape[1:]))  # per-activation (spatial=0)
            return p.reshape((1, c) + (1,) * (rank - 2))

        if not self.training:
            a = shaped(scale) / np.sqrt(shaped(var) + cdt.type(self.eps))
            y = xf * a + (shaped(b) - shaped(mean) * a)
            return y.astype(x.dtype, copy=False)
        axes = (0,) if not self.spatial else (0,) + tuple(range(2, rank))
        cur_mean = xf.mean(axis=axes, keepdims=True)
        cur_var = ((xf - cur_mean) ** 2).mean(axis=axes, keepdims=True)
        y = (xf - cur_mean) / np.sqrt(cur_var + cdt.type(self.eps)) * shaped(scale) + shaped(b)
        sdt = mean.dtype
        m_flat = cur_mean.reshape(np.shape(mean))
        v_flat = cur_var.reshape(np.shape(var))
        run_mean = (mean.astype(cdt) * self.momentum + m_flat * (1 - self.momentum)).astype(sdt)
        run_var = (var.astype(cdt) * self.momentum + v_flat * (1 - self.momentum)).astype(sdt)
        outs = [y.astype(x.dtype, copy=False), run_mean, run_var]
        if self.node.since_version < 14:
            outs += [m_flat.astype(sdt), v_flat.astype(sdt)]
        return tuple(outs[:len(self.node.outputs)])


@kernel("InstanceNormalization")
class InstanceNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def compute(self, x, scale, b):
        cdt = compute_dtype(x.dtype)
        xf = x.astype(cdt, copy=False)
        axes = tuple(range(2, x.ndim))
        mean = xf.mean(axis=axes, keepdims=True)
        var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        y = (xf - mean) / np.sqrt(var + cdt.type(self.norm.epsilon))
        y = y * scale.astype(cdt).reshape(bshape) + b.astype(cdt).reshape(bshape)
        return y.astype(x.dtype, copy=False)


@kernel("LayerNormalization")
class LayerNormalization(Kernel):
    """Also onnxruntime's ONNX-domain LayerNormalization below opset 17 (no ONNX schema: the
    defaults of NormAttributes apply)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def compute(self, x, scale, b=None):
        sdt = stash_dtype(self.norm.stash_type, x)
        axis = self.norm.axis_for(x.ndim)
        axes = tuple(range(axis, x.ndim))
        xf = x.astype(sdt, copy=False)
        mean = xf.mean(axis=axes, keepdims=True)
        d = xf - mean
        var = (d * d).mean(axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt(var + sdt.type(self.norm.epsilon))
        normalized = (d * inv).astype(x.dtype, copy=False)
        y = normalized * scale
        if b is not None:
            y = y + b
        outs = [np.asarray(y, dtype=x.dtype)]
        n_out = len(self.node.outputs)
        if n_out > 1:
            udt = _out_dtype(self, 1, np.float32)
            outs.append(mean.astype(udt))
        if n_out > 2:
            outs.append(inv.astype(_out_dtype(self, 2, np.float32)))
        return tuple(outs) if n_out > 1 else outs[0]


@kernel("GroupNormalization")
class GroupNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def compute(self, x, scale, bias):
        sdt = stash_dtype(self.norm.stash_type, x)
        g = self.norm.num_groups
        n, c = x.shape[:2]
        xg = x.astype(sdt, copy=False).reshape(n, g, -1)
        mean = xg.mean(axis=2, keepdims=True)
        var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
        normalized = ((xg - mean) / np.sqrt(var + sdt.type(self.norm.epsilon)))
        normalized = normalized.reshape(x.shape).astype(x.dtype, copy=False)
        if scale.size == g and g != c:  # opset 18: one scale/bias per group
            scale = np.repeat(scale, c // g)
            bias = np.repeat(bias, c // g)
        bshape = (1, c) + (1,) * (x.ndim - 2)
        y = normalized * scale.reshape(bshape) + bias.reshape(bshape)
        return np.asarray(y, dtype=x.dtype)


@kernel("RMSNormalization")
class RMSNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def compute(self, x, scale):
        normalized, _ = rms_normalize(x, self.norm)
        return np.asarray(normalized * scale, dtype=scale.dtype)


def rms_normalize(x: np.ndarray, norm: NormAttributes) -> tuple[np.ndarray, np.ndarray]:
    """(x / rms in x's dtype, rms) with rms = sqrt(mean(x^2 over the axes from `axis`) +
    epsilon) in the stash dtype: RMSNormalization and onnxruntime's SimplifiedLayerNormalization."""
    sdt = stash_dtype(norm.stash_type, x)
    axis = norm.axis_for(x.ndim)
    xf = x.astype(sdt, copy=False)
    ms = (xf * xf).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
    rms = np.sqrt(ms + sdt.type(norm.epsilon))
    return (xf / rms).astype(x.dtype, copy=False), rms


@kernel("LRN")
class LRN(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lrn = LRNAttributes.from_node(node)

    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        size, alpha, beta, bias = self.lrn.size, self.lrn.alpha, self.lrn.beta, self.lrn.bias
        xf = x.astype(cdt, copy=False)
        sq = xf * xf
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        c = x.shape[1]
        padded = np.zeros((x.shape[0], c + lo + hi) + x.shape[2:], dtype=cdt)
        padded[:, lo:lo + c] = sq
        ssum = np.zeros_like(sq)
        for k in range(size):  # window of `size` channels ending hi past the current one
            ssum += padded[:, k:k + c]
        y = xf / (bias + alpha / size * ssum) ** beta
        return y.astype(x.dtype, copy=False)


@kernel("LpNormalization")
class LpNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.p = int_attr(node, "p")
        if self.p not in (1, 2):
            raise invalid(node, f"p must be 1 or 2, got {self.p}")
        self.axis = int_attr(node, "axis")

    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        p, axis = self.p, self.axis
        xf = x.astype(cdt, copy=False)
        if p == 1:
            norm = np.abs(xf).sum(axis=axis, keepdims=True)
        else:
            norm = np.sqrt((xf * xf).sum(axis=axis, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(norm == 0, 0, xf / np.where(norm == 0, 1, norm))
        return y.astype(x.dtype, copy=False)


@kernel("MeanVarianceNormalization")
class MeanVarianceNormalization(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = ints_attr(node, "axes")

    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        axes = self.axes
        xf = x.astype(cdt, copy=False)
        mean = xf.mean(axis=axes, keepdims=True)
        var = np.maximum((xf * xf).mean(axis=axes, keepdims=True) - mean * mean, 0)
        y = (xf - mean) / (np.sqrt(var) + cdt.type(1e-9))
        return y.astype(x.dtype, copy=False)
