"""com.microsoft::MatMulNBits (kernels_cu/quant.cu, `nbits_gemm_k`): float activations times
block-wise 2/4/8-bit weights, dequantized while they are staged, accumulated in float32.

A plain tiled kernel (32x32 outputs per block): correct for every shape, not tuned. `g_idx`,
prepacked weights and bit widths that do not divide 8 are left to the CPU provider.
"""
from __future__ import annotations

import numpy as np

from .. import loader
from ..launch import FLOATS, CudaKernel, blob, contiguous, ctype, empty
from ..registry import kernel
from .quant import MS, dtype_in, has_input, input_dtype

BITS = (2, 4, 8)
loader.declare("quant", [f"nbits_gemm_k<{ctype(t)}, {b}>" for t in FLOATS for b in BITS])


@kernel("MatMulNBits", domain=MS)
class MatMulNBits(CudaKernel):
    """Y = A @ dequantize(B)^T + bias, w = (q - zero_point) * scale per block of K."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.k, self.n = int(node.attrs["K"]), int(node.attrs["N"])
        self.bits = int(node.attrs.get("bits", 4))
        self.block = int(node.attrs["block_size"])

    @classmethod
    def supports(cls, node) -> bool:
        a = node.attrs
        try:
            bits, block = int(a.get("bits", 4)), int(a["block_size"])
            int(a["K"]), int(a["N"])
        except (KeyError, TypeError, ValueError):
            return False   # the CPU provider reports the malformed node
        t = input_dtype(node, 0)
        return (bits in BITS and block >= 16 and block & (block - 1) == 0
                and not int(a.get("weight_prepacked", 0) or 0) and not has_input(node, 4)
                and dtype_in(t, FLOATS) and input_dtype(node, 2) == t
                and (not has_input(node, 5) or input_dtype(node, 5) == t))

    def forward(self, a, b, scales, zero_points=None, g_idx=None, bias=None):
        if a.shape[-1] != self.k:
            raise ValueError(f"MatMulNBits: A's last dim {a.shape[-1]} != K {self.k}")
        if g_idx is not None and g_idx.size:
            raise NotImplementedError("MatMulNBits with g_idx runs on the CPU provider")
        k, n, bits, block = self.k, self.n, self.bits, self.block
        kblocks = -(-k // block)
        blob_bytes = block * bits // 8
        a = contiguous(a)
        m = int(np.prod(a.shape[:-1], dtype=np.int64))
        y = empty(tuple(a.shape[:-1]) + (n,), a.dtype)
        if y.size == 0:
            return y
        if b.size != n * kblocks * blob_bytes:
            raise ValueError(f"MatMulNBits: B has {b.size} bytes, expected N * k_blocks * blob = "
                             f"{n * kblocks * blob_bytes}")
        zkind, zrow = 0, 0
        if zero_points is not None:
            zkind = 1 if zero_points.dtype == np.uint8 else 2
            zrow = zero_points.size // n if zkind == 1 else 0
            zero_points = contiguous(zero_points)
        args = blob([m, n, k, block, kblocks, blob_bytes, zkind, zrow])
        tiles = -(-m // 32) * -(-n // 32)
        fn = loader.get_kernel("quant", f"nbits_gemm_k<{ctype(a.dtype)}, {bits}>")
        fn((min(tiles, 1 << 20),), (256,),
           (a, contiguous(b), contiguous(scales), zero_points,
            None if bias is None else contiguous(bias), y, args))
        return y
