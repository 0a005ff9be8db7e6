"""MaxPool, AveragePool (kernels_cu/pool.cu) and the global pools (reductions of reduce.cu).
Window geometry (pads, ceil mode, auto_pad) is the CPU provider's `pool_geometry`."""
from __future__ import annotations

import numpy as np

from ep_cpu.kernels.pool import pool_geometry

from .. import loader
from ..launch import FLOATS, CudaKernel, blob, contiguous, ctype, empty, i64, launch
from ..registry import kernel
from .conv import _rank_ok, as3d
from .reduce import R_MAX, R_MEAN, reduce

loader.declare("pool", [f"{k}<{ctype(t)}>" for k in ("maxpool_k", "avgpool_k") for t in FLOATS])


class _Pool(CudaKernel):
    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node)

    def _geometry(self, x):
        nd = x.ndim - 2
        ks = list(self.attr("kernel_shape"))
        strides = list(self.attr("strides") or [1] * nd)
        dil = list(self.attr("dilations") or [1] * nd)
        begin, end, _, out = pool_geometry(list(x.shape[2:]), ks, strides, dil, self.attr("pads"),
                                        self.attr("auto_pad", "NOTSET"),
                                        bool(self.attr("ceil_mode", 0)))
        info = blob(as3d(x.shape[2:], 1) + as3d(out, 1) + as3d(ks, 1) + as3d(strides, 1)
                    + as3d(begin, 0) + as3d(end, 0) + as3d(dil, 1))
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
                   (x, y, idx, i64(y.size), info, np.int32(self.attr("storage_order", 0))))
        return (y, idx) if want_idx else y


@kernel("AveragePool", since=1, types={"T": FLOATS})
class AveragePool(_Pool):
    def forward(self, x):
        out, info = self._geometry(x)
        y = empty(tuple(x.shape[:2]) + tuple(out), x.dtype)
        if y.size:
            x = contiguous(x)
            launch("pool", f"avgpool_k<{ctype(x.dtype)}>", y.size,
                   (x, y, i64(y.size), info, np.int32(bool(self.attr("count_include_pad", 0)))))
        return y


@kernel(["GlobalAveragePool", "GlobalMaxPool"], since=1, types={"T": FLOATS})
class GlobalPool(CudaKernel):
    def forward(self, x):
        code = R_MEAN if self.node.op_type == "GlobalAveragePool" else R_MAX
        return reduce(code, x, list(range(2, x.ndim)), keepdims=True)
