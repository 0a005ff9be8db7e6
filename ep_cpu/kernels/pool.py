"""Pooling: AveragePool, MaxPool (+Indices), LpPool, Global*Pool, MaxUnpool, MaxRoiPool.

Windowed pools loop over the kernel offsets (a handful) and reduce strided views of the padded
input, so no Python loop touches individual pixels and no K-times window copy is made.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import PoolAttributes, invalid
from ep_cpu import depthwise_direct, depthwise_flat, jit_tier, pool_jit
from ep_cpu.gemm import _get_pool, get_num_threads
from ep_cpu.kernels.conv import compute_dtype, pad_spatial, window_view
from ep_cpu.kernels.tensor import bad_data, check_size, host_ints
from ep_cpu.registry import kernel


class _Pool(Kernel):
    """Shared attribute parsing for the windowed pools (once, at session build)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pool = PoolAttributes.from_node(node)
        self.ks = list(self.pool.kernel_shape)
        self.strides = list(self.pool.strides)
        self.dil = list(self.pool.dilations)

    def _geometry(self, x):
        return self.pool.geometry(x.shape[2:])

    def _offsets(self):
        return itertools.product(*[range(k) for k in self.ks])


def _axis_counts(n, o, k, s, d, b, lo, hi):
    """Per output position along one axis: how many kernel taps land in [lo, hi)."""
    pos = np.arange(o)[:, None] * s - b + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


@kernel("AveragePool")
class AveragePool(_Pool):
    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        begin, end, extra, out = self._geometry(x)
        xp = pad_spatial(x.astype(cdt, copy=False), begin, [e + x_ for e, x_ in zip(end, extra)])
        view = window_view(xp, self.ks, self.strides, self.dil, out)
        acc = np.zeros(x.shape[:2] + tuple(out), dtype=cdt)
        for idx in self._offsets():
            acc += view[(Ellipsis,) + idx]
        include = self.pool.count_include_pad
        count = np.ones((), dtype=cdt)
        for i, n in enumerate(x.shape[2:]):
            lo, hi = (-begin[i], n + end[i]) if include else (0, n)
            c = _axis_counts(n, out[i], self.ks[i], self.strides[i], self.dil[i], begin[i], lo, hi)
            count = np.multiply.outer(count, c.astype(cdt))
        acc /= np.maximum(count, 1)
        return acc.astype(x.dtype, copy=False)


@kernel("LpPool")
class LpPool(_Pool):
    def compute(self, x):
        cdt = compute_dtype(x.dtype)
        p = self.pool.p
        begin, end, extra, out = self._geometry(x)
        xp = pad_spatial(np.abs(x.astype(cdt)), begin, [e + x_ for e, x_ in zip(end, extra)])
        view = window_view(xp, self.ks, self.strides, self.dil, out)
        acc = np.zeros(x.shape[:2] + tuple(out), dtype=cdt)
        for idx in self._offsets():
            acc += view[(Ellipsis,) + idx] ** p
        return (acc ** (1.0 / p)).astype(x.dtype, copy=False)


# float32 2-D MaxPool without indices runs compiled: `ep_cpu.depthwise_flat` where the output
# keeps the input's width (stride 1) or its phase planes' (stride 2): ResNet-50's 3x3/2 on
# 64x112x112 231 -> 192 us, YOLO's 5x5/1 on 128x10x10 52 -> 41, on 256x20x20 230 -> 143; other
# 3- and 5-wide kernels and stride 2 `ep_cpu.depthwise_direct` (masked vectors from the input;
# 211 vs 407 us for ResNet's pool before the flat planes), else `ep_cpu.pool_jit` (phase planes)
COMPILED = True
FLAT = True   # the flat planes first (a switch for benchmarks and tests)


def _direct_pool(ks, strides, out) -> bool:
    return (depthwise_direct.available() and depthwise_direct.applies(strides, out)
            and (int(ks[-1]) in (3, 5) or int(strides[-1]) == 2))


def _compile_plane_pools() -> None:
    """Compile (or load) the flat and direct MaxPool kernels this CPU takes, on small maps, one
    and two threads (an `ep_cpu.jit_tier` build: a first run compiling them in line took 3 s
    of ResNet-50's cold first session)."""
    x = np.zeros((1, 16, 8, 8), np.float32)
    ks, dil, begin = (3, 3), (1, 1), (1, 1)
    for s in (1, 2):
        strides, out = (s, s), (8 // s, 8 // s)
        for threads in (1, 2):
            if depthwise_flat.available() and depthwise_flat.applies(x.shape, ks, strides, dil, begin, out):
                depthwise_flat.max_pool_2d(x, ks, strides, dil, begin, out, threads, _get_pool)
            if _direct_pool(ks, strides, out):
                depthwise_direct.max_pool_2d(x, ks, strides, dil, begin, out, threads, _get_pool)


@kernel("MaxPool")
class MaxPool(_Pool):
    def compute(self, x):
        begin, end, extra, out = self._geometry(x)
        want_idx = len(self.node.outputs) > 1 and bool(self.node.outputs[1])
        if (COMPILED and not want_idx and x.dtype == np.float32 and x.ndim == 4
                and min(begin) >= 0 and min(end) >= 0 and min(out) > 0):
            planes = ((depthwise_flat.available() or depthwise_direct.available())
                      and jit_tier.ready("max_pool_planes", _compile_plane_pools))
            if (planes and FLAT and depthwise_flat.available() and len(self.ks) == 2
                    and depthwise_flat.applies(x.shape, self.ks, self.strides, self.dil, begin, out)):
                return depthwise_flat.max_pool_2d(x, self.ks, self.strides, self.dil, begin, out,
                                                  get_num_threads(), _get_pool)
            if planes and _direct_pool(self.ks, self.strides, out):
                return depthwise_direct.max_pool_2d(x, self.ks, self.strides, self.dil, begin, out,
                                                    get_num_threads(), _get_pool)
            y = pool_jit.max_pool_2d(x, self.ks, self.strides, self.dil, begin,
                                     [e + x_ for e, x_ in zip(end, extra)], out,
                                     get_num_threads(), _get_pool)
            if y is not None:
                return y
        # -inf padding; integer inputs go through float64 (exact for int8/uint8).
        cdt = x.dtype if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else (
            np.dtype(np.float64) if x.dtype.kind in "iu" else np.dtype(np.float32))
        xp = pad_spatial(x.astype(cdt, copy=False), begin, [e + x_ for e, x_ in zip(end, extra)],
                         value=-np.inf)
        view = window_view(xp, self.ks, self.strides, self.dil, out)
        if want_idx:
            # One window copy (N, C, *O, K) then argmax: first maximum wins ties.
            kprod = int(np.prod(self.ks))
            win = view.reshape(view.shape[:2 + len(out)] + (kprod,))
            arg = np.argmax(win, axis=-1)
            y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0].astype(x.dtype)
            return y, self._indices(x.shape, arg, begin, out)
        best = None
        for idx in self._offsets():
            v = view[(Ellipsis,) + idx]
            if best is None:
                best = np.array(v)
            else:
                np.maximum(best, v, out=best)
        return best.astype(x.dtype, copy=False)

    def _indices(self, shape, arg, begin, out):
        """Flat index into X of each max (row- or column-major over the spatial axes)."""
        nd = len(out)
        spatial = list(shape[2:])
        kidx = np.unravel_index(arg, self.ks)
        grids = np.meshgrid(*[np.arange(o) for o in out], indexing="ij")
        pos = [grids[i] * self.strides[i] - begin[i] + kidx[i] * self.dil[i] for i in range(nd)]
        if self.pool.storage_order == 1:
            mult = [int(np.prod(spatial[:i])) for i in range(nd)]
        else:
            mult = [int(np.prod(spatial[i + 1:])) for i in range(nd)]
        lin = sum(p * m for p, m in zip(pos, mult))
        n, c = shape[:2]
        plane = int(np.prod(spatial))
        base = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * plane
        return (lin + base.reshape((n, c) + (1,) * nd)).astype(np.int64)


@kernel(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
class GlobalPool(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.p = float(self.attr("p")) if node.op_type == "GlobalLpPool" else None

    def compute(self, x):
        axes = tuple(range(2, x.ndim))
        op = self.node.op_type
        if op == "GlobalMaxPool":
            return np.max(x, axis=axes, keepdims=True) if axes else x.copy()
        cdt = compute_dtype(x.dtype)
        xf = x.astype(cdt, copy=False)
        if op == "GlobalAveragePool" and x.ndim > 2 and xf.flags.c_contiguous and xf.dtype.kind == "f":
            # one matrix-vector product: numpy's mean over short trailing axes reduces slowly
            # (MobileNetV2's 1280 x 7 x 7: 31 us, this 5 us)
            rows = xf.reshape(-1, math.prod(x.shape[2:]))
            y = (rows @ np.full(rows.shape[1], 1.0 / rows.shape[1], dtype=rows.dtype)).reshape(
                x.shape[:2] + (1,) * (x.ndim - 2))
        elif op == "GlobalAveragePool":
            y = np.mean(xf, axis=axes, keepdims=True)
        else:
            p = self.p
            y = np.sum(np.abs(xf) ** p, axis=axes, keepdims=True) ** (1.0 / p)
        return np.asarray(y, dtype=x.dtype)


@kernel("MaxUnpool")
class MaxUnpool(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pool = PoolAttributes.from_node(node)

    def compute(self, x, indices, output_shape=None):
        nd = x.ndim - 2
        if nd != len(self.pool.kernel_shape):
            raise bad_data(self, f"input has {nd} spatial axes, kernel_shape {len(self.pool.kernel_shape)}")
        ks, strides = self.pool.kernel_shape, self.pool.strides
        pads = list(self.pool.pads or [0] * (2 * nd))
        shape = list(x.shape[:2]) + [(x.shape[2 + i] - 1) * strides[i] + ks[i] - pads[i] - pads[i + nd]
                                     for i in range(nd)]
        want = None if output_shape is None else host_ints(output_shape)
        check_size(self, shape, x.dtype)
        if want is not None:
            check_size(self, want, x.dtype)
        y = np.zeros(int(np.prod(shape)), dtype=x.dtype)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size != x.size or (idx.size and (idx.min() < 0 or idx.max() >= y.size)):
            raise bad_data(self, f"indices must be {x.size} positions in [0, {y.size})")
        y[idx] = x.reshape(-1)
        y = y.reshape(shape)
        if output_shape is None:
            return y
        # Indices refer to the default-size output; a requested larger output holds it top-left.
        out = np.zeros(want, dtype=x.dtype)
        sl = tuple(slice(0, min(a, b)) for a, b in zip(want, shape))
        out[sl] = y[sl]
        return out


@kernel("MaxRoiPool")
class MaxRoiPool(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        shape = self.attr("pooled_shape")
        if shape is None or len(shape) != 2 or any(int(v) < 1 for v in shape):
            raise invalid(node, f"pooled_shape must be two positive ints, got {shape!r}")
        self.pooled = tuple(int(v) for v in shape)
        self.scale = float(self.attr("spatial_scale"))

    def compute(self, x, rois):
        ph, pw = self.pooled
        scale = self.scale
        _, c, h, w = x.shape
        y = np.zeros((rois.shape[0], c, ph, pw), dtype=x.dtype)
        for r, roi in enumerate(np.asarray(rois, dtype=np.float64)):
            b = int(roi[0])
            x1, y1, x2, y2 = (int(math.floor(v * scale + 0.5)) for v in roi[1:5])
            rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
            bh, bw = rh / ph, rw / pw
            for i in range(ph):
                hs = min(max(int(math.floor(i * bh)) + y1, 0), h)
                he = min(max(int(math.ceil((i + 1) * bh)) + y1, 0), h)
                for j in range(pw):
                    ws = min(max(int(math.floor(j * bw)) + x1, 0), w)
                    we = min(max(int(math.ceil((j + 1) * bw)) + x1, 0), w)
                    if he > hs and we > ws:
                        y[r, :, i, j] = x[b, :, hs:he, ws:we].max(axis=(1, 2))
        return y
