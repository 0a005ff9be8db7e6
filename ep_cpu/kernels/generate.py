"""Ops that generate tensors: Constant, ConstantOfShape, Range, EyeLike, OneHot, Trilu."""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.types import np_dtype
from ep_cpu.kernels.tensor import bad_data, check_size, host_ints, norm_axis
from ep_cpu.registry import kernel


def _scalar(x):
    """A host scalar input (0-d or 1-element tensor) as a numpy scalar of its own dtype."""
    return np.asarray(x).reshape(-1)[0]


@kernel("Constant")
class Constant(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        a = node.attrs
        # Exactly one value attribute is set; sparse_value arrives densified from graph loading.
        if "value" in a:
            v = np.asarray(a["value"])
        elif "sparse_value" in a:
            v = np.asarray(a["sparse_value"])
        elif "value_float" in a:
            v = np.array(a["value_float"], dtype=np.float32)
        elif "value_floats" in a:
            v = np.array(a["value_floats"], dtype=np.float32).reshape(-1)
        elif "value_int" in a:
            v = np.array(a["value_int"], dtype=np.int64)
        elif "value_ints" in a:
            v = np.array(a["value_ints"], dtype=np.int64).reshape(-1)
        elif "value_string" in a:
            v = np.array(a["value_string"], dtype=object)
        elif "value_strings" in a:
            v = np.array(list(a["value_strings"]), dtype=object).reshape(-1)
        else:
            raise ValueError("Constant: no value attribute")
        self.value = v

    def compute(self):
        # Return a copy so a consumer that writes in place cannot corrupt later runs.
        return self.value.copy()


@kernel("ConstantOfShape")
class ConstantOfShape(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        v = self.attr("value")
        self.value = np.asarray(v).reshape(-1)[:1] if v is not None else np.zeros(1, np.float32)

    def compute(self, shape):
        dims = host_ints(shape)
        check_size(self, dims, self.value.dtype)   # negative dims, max_tensor_bytes
        return np.full(dims, self.value[0], dtype=self.value.dtype)


@kernel("Range")
class Range(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.stash_type = self.attr("stash_type", 1)

    def compute(self, start, limit, delta):
        dtype = np.asarray(start).dtype
        s, l, d = _scalar(start), _scalar(limit), _scalar(delta)
        if d == 0:
            raise bad_data(self, "delta is 0")
        if dtype.kind in "iu":
            s, l, d = int(s), int(l), int(d)
            n = max(-((s - l) // d), 0)  # ceil((l - s) / d) in exact integer arithmetic
            check_size(self, [n], dtype)
            return (s + np.arange(n, dtype=np.int64) * d).astype(dtype)
        count = (float(l) - float(s)) / float(d)
        if not math.isfinite(count):
            raise bad_data(self, f"start {s}, limit {l} and delta {d} give no finite element count")
        n = max(int(math.ceil(count)), 0)
        check_size(self, [n], dtype)
        # Half-precision types compute in float32 when stash_type is 1 (the default).
        work = np.float32 if dtype.itemsize < 4 and self.stash_type == 1 else dtype
        if dtype == np.float64:
            work = np.float64
        sw, dw = np.asarray(s).astype(work), np.asarray(d).astype(work)
        return (sw + np.arange(n).astype(work) * dw).astype(dtype)


@kernel("EyeLike")
class EyeLike(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        dt = self.attr("dtype")
        self.dtype = np_dtype(dt) if dt is not None else None
        self.k = self.attr("k", 0)

    def compute(self, x):
        if x.ndim != 2:
            raise ValueError("EyeLike: input must be 2-D")
        dtype = self.dtype if self.dtype is not None else x.dtype
        return np.eye(x.shape[0], x.shape[1], k=self.k, dtype=dtype)


@kernel("OneHot")
class OneHot(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", -1)

    def compute(self, indices, depth, values):
        depth = int(_scalar(depth))
        idx = np.asarray(indices)
        rank = idx.ndim + 1
        axis = norm_axis(self.axis, rank)
        if depth < 0:
            raise bad_data(self, f"depth {depth} is negative")
        shape = list(idx.shape)
        shape.insert(axis, depth)
        check_size(self, shape, np.asarray(values).dtype)
        idx = idx.astype(np.int64)  # float indices truncate toward zero first
        idx = np.where(idx < 0, idx + depth, idx)
        hot = np.expand_dims(idx, axis) == np.arange(depth).reshape(
            [depth if k == axis else 1 for k in range(rank)])
        off, on = np.asarray(values).reshape(-1)[:2]
        return np.where(hot, on, off).astype(np.asarray(values).dtype)


@kernel("Trilu")
class Trilu(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.upper = bool(self.attr("upper", 1))

    def compute(self, x, k=None):
        kk = int(_scalar(k)) if k is not None else 0
        rows, cols = x.shape[-2], x.shape[-1]
        i = np.arange(rows).reshape(-1, 1)
        j = np.arange(cols).reshape(1, -1)
        keep = (j - i >= kk) if self.upper else (j - i <= kk)
        zero = np.zeros((), dtype=x.dtype) if x.dtype != object else ""
        return np.where(keep, x, zero).astype(x.dtype, copy=False)
