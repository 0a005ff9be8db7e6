"""Index-driven ops (kernels_cu/tensor.cu): Gather, GatherElements, GatherND, Scatter,
ScatterElements, ScatterND, TopK, NonZero, CumSum, Resize."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import loader
from ..launch import (ALL_NUMERIC, FLOATS, INDEX, MAXD, STORAGE, CudaKernel, blob, contiguous,
                      contiguous_strides, copy_into, cp, ctype, empty, host_ints, host_scalar,
                      i64, launch, storage, strided, to_host)
from ..registry import kernel

NUM = (np.float32, np.float16, np.int32, np.int64)
REDUCTIONS = {"none": 0, "add": 1, "mul": 2, "max": 3, "min": 4}
NONZERO_TYPES = (np.float32, np.float16, np.int32, np.int64, np.bool_, np.uint8)

_exprs = []
for _s in STORAGE.values():
    _exprs += [f"gather_k<{_s}, {ctype(i)}>" for i in INDEX]
    _exprs += [f"gather_elements_k<{_s}, {ctype(i)}>" for i in INDEX]
    _exprs += [f"scatter_elements_k<0, {_s}, {ctype(i)}>" for i in INDEX]
    _exprs += [f"gather_nd_k<{_s}>", f"scatter_nd_k<0, {_s}>"]
for _r in range(1, 5):
    for _t in NUM:
        _exprs += [f"scatter_elements_k<{_r}, {ctype(_t)}, {ctype(i)}>" for i in INDEX]
        _exprs.append(f"scatter_nd_k<{_r}, {ctype(_t)}>")
for _t in NUM:
    _exprs += [f"topk_k<{lg}, {ctype(_t)}>" for lg in (0, 1)] + [f"cumsum_k<{ctype(_t)}>"]
for _t in NONZERO_TYPES:
    _exprs += [f"nonzero_count_k<{ctype(_t)}>", f"nonzero_write_k<{ctype(_t)}>"]
_RESIZE_TYPES = [("float", "float"), ("half_t", "float"), ("float", "half_t"), ("half_t", "half_t")]
_exprs += [f"resize_axis_k<{m}, {a}, {b}>" for m in range(3) for a, b in _RESIZE_TYPES]
loader.declare("tensor", _exprs)


def _prod(v: Sequence[int]) -> int:
    return int(np.prod(v, dtype=np.int64))


def _nd_info(dims: Sequence[int], strides: Sequence[int]) -> np.ndarray:
    k = len(dims)
    if k > MAXD:
        raise NotImplementedError(f"index tuples of length {k} (at most {MAXD})")
    return blob([k] + list(dims) + [0] * (MAXD - k) + list(strides) + [0] * (MAXD - k))


def _elements_args(data_shape, idx_shape, axis):
    """Strided struct for GatherElements/ScatterElements: index space + data strides."""
    if len(idx_shape) > MAXD:
        raise NotImplementedError(f"{len(idx_shape)}-d GatherElements/ScatterElements")
    return strided(list(idx_shape) or [1], [contiguous_strides(data_shape) or [0]])


@kernel("Gather", since=1, types={"T": ALL_NUMERIC, "Tind": INDEX})
class Gather(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))

    def forward(self, x, idx):
        axis = self.axis % x.ndim
        out_shape = tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:])
        y = empty(out_shape, x.dtype)
        if y.size == 0:
            return y
        x, idx = contiguous(x), contiguous(idx)
        inner = _prod(x.shape[axis + 1:])
        launch("tensor", f"gather_k<{storage(x.dtype)}, {ctype(idx.dtype)}>", y.size,
               (x, idx, y, i64(y.size), i64(inner), i64(x.shape[axis]), i64(idx.size)))
        return y


@kernel("GatherElements", since=11, types={"T": ALL_NUMERIC, "Tind": INDEX})
class GatherElements(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))

    def forward(self, x, idx):
        axis = self.axis % x.ndim
        y = empty(idx.shape, x.dtype)
        if y.size == 0:
            return y
        x, idx = contiguous(x), contiguous(idx)
        launch("tensor", f"gather_elements_k<{storage(x.dtype)}, {ctype(idx.dtype)}>", y.size,
               (x, idx, y, i64(y.size), np.int32(axis), i64(x.shape[axis]),
                _elements_args(x.shape, idx.shape, axis)))
        return y


def _red_type(red: int, dtype) -> str:
    """Plain stores move bits (any dtype); reductions do arithmetic on the real type."""
    return storage(dtype) if red == 0 else ctype(dtype)


@kernel("Scatter", since=9, end=10, types={"T": ALL_NUMERIC, "Tind": INDEX})
@kernel("ScatterElements", since=11, types={"T": ALL_NUMERIC, "Tind": INDEX})
class ScatterElements(CudaKernel):
    """Reductions (add/mul/max/min) use atomic compare-and-swap: float32/16, int32/64 only."""

    @classmethod
    def supports(cls, node) -> bool:
        red = node.attrs.get("reduction", "none")
        if red not in REDUCTIONS:
            return False
        if red == "none":
            return True
        from ep_core.types import tensor_dtype
        dt = tensor_dtype(node.input_types[0]) if node.input_types else None
        return dt in {np.dtype(t) for t in NUM}

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))
        self.reduction = REDUCTIONS[self.attr("reduction", "none")]   # absent before opset 16

    def forward(self, data, idx, upd):
        axis = self.axis % data.ndim
        red = self.reduction
        y = copy_into(empty(data.shape, data.dtype), data)
        if idx.size == 0:
            return y
        idx, upd = contiguous(idx), contiguous(upd)
        launch("tensor", f"scatter_elements_k<{red}, {_red_type(red, y.dtype)}, {ctype(idx.dtype)}>",
               idx.size, (y, idx, upd, i64(idx.size), np.int32(axis), i64(data.shape[axis]),
                          _elements_args(data.shape, idx.shape, axis)))
        return y


@kernel("GatherND", since=11, types={"T": ALL_NUMERIC})
class GatherND(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.batch_dims = int(self.attr("batch_dims", 0))   # absent before opset 12

    def forward(self, x, idx):
        b = self.batch_dims
        k = idx.shape[-1]
        out_shape = tuple(idx.shape[:-1]) + tuple(x.shape[b + k:])
        y = empty(out_shape, x.dtype)
        if y.size == 0:
            return y
        x, idx = contiguous(x), contiguous(idx)
        st = contiguous_strides(x.shape)
        slice_ = _prod(x.shape[b + k:])
        per_batch = _prod(idx.shape[b:-1])
        batch_stride = _prod(x.shape[b:])
        launch("tensor", f"gather_nd_k<{storage(x.dtype)}>", y.size,
               (x, idx, y, i64(y.size), i64(slice_), i64(per_batch), i64(batch_stride),
                _nd_info(x.shape[b:b + k], st[b:b + k])))
        return y


@kernel("ScatterND", since=11, types={"T": ALL_NUMERIC})
class ScatterND(CudaKernel):
    supports = ScatterElements.supports

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduction = REDUCTIONS[self.attr("reduction", "none")]   # absent before opset 16

    def forward(self, data, idx, upd):
        red = self.reduction
        y = copy_into(empty(data.shape, data.dtype), data)
        if upd.size == 0:
            return y
        idx, upd = contiguous(idx), contiguous(upd)
        k = idx.shape[-1]
        slice_ = _prod(data.shape[k:])
        st = contiguous_strides(data.shape)
        launch("tensor", f"scatter_nd_k<{red}, {_red_type(red, y.dtype)}>", upd.size,
               (y, idx, upd, i64(upd.size), i64(slice_), _nd_info(data.shape[:k], st[:k])))
        return y


@kernel("TopK", since=1, types={"T": NUM}, host_inputs=(1,))
class TopK(CudaKernel):
    """K is an attribute in TopK-1 and a host input from opset 10. Output is always sorted."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.k_attr = int(self.attr("k")) if node.since_version < 10 else None
        self.axis = int(self.attr("axis"))
        self.largest = int(bool(self.attr("largest", 1)))   # absent before opset 11

    def forward(self, x, k=None):
        K = int(host_scalar(k)) if self.k_attr is None else self.k_attr
        axis = self.axis % x.ndim
        largest = self.largest
        L = x.shape[axis]
        if K < 0 or K > L:
            raise ValueError(f"TopK: k={K} outside [0, {L}]")
        out_shape = list(x.shape)
        out_shape[axis] = K
        vals, idx = empty(out_shape, x.dtype), empty(out_shape, np.int64)
        if vals.size == 0:
            return vals, idx
        x = contiguous(x)
        inner = _prod(x.shape[axis + 1:])
        n = x.size
        launch("tensor", f"topk_k<{largest}, {ctype(x.dtype)}>", n,
               (x, vals, idx, i64(n), i64(L), i64(inner), i64(K)))
        return vals, idx


@kernel("NonZero", since=9, types={"T": NONZERO_TYPES})
class NonZero(CudaKernel):
    """Two passes: per-chunk counts, then ordered writes at the prefix offsets (one host sync)."""

    def forward(self, x):
        x = contiguous(x)
        n = x.size
        chunks = -(-n // 256)
        if n == 0:
            return empty((x.ndim, 0), np.int64)
        counts = empty((chunks,), np.int32)
        t = ctype(x.dtype)
        launch("tensor", f"nonzero_count_k<{t}>", chunks, (x, i64(n), i64(chunks), counts),
               block=256, grid_size=min(chunks, 1 << 16))
        c = to_host(counts).astype(np.int64)   # synchronizes the stream
        nnz = int(c.sum())
        offsets = cp.asarray(np.concatenate(([0], np.cumsum(c)[:-1])).astype(np.int64))
        y = empty((x.ndim, nnz), np.int64)
        if nnz and x.ndim:
            launch("tensor", f"nonzero_write_k<{t}>", chunks,
                   (x, i64(n), i64(chunks), offsets, y, i64(nnz), strided(list(x.shape), [])),
                   block=256, grid_size=min(chunks, 1 << 16))
        return y


@kernel("CumSum", since=11, types={"T": NUM}, host_inputs=(1,))
class CumSum(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.exclusive = bool(self.attr("exclusive"))
        self.reverse = bool(self.attr("reverse"))

    def forward(self, x, axis):
        y = empty(x.shape, x.dtype)
        if y.size == 0:
            return y
        x = contiguous(x)
        a = int(host_scalar(axis)) % x.ndim
        L, inner = x.shape[a], _prod(x.shape[a + 1:])
        lines = x.size // L
        launch("tensor", f"cumsum_k<{ctype(x.dtype)}>", lines,
               (x, y, i64(lines), i64(L), i64(inner), np.int32(self.exclusive),
                np.int32(self.reverse)))
        return y


_COORD = {"half_pixel": 0, "asymmetric": 1, "align_corners": 2, "pytorch_half_pixel": 3,
          "half_pixel_symmetric": 4, "tf_half_pixel_for_nn": 5, "tf_half_pixel_for_nearest": 5}
_NEAREST = {"round_prefer_floor": 0, "round_prefer_ceil": 1, "floor": 2, "ceil": 3, "simple": 4}
_MODES = {"nearest": 0, "linear": 1, "cubic": 2}
_AXIS_DTYPE = np.dtype([("scale", "<f4"), ("cubic_a", "<f4"), ("coord", "<i4"),
                        ("nearest", "<i4"), ("exclude", "<i4"), ("pad", "<i4")])


@kernel("Resize", since=10, types={"T1": FLOATS}, host_inputs=(1, 2, 3))
class Resize(CudaKernel):
    """Separable per-axis resampling with fp32 intermediates. tf_crop_and_resize and antialias
    are left to the CPU provider."""

    @classmethod
    def supports(cls, node) -> bool:
        a = node.attrs
        if node.since_version < 11:
            return a.get("mode", "nearest") in _MODES
        return (a.get("mode", "nearest") in _MODES and not a.get("antialias", 0)
                and a.get("coordinate_transformation_mode", "half_pixel") in _COORD
                and a.get("nearest_mode", "round_prefer_floor") in _NEAREST)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = _MODES[self.attr("mode", "nearest")]
        if node.since_version < 11:  # Resize-10 follows Upsample
            self.coord, self.nearest = _COORD["asymmetric"], _NEAREST["simple"]
        else:
            self.coord = _COORD.get(self.attr("coordinate_transformation_mode", "half_pixel"), 0)
            self.nearest = _NEAREST.get(self.attr("nearest_mode", "round_prefer_floor"), 0)
        self.cubic_a = float(self.attr("cubic_coeff_a", -0.75))
        self.exclude = int(bool(self.attr("exclude_outside", 0)))
        self.axes = self.attr("axes")
        self.policy = self.attr("keep_aspect_ratio_policy", "stretch")

    def _sizes(self, x, scales, sizes) -> tuple[list[int], list[int], list[float]]:
        r = x.ndim
        axes = [a % r for a in self.axes] if self.axes is not None else list(range(r))
        if sizes is not None and np.asarray(sizes).size:
            req = host_ints(sizes)
            if self.policy == "stretch":
                return axes, req, [o / x.shape[a] for o, a in zip(req, axes)]
            ratios = [o / x.shape[a] for o, a in zip(req, axes)]
            s = min(ratios) if self.policy == "not_larger" else max(ratios)
            return axes, [int(np.floor(s * x.shape[a] + 0.5)) for a in axes], [s] * len(axes)
        if scales is None or not np.asarray(scales).size:
            raise ValueError("Resize: one of 'scales' or 'sizes' must be given")
        scl = [float(v) for v in np.asarray(scales, dtype=np.float32).reshape(-1)]
        outs = [int(np.floor(np.float32(x.shape[a]) * np.float32(sc))) for a, sc in zip(axes, scl)]
        return axes, outs, scl

    def forward(self, x, *rest):
        if self.node.since_version < 11:
            scales, sizes = (rest[0] if rest else None), None
        else:
            rest = list(rest) + [None] * (3 - len(rest))
            scales, sizes = rest[1], rest[2]
        axes, outs, scl = self._sizes(x, scales, sizes)
        work = [(a, o, s) for a, o, s in zip(axes, outs, scl)
                if not (o == x.shape[a] and s == 1.0 and self.coord != _COORD["tf_half_pixel_for_nn"])]
        final_shape = list(x.shape)
        for a, o, _ in zip(axes, outs, scl):
            final_shape[a] = o
        if not work or _prod(final_shape) == 0:
            y = empty(final_shape, x.dtype)
            return y if y.size == 0 else copy_into(y, x)
        cur = contiguous(x)
        for step, (a, o, s) in enumerate(work):
            last = step == len(work) - 1
            out_dtype = x.dtype if last else np.float32  # fp32 between axes
            shape = list(cur.shape)
            in_len, shape[a] = shape[a], o
            y = empty(shape, out_dtype)
            info = np.zeros(1, _AXIS_DTYPE)
            info[0] = (s, self.cubic_a, self.coord, self.nearest, self.exclude, 0)
            launch("tensor", f"resize_axis_k<{self.mode}, {ctype(cur.dtype)}, {ctype(out_dtype)}>",
                   y.size, (cur, y, i64(y.size), i64(in_len), i64(o), i64(_prod(shape[a + 1:])),
                            info))
            cur = y
        return cur

