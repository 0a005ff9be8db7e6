"""Gather/scatter family plus selection ops: Gather, GatherElements, GatherND, Scatter,
ScatterElements, ScatterND, TensorScatter, Compress, NonZero, TopK, Unique."""
from __future__ import annotations

import functools

import numpy as np

from ep_core.kernel import Kernel
from ep_core.types import tensor_shape
from ep_cpu.kernels.math import direct
from ep_cpu.kernels.tensor import contiguous, host_ints, norm_axis
from ep_cpu.registry import kernel


def _fix_indices(idx: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Negative indices count from the back; anything outside [-dim, dim) is an error."""
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + dim, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= dim):
        raise IndexError(f"{what}: index out of range for dimension {dim}")
    return idx


@kernel("Gather")
class Gather(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 0)
        # Data rank declared: the axis is known, and np.take is ONNX's Gather (negative indices
        # count from the back, anything outside [-dim, dim) raises IndexError).
        types = node.input_types
        shape = tensor_shape(types[0]) if types else None
        if shape is not None and len(shape) > 0:
            try:
                axis = norm_axis(self.axis, len(shape))
            except ValueError:
                return   # the run-time path reports it
            self.compute = direct(functools.partial(np.take, axis=axis), node)

    def compute(self, x, indices):
        axis = norm_axis(self.axis, x.ndim)
        idx = _fix_indices(indices, x.shape[axis], "Gather")
        return np.asarray(np.take(x, idx, axis=axis))  # np.take returns a scalar for 0-d results


@kernel("GatherElements")
class GatherElements(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 0)

    def compute(self, x, indices):
        axis = norm_axis(self.axis, x.ndim)
        idx = _fix_indices(indices, x.shape[axis], "GatherElements")
        # Indices may be smaller than the data in the other axes: gather from the leading block.
        x = x[tuple(slice(None) if a == axis else slice(0, idx.shape[a]) for a in range(x.ndim))]
        return np.take_along_axis(x, idx, axis=axis)


def _nd_index(data_shape: tuple, indices: np.ndarray, batch_dims: int) -> tuple:
    """Advanced-index tuple addressing `data` for GatherND/ScatterND-style index tuples."""
    k = indices.shape[-1]
    lead = indices.shape[:-1]
    dims = np.array(data_shape[batch_dims:batch_dims + k], dtype=np.int64)
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + dims, idx)
    if idx.size and (np.any(idx < 0) or np.any(idx >= dims)):
        raise IndexError("ND index out of range")
    parts = []
    for b in range(batch_dims):
        shape = [1] * len(lead)
        shape[b] = data_shape[b]
        parts.append(np.arange(data_shape[b]).reshape(shape))
    parts.extend(np.broadcast_to(idx[..., j], lead) for j in range(k))
    return tuple(parts)


@kernel("GatherND")
class GatherND(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.batch_dims = self.attr("batch_dims", 0)

    def compute(self, x, indices):
        return contiguous(x[_nd_index(x.shape, np.asarray(indices), self.batch_dims)])


_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out: np.ndarray, index: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        out[index] = updates
    else:
        _REDUCE[reduction].at(out, index, updates)
    return out


@kernel(["ScatterElements", "Scatter"])
class ScatterElements(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", 0)
        self.reduction = self.attr("reduction", "none")

    def compute(self, x, indices, updates):
        axis = norm_axis(self.axis, x.ndim)
        idx = _fix_indices(indices, x.shape[axis], self.node.op_type)
        grid = list(np.indices(idx.shape, sparse=True))
        grid[axis] = idx
        return _scatter(x.copy(), tuple(grid), updates, self.reduction)


@kernel("ScatterND")
class ScatterND(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduction = self.attr("reduction", "none")

    def compute(self, x, indices, updates):
        return _scatter(x.copy(), _nd_index(x.shape, np.asarray(indices), 0), updates, self.reduction)


@kernel("TensorScatter")
class TensorScatter(Kernel):
    """KV-cache style update: writes `update` into the cache at per-batch sequence offsets."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", -2)
        self.mode = self.attr("mode", "linear")

    def compute(self, past, update, write_indices=None):
        axis = norm_axis(self.axis, past.ndim)
        if axis == 0:
            raise ValueError("TensorScatter: axis cannot be the batch axis")
        out = past.copy()
        max_len, seq = past.shape[axis], update.shape[axis]
        starts = host_ints(write_indices) if write_indices is not None else [0] * past.shape[0]
        for b in range(past.shape[0]):
            pos = starts[b] + np.arange(seq)
            if self.mode == "circular":
                pos %= max_len
            elif seq and pos[-1] >= max_len:
                raise IndexError("TensorScatter: write past the end of the cache")
            # Index the batch row first so `pos` is the only advanced index (keeps its place).
            out[b][(slice(None),) * (axis - 1) + (pos,)] = update[b]
        return out


@kernel("Compress")
class Compress(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis")

    def compute(self, x, condition):
        cond = np.asarray(condition).astype(bool).reshape(-1)
        if self.axis is None:
            return np.compress(cond, x.reshape(-1))
        return np.compress(cond, x, axis=norm_axis(self.axis, x.ndim))


@kernel("NonZero")
class NonZero(Kernel):
    def compute(self, x):
        x = np.asarray(x)
        if x.ndim == 0:  # numpy refuses 0-d nonzero; treat a scalar as one element
            return np.zeros((0, int(bool(x))), dtype=np.int64)
        return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


@kernel("TopK")
class TopK(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = self.attr("axis", -1)
        self.k = self.attr("k")  # opset 1 attribute
        self.largest = bool(self.attr("largest", 1))

    def compute(self, x, k=None):
        kk = host_ints(k)[0] if k is not None else self.k
        axis = norm_axis(self.axis, x.ndim)
        n = x.shape[axis]
        if not 0 <= kk <= n:
            raise ValueError(f"TopK: k={kk} out of range for dimension {n}")
        if self.largest:
            # Stable ascending sort of the reversed axis, reversed again: descending values,
            # ties in increasing original index as the spec requires.
            rev = np.flip(x, axis=axis)
            order = np.flip(np.argsort(rev, axis=axis, kind="stable"), axis=axis)
            order = (n - 1) - order
        else:
            order = np.argsort(x, axis=axis, kind="stable")
        idx = np.take(order, np.arange(kk), axis=axis).astype(np.int64)
        return np.take_along_axis(x, idx, axis=axis), idx


@kernel("Unique")
class Unique(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.sorted = bool(self.attr("sorted", 1))
        self.axis = self.attr("axis")

    def compute(self, x):
        if self.axis is None:
            data, axis = x.reshape(-1), None
        else:
            data, axis = x, norm_axis(self.axis, x.ndim)
        y, first, inverse, counts = np.unique(data, return_index=True, return_inverse=True,
                                              return_counts=True, axis=axis)
        inverse = np.asarray(inverse).reshape(-1)
        if not self.sorted:
            # Keep first-occurrence order: reorder the sorted uniques by where they first appear.
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            y = np.take(y, order, axis=0 if axis is None else axis)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        i64 = np.int64
        return y, first.astype(i64), inverse.astype(i64), counts.astype(i64)
