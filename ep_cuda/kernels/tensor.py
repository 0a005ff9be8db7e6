"""Shape and data-movement ops (kernels_cu/tensor.cu): views (Identity, Reshape, Flatten,
Squeeze, Unsqueeze, Dropout), Shape/Size (host outputs), ConstantOfShape, Transpose, Concat,
Split, Slice, Expand, Tile, Pad, Range, DepthToSpace, SpaceToDepth."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import loader
from ..launch import (ALL_NUMERIC, FLOATS, MAXD, STORAGE, CudaKernel, blob, collapse, contiguous,
                      contiguous_strides, copy_into, ctype, elem_strides, empty, host_ints,
                      host_scalar, i64, launch, storage)
from ..registry import kernel

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
RANGE_TYPES = (np.float32, np.int32, np.int64)
loader.declare("tensor", [f"{k}<{s}>" for k in ("transpose_tiled", "fill_k", "pad_k")
                          for s in STORAGE.values()]
               + [f"range_k<{ctype(t)}>" for t in RANGE_TYPES])
PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2, "wrap": 3}


def _prod(v: Sequence[int]) -> int:
    return int(np.prod(v, dtype=np.int64))


def bits(value, dtype) -> Any:
    """A scalar of `dtype` as the unsigned integer with the same bits (storage-typed kernels)."""
    dtype = np.dtype(dtype)
    return np.asarray(value, dtype=dtype).reshape(()).view(UINT[dtype.itemsize])[()]


def fill(shape: Sequence[int], dtype, value) -> Any:
    y = empty(shape, dtype)
    launch("tensor", f"fill_k<{storage(y.dtype)}>", y.size, (y, i64(y.size), bits(value, y.dtype)))
    return y


def transpose(x: Any, perm: Sequence[int]) -> Any:
    """Tiled shared-memory kernel for (batched) 2-D swaps, strided copy otherwise."""
    out_shape = [x.shape[p] for p in perm]
    y = empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    st = elem_strides(x)
    cshape, (ss, _) = collapse(out_shape, [[st[p] for p in perm], contiguous_strides(out_shape)])
    if x.flags.c_contiguous and len(cshape) in (2, 3):
        P, Q = cshape[-2], cshape[-1]
        B = cshape[0] if len(cshape) == 3 else 1
        if ss[-2:] == [1, P] and (len(cshape) == 2 or ss[0] == P * Q):
            fn = loader.get_kernel("tensor", f"transpose_tiled<{storage(x.dtype)}>")
            grid = (min(-(-P // 32), 65535), min(-(-Q // 32), 65535), min(B, 65535))
            fn(grid, (32, 8), (x, y, i64(B), i64(Q), i64(P)))
            return y
    return copy_into(y, x.transpose(perm))  # a CuPy view; our strided copy does the work


def pad(x: Any, begin: Sequence[int], end: Sequence[int], mode: int, value=0) -> Any:
    """Pad (negative entries crop) with PAD_MODES semantics; also Tile (wrap, begin 0)."""
    nd = x.ndim
    if nd > MAXD:
        raise NotImplementedError(f"Pad of a {nd}-d tensor (at most {MAXD})")
    if any(v < 0 for v in list(begin) + list(end)):
        # negative pads crop first (a view); the modes then pad the cropped tensor
        x = x[tuple(slice(max(-b, 0), x.shape[d] - max(-e, 0)) for d, (b, e) in enumerate(zip(begin, end)))]
        begin, end = [max(b, 0) for b in begin], [max(e, 0) for e in end]
    out_shape = [x.shape[d] + begin[d] + end[d] for d in range(nd)]
    if any(n < 0 for n in out_shape):
        raise ValueError(f"pads {list(begin) + list(end)} crop more than shape {x.shape}")
    y = empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    if x.size == 0 and mode != 0:
        raise ValueError("only constant padding can extend an empty tensor")

    def padded(v):
        return list(v) + [0] * (MAXD - nd)
    info = blob([nd] + padded(out_shape) + padded(x.shape) + padded(elem_strides(x)) + padded(begin))
    launch("tensor", f"pad_k<{storage(x.dtype)}>", y.size,
           (x, y, i64(y.size), np.int32(mode), bits(value, x.dtype), info))
    return y


# ---------------------------------------------------------------------------- views / shapes
def _tensor_input(node) -> bool:
    """True when the first input is a (typed) tensor: sequences/optionals stay on the CPU."""
    tp = node.input_types[0] if node.input_types else None
    return tp is not None and tp.WhichOneof("value") == "tensor_type"


@kernel("Identity", since=1, types={"T": ALL_NUMERIC, "V": ALL_NUMERIC})
class Identity(CudaKernel):
    def forward(self, x):
        return x

    @classmethod
    def supports(cls, node) -> bool:
        return _tensor_input(node)


@kernel("Dropout", since=7, types={"T": FLOATS}, host_inputs=(1, 2))
class Dropout(CudaKernel):
    """Inference: the output is the input and the mask all true. A node wired to a
    training_mode input is left to the CPU provider."""

    @classmethod
    def supports(cls, node) -> bool:
        return not (len(node.inputs) > 2 and node.inputs[2])

    def forward(self, x, ratio=None, training_mode=None):
        if training_mode is not None and bool(host_scalar(training_mode, False)):
            raise NotImplementedError("Dropout with training_mode=True is not supported on CUDA")
        if len(self.node.outputs) > 1 and self.node.outputs[1]:
            return x, fill(x.shape, np.bool_, True)
        return x


@kernel("Reshape", since=5, types={"T": ALL_NUMERIC}, host_inputs=(1,))
class Reshape(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.allowzero = bool(self.attr("allowzero"))   # absent before opset 14: off

    def forward(self, x, shape):
        dims = host_ints(shape)
        allowzero = self.allowzero
        out = [x.shape[i] if (d == 0 and not allowzero and i < x.ndim) else d
               for i, d in enumerate(dims)]
        if -1 in out:
            k = out.index(-1)
            rest = _prod([d for j, d in enumerate(out) if j != k])
            out[k] = x.size // rest if rest else 0
        return contiguous(x).reshape(out)


@kernel("Flatten", since=1, types={"T": ALL_NUMERIC})
class Flatten(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))

    def forward(self, x):
        axis = self.axis
        axis = axis + x.ndim if axis < 0 else axis
        return contiguous(x).reshape(_prod(x.shape[:axis]), _prod(x.shape[axis:]))


@kernel(["Squeeze", "Unsqueeze"], since=1, types={"T": ALL_NUMERIC}, host_inputs=(1,))
class SqueezeUnsqueeze(CudaKernel):
    """axes: attribute before opset 13, host-resident input from 13."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes_attr = [int(a) for a in self.attr("axes") or []]

    def forward(self, x, axes=None):
        ax = host_ints(axes) if self.node.since_version >= 13 else self.axes_attr
        if self.node.op_type == "Squeeze":
            nd = x.ndim
            drop = {a % nd for a in ax} if ax else {d for d, n in enumerate(x.shape) if n == 1}
            return contiguous(x).reshape([n for d, n in enumerate(x.shape) if d not in drop])
        out_nd = x.ndim + len(ax)
        ins = {a % out_nd for a in ax}
        it = iter(x.shape)
        return contiguous(x).reshape([1 if d in ins else next(it) for d in range(out_nd)])


@kernel("Shape", since=1, host_outputs=(0,))
class Shape(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        end = self.attr("end")
        self.start, self.end = int(self.attr("start") or 0), None if end is None else int(end)

    def forward(self, x):
        shape = np.array(x.shape, dtype=np.int64)
        if self.node.since_version >= 15:
            nd = len(shape)
            start, end = self.start, self.end
            start = min(max(start + nd if start < 0 else start, 0), nd)
            end = nd if end is None else min(max(end + nd if end < 0 else end, 0), nd)
            shape = shape[start:end]
        return shape

    @classmethod
    def supports(cls, node) -> bool:  # reads only the shape: any tensor the device holds
        from ep_core.types import tensor_dtype
        dt = tensor_dtype(node.input_types[0]) if node.input_types else None
        return dt is not None and dt in {np.dtype(t) for t in ALL_NUMERIC}


@kernel("Size", since=1, host_outputs=(0,))
class Size(CudaKernel):
    def forward(self, x):
        return np.array(x.size, dtype=np.int64)

    supports = Shape.supports


@kernel("ConstantOfShape", since=9, types={"T2": ALL_NUMERIC}, host_inputs=(0,))
class ConstantOfShape(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        v = self.attr("value", None)
        self.value = np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)[:1]

    def forward(self, shape):
        return fill(host_ints(shape), self.value.dtype, self.value[0])


# ---------------------------------------------------------------------------- data movement
@kernel("Transpose", since=1, types={"T": ALL_NUMERIC})
class Transpose(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        perm = self.attr("perm")
        self.perm = None if perm is None else [int(p) for p in perm]

    def forward(self, x):
        perm = self.perm if self.perm is not None else list(range(x.ndim))[::-1]
        return transpose(x, perm)


@kernel("Concat", since=4, types={"T": ALL_NUMERIC})
class Concat(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))

    def forward(self, *xs):
        xs = [x for x in xs if x is not None]
        nd = xs[0].ndim
        axis = self.axis % nd
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        y = empty(shape, xs[0].dtype)
        off = 0
        for x in xs:
            k = x.shape[axis]
            if k:
                copy_into(y[(slice(None),) * axis + (slice(off, off + k),)], x)
            off += k
        return y


@kernel("Split", since=2, types={"T": ALL_NUMERIC}, host_inputs=(1,))
class Split(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis"))
        self.split_attr = [int(k) for k in self.attr("split") or []]   # before opset 13

    def forward(self, x, split=None):
        axis = self.axis % x.ndim
        n_out = len(self.node.outputs)
        sizes = host_ints(split) if self.node.since_version >= 13 else self.split_attr
        if not sizes:
            dim = x.shape[axis]
            chunk = -(-dim // n_out)  # ceil: the last part may be smaller (opset 18 rule)
            sizes = [min(chunk, max(dim - chunk * k, 0)) for k in range(n_out)]
        outs, off = [], 0
        for k in sizes:
            outs.append(contiguous_copy(x[(slice(None),) * axis + (slice(off, off + k),)]))
            off += k
        return tuple(outs)


def contiguous_copy(view: Any) -> Any:
    """A fresh contiguous array with the contents of `view` (never aliases its base)."""
    return copy_into(empty(view.shape, view.dtype), view)


@kernel("Slice", since=1, types={"T": ALL_NUMERIC}, host_inputs=(1, 2, 3, 4))
class Slice(CudaKernel):
    """starts/ends/axes are attributes in Slice-1 and host inputs (with steps) from opset 10."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.legacy = None
        if node.since_version < 10:
            starts, ends = [int(v) for v in self.attr("starts")], [int(v) for v in self.attr("ends")]
            axes = [int(v) for v in self.attr("axes") or range(len(starts))]
            self.legacy = (starts, ends, axes, [1] * len(starts))

    def forward(self, x, starts=None, ends=None, axes=None, steps=None):
        if self.legacy is None:
            starts, ends = host_ints(starts), host_ints(ends)
            axes = host_ints(axes) if axes is not None else list(range(len(starts)))
            steps = host_ints(steps) if steps is not None else [1] * len(starts)
        else:
            starts, ends, axes, steps = self.legacy
        index: list[Any] = [slice(None)] * x.ndim
        counts: dict[int, int] = {}
        for s, e, a, st in zip(starts, ends, axes, steps):
            a %= x.ndim
            n = x.shape[a]
            if st == 0:
                raise ValueError("Slice step cannot be 0")
            s = s + n if s < 0 else s
            e = e + n if e < 0 else e
            if st > 0:
                s, e = min(max(s, 0), n), min(max(e, 0), n)
                count = max(0, -(-(e - s) // st))
            else:
                s, e = min(max(s, 0), n - 1), min(max(e, -1), n - 1)
                count = max(0, -(-(s - e) // -st))
            index[a] = slice(s if count else 0, None, st)
            counts[a] = count
        view = x[tuple(index)]
        view = view[tuple(slice(0, counts[d]) if d in counts else slice(None) for d in range(x.ndim))]
        return contiguous_copy(view)


@kernel("Expand", since=8, types={"T": ALL_NUMERIC}, host_inputs=(1,))
class Expand(CudaKernel):
    def forward(self, x, shape):
        out = np.broadcast_shapes(tuple(x.shape), tuple(host_ints(shape)))
        return copy_into(empty(out, x.dtype), x)


@kernel("Tile", since=6, types={"T": ALL_NUMERIC}, host_inputs=(1,))
class Tile(CudaKernel):
    def forward(self, x, repeats):
        reps = host_ints(repeats)
        return pad(x, [0] * x.ndim, [n * (r - 1) for n, r in zip(x.shape, reps)], PAD_MODES["wrap"])


@kernel("Pad", since=2, types={"T": ALL_NUMERIC}, host_inputs=(1, 2, 3))
class Pad(CudaKernel):
    """pads/value are attributes before opset 11; pads, constant_value, axes (18) host inputs."""

    @classmethod
    def supports(cls, node) -> bool:
        return node.attrs.get("mode", "constant") in PAD_MODES

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = PAD_MODES[self.attr("mode")]
        self.legacy = None
        if node.since_version < 11:   # pads and value are attributes
            self.legacy = ([int(v) for v in self.attr("pads")], float(self.attr("value")))

    def forward(self, x, pads=None, value=None, axes=None):
        mode = self.mode
        nd = x.ndim
        if self.legacy is None:
            p = host_ints(pads)
            v = host_scalar(value, 0)
            ax = [a % nd for a in host_ints(axes)] if axes is not None else list(range(nd))
        else:
            (p, v), ax = self.legacy, list(range(nd))
        begin, end = [0] * nd, [0] * nd
        for k, a in enumerate(ax):
            begin[a], end[a] = p[k], p[k + len(ax)]
        return pad(x, begin, end, mode, v if v is not None else 0)


@kernel("Range", since=11, types={"T": RANGE_TYPES}, host_inputs=(0, 1, 2))
class Range(CudaKernel):
    def forward(self, start, limit, delta):
        dtype = np.asarray(start).dtype
        s, lim, d = (np.asarray(v).reshape(()).item() for v in (start, limit, delta))
        n = max(int(np.ceil((lim - s) / d)), 0)
        y = empty((n,), dtype)
        launch("tensor", f"range_k<{ctype(dtype)}>", n,
               (y, i64(n), np.asarray(s, dtype)[()], np.asarray(d, dtype)[()]))
        return y


@kernel(["DepthToSpace", "SpaceToDepth"], since=1, types={"T": ALL_NUMERIC})
class DepthSpace(CudaKernel):
    """Reshape + transpose + reshape, the transpose done by our kernel."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.block = int(self.attr("blocksize"))
        # SpaceToDepth has no mode; DepthToSpace before opset 11 neither: DCR.
        self.dcr = self.attr("mode", "DCR") == "DCR"

    def forward(self, x):
        b = self.block
        n, c, h, w = x.shape
        x = contiguous(x)
        if self.node.op_type == "SpaceToDepth":
            perm = (0, 3, 5, 1, 2, 4) if self.dcr else (0, 1, 3, 5, 2, 4)
            t = transpose(x.reshape(n, c, h // b, b, w // b, b), perm)
            return t.reshape(n, c * b * b, h // b, w // b)
        if self.dcr:
            t = transpose(x.reshape(n, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2))
        else:
            t = transpose(x.reshape(n, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3))
        return t.reshape(n, c // (b * b), h * b, w * b)

