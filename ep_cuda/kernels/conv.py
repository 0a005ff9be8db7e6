"""Conv and ConvTranspose (kernels_cu/conv.cu), 1-D to 3-D, groups, dilations, pads, auto_pad."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import loader
from ..launch import FLOATS, CudaKernel, blob, contiguous, ctype, empty, i64, launch
from ..registry import kernel

loader.declare("conv", [f"{k}<{ctype(t)}>" for k in ("conv_k", "conv_transpose_k", "conv_gemm_k")
                        for t in FLOATS])
GEMM_MIN = 16   # implicit GEMM when a group has at least this many output channels and taps


def conv_geometry(in_shape: Sequence[int], ks: Sequence[int], strides: Sequence[int],
                  dil: Sequence[int], pads: Sequence[int] | None, auto_pad: str
                  ) -> tuple[list[int], list[int], list[int]]:
    """(pads_begin, pads_end, out_shape) of a convolution window (same rules as the CPU EP)."""
    nd = len(in_shape)
    pads = list(pads or [0] * (2 * nd))
    begin, end, out = [], [], []
    for i in range(nd):
        k_eff = (ks[i] - 1) * dil[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-in_shape[i] // strides[i])
            total = max(0, (o - 1) * strides[i] + k_eff - in_shape[i])
            small = total // 2
            b, e = (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
        elif auto_pad == "VALID":
            b = e = 0
            o = (in_shape[i] - k_eff) // strides[i] + 1
        else:
            b, e = pads[i], pads[i + nd]
            o = (in_shape[i] + b + e - k_eff) // strides[i] + 1
        begin.append(int(b))
        end.append(int(e))
        out.append(max(int(o), 0))
    return begin, end, out


def as3d(v: Sequence[int], fill: int) -> list[int]:
    """Spatial parameters of a 1-D/2-D op padded in front to 3 entries."""
    return [fill] * (3 - len(v)) + [int(x) for x in v]


def _rank_ok(node, max_spatial: int = 3) -> bool:
    ks = node.attrs.get("kernel_shape")
    if ks is not None:
        return 1 <= len(ks) <= max_spatial
    shape = None
    if node.input_types and node.input_types[0] is not None:
        from ep_core.types import tensor_shape
        shape = tensor_shape(node.input_types[0])
    return shape is not None and 3 <= len(shape) <= 2 + max_spatial


class _ConvBase(CudaKernel):
    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node)

    def _attrs(self, nd: int, w_shape) -> tuple:
        ks = list(self.attr("kernel_shape") or w_shape[2:])
        strides = list(self.attr("strides") or [1] * nd)
        dil = list(self.attr("dilations") or [1] * nd)
        return ks, strides, dil, int(self.attr("group", 1)), self.attr("auto_pad", "NOTSET")


def _info(N, C, M, G, ins, outs, ks, strides, begin, dil) -> Any:
    return blob([N, C, M, G] + as3d(ins, 1) + as3d(outs, 1) + as3d(ks, 1) + as3d(strides, 1)
                + as3d(begin, 0) + as3d(dil, 1))


@kernel("Conv", since=1, types={"T": FLOATS})
class Conv(_ConvBase):
    def forward(self, x, w, b=None):
        return self.run(x, w, b)

    def run(self, x, w, b=None):
        nd = x.ndim - 2
        ks, strides, dil, group, auto_pad = self._attrs(nd, w.shape)
        begin, _, outs = conv_geometry(x.shape[2:], ks, strides, dil, self.attr("pads"), auto_pad)
        N, C, M = x.shape[0], x.shape[1], w.shape[0]
        if C != w.shape[1] * group or M % group:
            raise ValueError(f"Conv: input channels {C}, weight {tuple(w.shape)}, group {group}")
        y = empty((N, M, *outs), x.dtype)
        if y.size == 0:
            return y
        x, w = contiguous(x), contiguous(w)
        b = contiguous(b) if b is not None else None
        info = _info(N, C, M, group, x.shape[2:], outs, ks, strides, begin, dil)
        mpg, k_dim = M // group, (C // group) * int(np.prod(ks))
        if mpg >= GEMM_MIN and k_dim >= GEMM_MIN:
            # tiled implicit GEMM: (out channels of a group) x (output positions) per (image, group)
            P = int(np.prod(outs))
            fn = loader.get_kernel("conv", f"conv_gemm_k<{ctype(x.dtype)}>")
            grid = (min(-(-P // 64), 65535), min(-(-mpg // 64), 65535), min(N * group, 65535))
            fn(grid, (256,), (x, w, b, y, info))
        else:  # depthwise / tiny convs: one thread per output element
            launch("conv", f"conv_k<{ctype(x.dtype)}>", y.size, (x, w, b, y, i64(y.size), info))
        return y


@kernel("ConvTranspose", since=1, types={"T": FLOATS})
class ConvTranspose(_ConvBase):
    def forward(self, x, w, b=None):
        nd = x.ndim - 2
        ks, strides, dil, group, auto_pad = self._attrs(nd, w.shape)
        ins = list(x.shape[2:])
        opad = list(self.attr("output_padding") or [0] * nd)
        pads = list(self.attr("pads") or [0] * (2 * nd))
        out_shape = self.attr("output_shape")
        full = [strides[i] * (ins[i] - 1) + opad[i] + (ks[i] - 1) * dil[i] + 1 for i in range(nd)]
        if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            outs = list(out_shape)[-nd:] if out_shape else [ins[i] * strides[i] for i in range(nd)]
            total = [full[i] - outs[i] for i in range(nd)]
            begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        else:
            if auto_pad == "VALID":
                pads = [0] * (2 * nd)
            begin = pads[:nd]
            outs = [full[i] - pads[i] - pads[i + nd] for i in range(nd)]
        N, C = x.shape[0], x.shape[1]
        M = w.shape[1] * group
        if w.shape[0] != C or C % group:
            raise ValueError(f"ConvTranspose: input channels {C}, weight {tuple(w.shape)}, group {group}")
        y = empty((N, M, *outs), x.dtype)
        if y.size == 0:
            return y
        x, w = contiguous(x), contiguous(w)
        b = contiguous(b) if b is not None else None
        launch("conv", f"conv_transpose_k<{ctype(x.dtype)}>", y.size,
               (x, w, b, y, i64(y.size), _info(N, C, M, group, ins, outs, ks, strides, begin, dil)))
        return y
