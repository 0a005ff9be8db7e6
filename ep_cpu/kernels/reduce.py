"""Reductions (Reduce*), arg-reductions, cumulative ops, the NLL / softmax-cross-entropy losses, Einsum."""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu.kernels.math import as_dtype, is_float, upcast
from ep_cpu.registry import kernel

# Opset from which `axes` is an input rather than an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13}
_AXES_INPUT_DEFAULT = 18


def _normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    out = sorted({int(a) + ndim if int(a) < 0 else int(a) for a in axes})
    for a in out:
        if not 0 <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for rank {ndim}")
    return tuple(a for a in out if a < ndim)


def _sum(v: np.ndarray, axes, keepdims: bool) -> np.ndarray:
    # integer sums keep their type (numpy would widen int32 to int64)
    return np.sum(v, axis=axes, keepdims=keepdims, dtype=v.dtype if v.dtype.kind in "iu" else None)


def _empty_extreme(dt: np.dtype, largest: bool):
    """Identity of max (largest=False gives -inf / int min / False) or of min."""
    if dt.kind == "b":
        return largest
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return info.max if largest else info.min
    return np.inf if largest else -np.inf


def _logsumexp(v: np.ndarray, axes, keepdims: bool) -> np.ndarray:
    m = np.max(v, axis=axes, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)  # all -inf (or empty) slices: no shift
    s = np.log(np.sum(np.exp(v - m), axis=axes, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axes)


_REDUCERS = {
    "ReduceSum": lambda v, a, k: _sum(v, a, k),
    "ReduceSumSquare": lambda v, a, k: _sum(v * v, a, k),
    "ReduceL1": lambda v, a, k: _sum(np.abs(v), a, k),
    "ReduceL2": lambda v, a, k: np.sqrt(_sum(v * v, a, k)),
    "ReduceLogSum": lambda v, a, k: np.log(_sum(v, a, k)),
    "ReduceLogSumExp": _logsumexp,
    "ReduceProd": lambda v, a, k: np.prod(v, axis=a, keepdims=k,
                                          dtype=v.dtype if v.dtype.kind in "iu" else None),
    "ReduceMax": lambda v, a, k: np.max(v, axis=a, keepdims=k, initial=_empty_extreme(v.dtype, False)),
    "ReduceMin": lambda v, a, k: np.min(v, axis=a, keepdims=k, initial=_empty_extreme(v.dtype, True)),
}


@kernel(list(_REDUCERS) + ["ReduceMean"])
class Reduce(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.op = node.op_type
        self.keepdims = bool(self.attr("keepdims", 1))
        self.noop_empty = bool(self.attr("noop_with_empty_axes", 0))
        self.axes_from_input = node.since_version >= _AXES_INPUT_SINCE.get(self.op, _AXES_INPUT_DEFAULT)
        self.attr_axes = self.attr("axes")

    def compute(self, x, axes=None):
        dt = x.dtype
        axes_list = None
        if self.axes_from_input:
            if axes is not None and axes.size:
                axes_list = axes.reshape(-1).tolist()
        elif self.attr_axes:
            axes_list = list(self.attr_axes)
        if axes_list is None:
            if self.axes_from_input and self.noop_empty:
                return x.copy()
            red = tuple(range(x.ndim))
        else:
            red = _normalize_axes(axes_list, x.ndim)
        v = upcast(x)
        with np.errstate(all="ignore"):  # log(0), 0/0 of empty reductions give -inf / nan
            if self.op == "ReduceMean":
                count = int(np.prod([x.shape[a] for a in red], dtype=np.int64))
                s = np.sum(v, axis=red, keepdims=self.keepdims,
                           dtype=np.float64 if v.dtype.kind in "iub" else None)
                r = s / count if count else s * np.nan
            else:
                if v.dtype.kind == "b" and self.op not in ("ReduceMax", "ReduceMin"):
                    v = v.astype(np.int64)
                r = _REDUCERS[self.op](v, red, self.keepdims)
        if dt.kind in "iu" and np.asarray(r).dtype.kind == "f":
            r = np.trunc(r)
        return as_dtype(r, dt)


@kernel(["ArgMax", "ArgMin"])
class ArgReduce(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attr("axis", 0))
        self.keepdims = bool(self.attr("keepdims", 1))
        self.last = bool(self.attr("select_last_index", 0))
        self.fn = np.argmax if node.op_type == "ArgMax" else np.argmin

    def compute(self, x):
        v = upcast(x)
        axis = self.axis + v.ndim if self.axis < 0 else self.axis
        if self.last:  # search the reversed axis, then map back
            idx = v.shape[axis] - 1 - self.fn(np.flip(v, axis=axis), axis=axis)
        else:
            idx = self.fn(v, axis=axis)
        if self.keepdims:
            idx = np.expand_dims(idx, axis)
        return as_dtype(idx, np.dtype(np.int64))


class _Cumulative(Kernel):
    ufunc = None
    identity = 0

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.exclusive = bool(self.attr("exclusive", 0))
        self.reverse = bool(self.attr("reverse", 0))

    def compute(self, x, axis):
        dt = x.dtype
        ax = int(np.asarray(axis).reshape(-1)[0])
        if ax < 0:
            ax += x.ndim
        v = upcast(x)
        if self.reverse:
            v = np.flip(v, axis=ax)
        with np.errstate(all="ignore"):
            r = self.ufunc.accumulate(v, axis=ax, dtype=v.dtype)
        if self.exclusive:  # shift by one along the axis, identity first
            pad = np.full_like(np.take(r, [0], axis=ax), self.identity) if r.shape[ax] else r
            r = np.concatenate([pad, np.take(r, np.arange(r.shape[ax] - 1), axis=ax)], axis=ax) \
                if r.shape[ax] else r
        if self.reverse:
            r = np.flip(r, axis=ax)
        return as_dtype(r, dt)


@kernel("CumSum")
class CumSum(_Cumulative):
    ufunc = np.add
    identity = 0


@kernel("CumProd")
class CumProd(_Cumulative):
    ufunc = np.multiply
    identity = 1


def _nll(logp: np.ndarray, target: np.ndarray, weight, reduction: str, ignore_index):
    """Weighted negative log-likelihood of `target` classes (axis 1 of logp) and the weights used."""
    t = target.astype(np.int64)
    ignored = (t == ignore_index) if ignore_index is not None else np.zeros(t.shape, bool)
    safe = np.where(ignored, 0, t)  # ignored targets may be out of range: gather class 0 instead
    picked = np.take_along_axis(logp, np.expand_dims(safe, 1), axis=1).squeeze(1)
    w = weight[safe] if weight is not None else np.ones(t.shape, logp.dtype)
    w = np.where(ignored, 0, w).astype(logp.dtype)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    if reduction == "mean":
        return np.sum(loss) / np.sum(w)
    raise ValueError(f"unknown reduction '{reduction}'")


@kernel("NegativeLogLikelihoodLoss")
class NegativeLogLikelihoodLoss(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduction = str(self.attr("reduction", "mean"))
        self.ignore_index = self.attr("ignore_index")

    def compute(self, x, target, weight=None):
        w = upcast(weight) if weight is not None else None
        with np.errstate(all="ignore"):
            loss = _nll(upcast(x), target, w, self.reduction, self.ignore_index)
        return as_dtype(loss, x.dtype)


@kernel("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.reduction = str(self.attr("reduction", "mean"))
        self.ignore_index = self.attr("ignore_index")

    def compute(self, scores, labels, weights=None):
        v = upcast(scores)
        with np.errstate(all="ignore"):
            shifted = v - np.max(v, axis=1, keepdims=True)
            logp = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
            w = upcast(weights) if weights is not None else None
            loss = _nll(logp, labels, w, self.reduction, self.ignore_index)
        outs = (as_dtype(loss, scores.dtype), as_dtype(logp, scores.dtype))
        return outs[:max(1, len(self.node.outputs))]


@kernel("Einsum")
class Einsum(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.equation = str(self.attr("equation")).replace(" ", "")

    def compute(self, *inputs):
        dt = inputs[0].dtype
        vals = [upcast(x) for x in inputs]
        if is_float(dt) and dt.itemsize < 4:
            vals = [x.astype(np.float32) for x in vals]
        r = np.einsum(self.equation, *vals, optimize=len(vals) > 2)
        return as_dtype(r, dt)
