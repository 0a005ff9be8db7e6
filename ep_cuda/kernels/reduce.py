"""Reductions (kernels_cu/reduce.cu): Reduce* over any axes and ArgMax/ArgMin."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import loader
from ..launch import (FLOATS, MAXD, MAX_GRID, CudaKernel, blob, collapse, contiguous,
                      contiguous_strides, ctype, empty, host_ints, i64, launch, pow2_block)
from ..registry import kernel

NUM = (np.float32, np.float16, np.int32, np.int64)
# op -> (code in reduce.cu, dtypes)
REDUCE = {
    "ReduceSum": (0, NUM), "ReduceMean": (1, FLOATS), "ReduceMax": (2, NUM), "ReduceMin": (3, NUM),
    "ReduceProd": (4, NUM), "ReduceL1": (5, NUM), "ReduceL2": (6, FLOATS),
    "ReduceLogSum": (7, FLOATS), "ReduceLogSumExp": (8, FLOATS), "ReduceSumSquare": (9, NUM),
}
R_SUM, R_MEAN, R_MAX = 0, 1, 2

_exprs = []
for _code, _types in REDUCE.values():
    for _t in _types:
        _exprs += [f"reduce_thread_k<{_code}, {ctype(_t)}>", f"reduce_block_k<{_code}, {ctype(_t)}>"]
for _t in NUM:
    for _mn in (0, 1):
        for _last in (0, 1):
            _exprs += [f"arg_thread_k<{_mn}, {_last}, {ctype(_t)}>",
                       f"arg_block_k<{_mn}, {_last}, {ctype(_t)}>"]
loader.declare("reduce", _exprs)


def _pad(v: Sequence[int]) -> list[int]:
    return list(v) + [0] * (MAXD - len(v))


def _split(x: Any, axes: Sequence[int]) -> tuple[np.ndarray, int, int, bool]:
    """RedInfo blob for contiguous x: kept dims and reduced dims, each collapsed.
    Returns (blob, n_out, n_red, reduced-axes-are-innermost-and-contiguous)."""
    st = contiguous_strides(x.shape)
    kept = [d for d in range(x.ndim) if d not in axes]
    kshape, (kst,) = collapse([x.shape[d] for d in kept], [[st[d] for d in kept]])
    rshape, (rst,) = collapse([x.shape[d] for d in axes], [[st[d] for d in axes]])
    if len(kshape) > MAXD or len(rshape) > MAXD:
        raise NotImplementedError("reduction over more than 10 non-mergeable dimension groups")
    n_out = int(np.prod([x.shape[d] for d in kept], dtype=np.int64))
    n_red = int(np.prod([x.shape[d] for d in axes], dtype=np.int64))
    info = blob([len(kshape)] + _pad(kshape) + _pad(kst) + [len(rshape)] + _pad(rshape) + _pad(rst))
    inner = len(rshape) == 1 and rst[0] == 1
    return info, n_out, n_red, inner


def _launch_pair(thread_expr: str, block_expr: str, args: tuple, n_out: int, n_red: int,
                 inner: bool) -> None:
    """Block-per-output when the reduced run is contiguous and long enough to fill a warp."""
    if inner and n_red >= 64:
        block = pow2_block(n_red, 32, 256)
        launch("reduce", block_expr, n_out, args, block=block, grid_size=min(n_out, MAX_GRID))
    else:
        launch("reduce", thread_expr, n_out, args)


def reduce(code: int, x: Any, axes: Sequence[int] | None, keepdims: bool = True) -> Any:
    """Reduce x over `axes` (None: all axes) with one of reduce.cu's op codes."""
    nd = x.ndim
    axes = sorted({a % nd for a in axes}) if axes is not None and nd else list(range(nd))
    out_shape = [1 if d in axes else n for d, n in enumerate(x.shape)] if keepdims else \
        [n for d, n in enumerate(x.shape) if d not in axes]
    y = empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    x = contiguous(x)
    info, n_out, n_red, inner = _split(x, axes)
    t = ctype(x.dtype)
    _launch_pair(f"reduce_thread_k<{code}, {t}>", f"reduce_block_k<{code}, {t}>",
                 (x, y, i64(n_out), i64(n_red), info), n_out, n_red, inner)
    return y


class Reduce(CudaKernel):
    """axes: attribute up to opset 17 (ReduceSum: 12), host-resident input from 18 (13)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.code = REDUCE[node.op_type][0]
        self.keepdims = bool(self.attr("keepdims", 1))
        self.noop = bool(self.attr("noop_with_empty_axes", 0))
        first_input_version = 13 if node.op_type == "ReduceSum" else 18
        self.axes_input = node.since_version >= first_input_version
        self.attr_axes = self.attr("axes", None)

    def forward(self, x, axes=None):
        ax = host_ints(axes) if self.axes_input else list(self.attr_axes or [])
        if not ax:
            if self.noop:
                return x
            ax = None
        return reduce(self.code, x, ax, self.keepdims)


for _name, (_code, _types) in REDUCE.items():
    kernel(_name, since=1, types={"T": _types}, host_inputs=(1,))(Reduce)


@kernel(["ArgMax", "ArgMin"], since=1, types={"T": NUM})
class ArgReduce(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.is_min = int(node.op_type == "ArgMin")
        self.axis = int(self.attr("axis", 0))
        self.keepdims = bool(self.attr("keepdims", 1))
        self.last = int(bool(self.attr("select_last_index", 0)))

    def forward(self, x):
        axis = self.axis % max(x.ndim, 1)
        out_shape = [1 if d == axis else n for d, n in enumerate(x.shape)] if self.keepdims else \
            [n for d, n in enumerate(x.shape) if d != axis]
        y = empty(out_shape, np.int64)
        if y.size == 0:
            return y
        x = contiguous(x)
        info, n_out, n_red, inner = _split(x, [axis])
        t = f"{self.is_min}, {self.last}, {ctype(x.dtype)}"
        _launch_pair(f"arg_thread_k<{t}>", f"arg_block_k<{t}>",
                     (x, y, i64(n_out), i64(n_red), info), n_out, n_red, inner)
        return y
