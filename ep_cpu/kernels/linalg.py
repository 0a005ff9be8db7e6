"""Linear algebra: Gemm, MatMul, Det. Matrix products go through `ep_cpu.gemm.gemm`."""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import GemmAttributes
from ep_cpu.gemm import PackedB, gemm, pack_constant
from ep_cpu.registry import kernel


def _half(dtype: np.dtype) -> bool:
    """float16/bfloat16: numpy has no BLAS for them, compute in float32."""
    return dtype.kind == "f" and dtype.itemsize == 2 or dtype.kind == "V" or "bfloat16" in dtype.name


@kernel("Gemm")
class Gemm(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha, self.beta, self.trans_a, self.trans_b = GemmAttributes.from_node(node)
        # A constant B (the weights) is packed once here; any other B is used as it comes.
        self.packed_b = pack_constant(ctx.constant_input(1), self.trans_b)

    def compute(self, a, b, c=None):
        dt = a.dtype
        if _half(dt):
            a = a.astype(np.float32)
            b = b if self.packed_b is not None else b.astype(np.float32)
            c = None if c is None else c.astype(np.float32)
        m = a.shape[1] if self.trans_a else a.shape[0]
        n = b.shape[0] if self.trans_b else b.shape[1]
        if c is not None and c.ndim == 1 and c.shape[0] == m and m != n and n != 1:
            c = c.reshape(m, 1)  # legacy broadcast (opset < 7) along the rows
        if dt.kind in "iu":
            # Integer Gemm: exact numpy product; alpha/beta applied in the same integer type.
            aa = a.T if self.trans_a else a
            bb = b.T if self.trans_b else b
            y = np.matmul(aa, bb)
            if self.alpha != 1:
                y = y * dt.type(self.alpha)
            if c is not None and self.beta != 0:
                y = y + c * dt.type(self.beta)
            return np.ascontiguousarray(np.broadcast_to(y, (m, n)), dtype=dt)
        if self.packed_b is not None:
            y = gemm(a, self.packed_b, c if self.beta != 0 else None, alpha=self.alpha, beta=self.beta,
                     trans_a=self.trans_a)
        else:
            y = gemm(a, b, c if self.beta != 0 else None, alpha=self.alpha, beta=self.beta,
                     trans_a=self.trans_a, trans_b=self.trans_b)
        return y.astype(dt, copy=False)


def pack_matmul_b(b: np.ndarray | None) -> PackedB | None:
    """The packing of a constant MatMul B that is one matrix ((K, N), or (1, .., 1, K, N)), else None."""
    if b is None or b.ndim < 2 or any(d != 1 for d in b.shape[:-2]):
        return None
    return pack_constant(b.reshape(b.shape[-2:]))


def matmul(a: np.ndarray, b: np.ndarray, packed: PackedB | None = None) -> np.ndarray:
    """numpy-semantics matmul routed through gemm wherever B is a single matrix.

    `packed` is `pack_matmul_b(b)` for a constant b (then used in place of b)."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("MatMul inputs must have rank >= 1")
    if b.ndim == 1:
        return np.matmul(a, b)
    if b.ndim == 2 and a.ndim >= 1:
        bm = b if packed is None else packed
        if a.ndim == 1:
            return gemm(a[None, :], bm)[0]
        return gemm(a, bm)  # leading axes of A fold into M
    if a.ndim >= 2 and b.ndim > 2 and all(d == 1 for d in b.shape[:-2]) and a.ndim >= b.ndim:
        bm = b.reshape(b.shape[-2:]) if packed is None else packed
        return gemm(a, bm).reshape(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
                                   + (a.shape[-2], b.shape[-1]))
    return np.matmul(a, b)  # true batched broadcast: numpy's batched BLAS loop


@kernel("MatMul")
class MatMul(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.packed_b = pack_matmul_b(ctx.constant_input(1))

    def compute(self, a, b):
        dt = a.dtype
        if _half(dt):
            # A packed float16 B is float32 already; np.matmul's fallback promotes float16 itself.
            y = matmul(a.astype(np.float32), b if self.packed_b is not None else b.astype(np.float32),
                       self.packed_b)
        else:
            y = matmul(a, b, self.packed_b)
        return np.asarray(y, dtype=dt)


@kernel("Det")
class Det(Kernel):
    def compute(self, x):
        xf = x.astype(np.float32) if _half(x.dtype) else x
        return np.asarray(np.linalg.det(xf), dtype=x.dtype)
