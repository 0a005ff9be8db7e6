"""MaxPool, AveragePool (kernels_cu/pool.cu) and the global pools (reductions of reduce.cu).
Attributes and window geometry (pads, ceil mode, auto_pad) are the provider-neutral
`ep_core.op_attributes.PoolAttributes`, shared with the CPU provider."""
from __future__ import annotations

import numpy as np

from ep_core.op_attributes import PoolAttributes

from .. import loader
from ..launch import FLOATS, CudaKernel, blob, contiguous, ctype, empty, i64, launch
from ..registry import kernel
from .conv import _rank_ok, as3d
from .reduce import R_MAX, R_MEAN, reduce

loader.declare("pool", [f"{k}<{ctype(t)}>" for k in ("maxpool_k", "avgpool_k") for t in FLOATS])


class _Pool(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pool = PoolAttributes.from_node(node)

    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node)

    def _geometry(self, x):
        a = self.pool
        begin, end, _, out = a.geometry(list(x.shape[2:]))
        info = blob(as3d(x.shape[2:], 1) + as3d(out, 1) + as3d(a.kernel_shape, 1)
                    + as3d(a.strides, 1) + as3d(begin, 0) + as3d(end, 0) + as3d(a.dilations, 1))
        return out, info


@kernel("MaxPool", since=1, types={"T": FLOATS})
class MaxPool(_Pool):
    def forward(self, x):
        out, info = self._geometry(x)
        shape = tuple(x.shape[:2]) + tuple(out)
        y = empty(shape, x.dtype)
        want_idx = len(self.node.outputs) > 1 and bool(self.node.outputs[1])
        idx = empty(shape, np.int64) if want_idx else None
        if y.size:
            x = contiguous(x)
            launch("pool", f"maxpool_k<{ctype(x.dtype)}>", y.size,
                   (x, y, idx, i64(y.size), info, np.int32(self.pool.storage_order)))
        return (y, idx) if want_idx else y


@kernel("AveragePool", since=1, types={"T": FLOATS})
class AveragePool(_Pool):
    def forward(self, x):
        out, info = self._geometry(x)
        y = empty(tuple(x.shape[:2]) + tuple(out), x.dtype)
        if y.size:
            x = contiguous(x)
            launch("pool", f"avgpool_k<{ctype(x.dtype)}>", y.size,
                   (x, y, i64(y.size), info, np.int32(self.pool.count_include_pad)))
        return y


@kernel(["GlobalAveragePool", "GlobalMaxPool"], since=1, types={"T": FLOATS})
class GlobalPool(CudaKernel):
    def forward(self, x):
        code = R_MEAN if self.node.op_type == "GlobalAveragePool" else R_MAX
        return reduce(code, x, list(range(2, x.ndim)), keepdims=True)
