"""Softmax, LogSoftmax and Hardmax (kernels_cu/softmax.cu)."""
from __future__ import annotations

import numpy as np

from .. import loader
from ..launch import FLOATS, MAX_GRID, CudaKernel, contiguous, ctype, empty, i64, launch, pow2_block
from ..registry import kernel

MODES = {"Softmax": 0, "LogSoftmax": 1, "Hardmax": 2}
loader.declare("softmax", [f"softmax_{v}_k<{m}, {ctype(t)}>" for v in ("block", "thread")
                           for m in MODES.values() for t in FLOATS])


@kernel(list(MODES), since=1, types={"T": FLOATS})
class Softmax(CudaKernel):
    """Before opset 13 the input is coerced to 2-D at `axis` (default 1); from 13 the op runs
    along the single axis `axis` (default -1)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = MODES[node.op_type]
        self.legacy = node.since_version < 13
        self.axis = int(self.attr("axis", 1 if self.legacy else -1))

    def forward(self, x):
        nd = max(x.ndim, 1)
        axis = self.axis + nd if self.axis < 0 else self.axis
        return softmax(x, axis, self.mode, self.legacy)


def softmax(x, axis: int, mode: int = 0, legacy: bool = False):
    """Softmax (mode 0), LogSoftmax (1) or Hardmax (2) of x along `axis` (legacy: 2-D coercion)."""
    y = empty(x.shape, x.dtype)
    if y.size == 0:
        return y
    x = contiguous(x)
    shape = list(x.shape) or [1]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    if legacy:
        L, inner = int(np.prod(shape[axis:], dtype=np.int64)), 1
    else:
        L, inner = shape[axis], int(np.prod(shape[axis + 1:], dtype=np.int64))
    t = f"{mode}, {ctype(x.dtype)}"
    if inner == 1 and L >= 32:  # a block per row; short rows: a thread per row
        launch("softmax", f"softmax_block_k<{t}>", outer, (x, y, i64(outer), i64(L)),
               block=pow2_block(L, 32, 512), grid_size=min(outer, MAX_GRID))
    else:
        launch("softmax", f"softmax_thread_k<{t}>", outer * inner,
               (x, y, i64(outer), i64(L), i64(inner)))
    return y
