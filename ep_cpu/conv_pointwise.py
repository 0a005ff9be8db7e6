"""A 1x1 convolution of one image through BLAS at one thread, set up once per input shape.

At one intra-op thread on AVX2, deep 1x1 convs run as one BLAS product each (OpenBLAS's SGEMM
is the faster kernel there: `ep_cpu.microkernel.beats_blas`). Through the general path
(`conv.conv_nd` -> `gemm.gemm`) every call re-derived its reshapes, epilogue and tiling in
Python: 30-40 us around a 90 us product (MobileNetV2's 144->32 conv on 28x28, one thread,
Zen 3), against onnxruntime's whole conv at ~105 us. The plan keeps what does not change
between runs (the weight as an (M, C) matrix, the bias vector, the clamp, the row blocks) and a
run is the product and one compiled epilogue pass per block of output rows.
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import epilogue_jit
from ep_cpu.blas_threads import single_threaded_blas
from ep_cpu.gemm import TILE_BYTES


class PointwisePlan:
    """y = clamp(W @ x + bias + residual) for one float32 image x (1, C, *spatial) and a
    constant weight (M, C, 1, ...); `clamp` (lo, hi) is the activation (None: none, Relu, Clip).

    Rows of the output run in blocks of at most `TILE_BYTES`, each block's epilogue right after
    its product while the block is in cache (as `gemm.gemm` tiles a one-thread product)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, clamp: tuple[float, float],
                 x_shape: tuple, has_res: bool) -> None:
        m, c = w.shape[:2]
        self.w2 = np.ascontiguousarray(w.reshape(m, c), dtype=np.float32)
        self.bias_col = (None if bias is None
                         else np.ascontiguousarray(bias, dtype=np.float32).reshape(m, 1))
        self.clamp = clamp
        self.positions = math.prod(x_shape[2:])
        self.out_shape = (1, m) + tuple(x_shape[2:])
        rows = max(8, TILE_BYTES // max(1, 4 * self.positions)) // 8 * 8
        self.blocks = [(r, min(m, r + rows)) for r in range(0, m, rows)]
        self.epilogue = bias is not None or has_res or clamp != (-math.inf, math.inf)

    def __call__(self, x: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
        m, p = self.out_shape[1], self.positions
        y = np.empty(self.out_shape, dtype=np.float32)
        y2, x2 = y.reshape(m, p), x.reshape(x.shape[1], p)
        res = None if residual is None else np.broadcast_to(residual, self.out_shape).reshape(m, p)
        with single_threaded_blas():
            for r0, r1 in self.blocks:
                block = y2[r0:r1]
                np.matmul(self.w2[r0:r1], x2, out=block)
                if self.epilogue:
                    bias = None if self.bias_col is None else self.bias_col[r0:r1]
                    rb = None if res is None else res[r0:r1]
                    if not epilogue_jit.apply(block, bias, rb, self.clamp):
                        if bias is not None:
                            block += bias
                        if rb is not None:
                            block += rb
                        if self.clamp != (-math.inf, math.inf):
                            np.clip(block, self.clamp[0], self.clamp[1], out=block)
        return y


def applies(x: np.ndarray, w: np.ndarray, ks, strides, begin, end, group: int,
            clamp: tuple[float, float] | None) -> bool:
    """Whether a conv is one the plan computes: float32, one image, group 1, a 1x1 kernel at
    stride 1 without padding, and a clamp (or no) activation."""
    return (clamp is not None and x.dtype == np.float32 and x.shape[0] == 1 and group == 1
            and all(k == 1 for k in ks) and all(s == 1 for s in strides)
            and not any(begin) and not any(end) and w.shape[1] == x.shape[1])
