"""MatMul and Gemm through the tiled batched GEMM of kernels_cu/gemm.cu."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import loader
from ..launch import (FLOATS, MAXD, CudaKernel, blob, broadcast_strides, collapse, ctype,
                      elem_strides, empty, f32, i64)
from ..registry import kernel

TILE = 64
loader.declare("gemm", [f"gemm_k<{ctype(t)}>" for t in FLOATS])


def _pad(v: Sequence[int]) -> list[int]:
    return list(v) + [0] * (MAXD - len(v))


def batched_gemm(a_shape, a_st, b_shape, b_st, a: Any, b: Any, c: Any = None,
                 alpha: float = 1.0, beta: float = 1.0) -> Any:
    """Y[z] = alpha * A[z] @ B[z] + beta * C for logical shapes (..., M, K) and (..., K, N) given
    with element strides (views, transposes and broadcasts expressed as strides).
    C (optional) is broadcast to (..., M, N). Returns contiguous (batch..., M, N)."""
    M, K = a_shape[-2:]
    K2, N = b_shape[-2:]
    if K != K2:
        raise ValueError(f"matmul inner dimensions differ: {tuple(a_shape)} @ {tuple(b_shape)}")
    batch = tuple(np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    y = empty(batch + (M, N), a.dtype)
    if y.size == 0:
        return y
    a_bst = broadcast_strides(a_shape[:-2], a_st[:-2], batch)
    b_bst = broadcast_strides(b_shape[:-2], b_st[:-2], batch)
    if c is not None:
        c_full = broadcast_strides(c.shape, elem_strides(c), batch + (M, N))
        c_bst, (scm, scn) = c_full[:-2], c_full[-2:]
    else:
        c_bst, scm, scn = [0] * len(batch), 0, 0
    bshape, (a_bst, b_bst, c_bst) = collapse(batch, [a_bst, b_bst, c_bst])
    info = blob([len(bshape)] + _pad(bshape) + _pad(a_bst) + _pad(b_bst) + _pad(c_bst)
                + [M, N, K, a_st[-2], a_st[-1], b_st[-2], b_st[-1], scm, scn])
    batches = int(np.prod(batch, dtype=np.int64))
    grid = (min(-(-N // TILE), 65535), min(-(-M // TILE), 65535), min(batches, 65535))
    fn = loader.get_kernel("gemm", f"gemm_k<{ctype(a.dtype)}>")
    fn(grid, (256,), (a, b, c, y, f32(alpha), f32(beta), i64(batches), info))
    return y


def matmul(a: Any, b: Any) -> Any:
    """numpy.matmul semantics (1-D operands promoted then squeezed, batch broadcasting)."""
    a_shape, a_st = list(a.shape), list(elem_strides(a))
    b_shape, b_st = list(b.shape), list(elem_strides(b))
    if a.ndim == 1:
        a_shape, a_st = [1] + a_shape, [0] + a_st
    if b.ndim == 1:
        b_shape, b_st = b_shape + [1], b_st + [0]
    y = batched_gemm(a_shape, a_st, b_shape, b_st, a, b)
    if a.ndim == 1 and b.ndim == 1:
        return y.reshape(())
    if a.ndim == 1:
        return y.reshape(y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        return y.reshape(y.shape[:-1])
    return y


@kernel("MatMul", since=1, types={"T": FLOATS})
class MatMul(CudaKernel):
    def forward(self, a, b):
        return matmul(a, b)


@kernel("Gemm", since=7, types={"T": FLOATS})
class Gemm(CudaKernel):
    """Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.beta = float(self.attr("beta", 1.0))
        self.ta = bool(self.attr("transA", 0))
        self.tb = bool(self.attr("transB", 0))

    def forward(self, a, b, c=None):
        a_shape, a_st = list(a.shape), list(elem_strides(a))
        b_shape, b_st = list(b.shape), list(elem_strides(b))
        if self.ta:
            a_shape, a_st = a_shape[::-1], a_st[::-1]
        if self.tb:
            b_shape, b_st = b_shape[::-1], b_st[::-1]
        if c is not None and self.beta == 0.0:
            c = None  # beta * C contributes nothing (and must not turn inf/NaN in C into NaN)
        return batched_gemm(a_shape, a_st, b_shape, b_st, a, b, c, self.alpha, self.beta)
