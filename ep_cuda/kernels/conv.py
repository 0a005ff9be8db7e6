"""Conv and ConvTranspose (kernels_cu/conv.cu), 1-D to 3-D, groups, dilations, pads, auto_pad.

Conv runs, by shape:
* depthwise (group == channels, one input channel per group, 1-D/2-D): `depthwise_k`;
* 1x1, stride 1, no padding: a plain batched GEMM (gemm.cu) over the pixels;
* otherwise an implicit GEMM on the GEMM engine's tiles (`conv_simt_k` / `conv_tc_k`) that
  gathers im2col columns while staging them.
Bias, a residual (FusedConv's Z) and the activation are applied in the epilogue.

Layout: with the provider option `prefer_nhwc` (read once per session) outputs are produced
channels-last: an NCHW-shaped array whose memory is NHWC. Every kernel of this provider reads
inputs through strides, so the next convolution gathers 16-byte channel vectors and the tensor
cores are fed without transposes; other ops see an ordinary (non-contiguous) NCHW tensor.
Attributes are parsed once into the provider-neutral `ep_core.op_attributes.ConvAttributes`
(shared with the CPU provider), which also gives pads and output shapes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ep_core.op_attributes import ConvAttributes

from .. import loader
from ..launch import (FLOATS, CudaKernel, blob, contiguous, cp, ctype, elem_strides, empty, i64,
                      launch, settings)
from ..registry import kernel
from .gemm import SIMT, TC, Epilogue, _aligned, batched_gemm, run_engine

CONV_SIMT = ("simt:big", "simt:small")
loader.declare("conv", [f"conv_transpose_k<{ctype(t)}>" for t in FLOATS]
               + [f"conv_simt_k<{ctype(t)}, {SIMT[v][0]}>" for t in FLOATS for v in CONV_SIMT]
               + [f"conv_tc_k<{ctype(t)}, {TC[v][0]}>" for t in FLOATS for v in TC]
               + [f"depthwise_k<{ctype(t)}, {k}, {k}>" for t in FLOATS for k in (0, 3, 5)])


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


def _flat_spatial(shape: Sequence[int], st: Sequence[int]) -> int | None:
    """Element stride of the flattened spatial position of an (N, C, *spatial) array, or None
    when the spatial dims do not flatten with one stride."""
    sp, ss = list(shape[2:]), list(st[2:])
    for d in range(len(sp) - 1):
        if sp[d] > 1 and sp[d + 1] > 1 and ss[d] != ss[d + 1] * sp[d + 1]:
            return None
    inner = [s for n, s in zip(sp, ss) if n > 1]
    return inner[-1] if inner else 1


def alloc_output(shape: Sequence[int], dtype, channels_last: bool) -> Any:
    """(N, M, *spatial) array; channels-last memory when asked (an NCHW-shaped strided view)."""
    if not channels_last or len(shape) < 3:
        return empty(shape, dtype)
    n, m, sp = shape[0], shape[1], list(shape[2:])
    base = empty([n] + sp + [m], dtype)
    return base.transpose([0, len(shape) - 1] + list(range(1, len(shape) - 1)))


class _ConvBase(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)

    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node)


def _constant_input(kern: CudaKernel, k: int) -> bool:
    """Whether input k is a session constant (the kernel context says so): only then may a kernel
    keep a re-laid-out copy across runs."""
    ctx = getattr(kern, "ctx", None)
    return ctx is not None and ctx.is_constant(k)


@kernel("Conv", since=1, types={"T": FLOATS})
class Conv(_ConvBase):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._packed: tuple | None = None   # (weight identity, tap-major weights)

    def forward(self, x, w, b=None):
        return self.run(x, w, b)

    def run(self, x, w, b=None, z=None, act: int = -1, p0: float = 0.0, p1: float = 0.0):
        """act(conv(x, w) + b + z); z (optional) has the output's shape."""
        nd = x.ndim - 2
        ks, strides, dil, begin, _, outs = self.conv.geometry(list(x.shape[2:]), w.shape)
        group = self.conv.group
        N, C, M = x.shape[0], x.shape[1], w.shape[0]
        if C != w.shape[1] * group or M % group:
            raise ValueError(f"Conv: input channels {C}, weight {tuple(w.shape)}, group {group}")
        y = alloc_output((N, M, *outs), x.dtype, settings().prefer_nhwc)
        if y.size == 0:
            return y
        if z is not None and _flat_spatial(z.shape, elem_strides(z)) is None:
            z = contiguous(z)
        if b is not None:
            b = contiguous(b)
        if group == C and w.shape[1] == 1 and nd <= 2:
            return self._depthwise(x, w, b, z, y, ks, strides, begin, dil, act, p0, p1)
        if all(k == 1 for k in ks) and all(s == 1 for s in strides) and not any(begin) \
                and all(o == i for o, i in zip(outs, x.shape[2:])):
            return self._pointwise(x, w, b, z, y, group, act, p0, p1)
        return self._implicit_gemm(x, w, b, z, y, ks, strides, begin, dil, group, outs, act, p0, p1)

    # -- 1x1, stride 1, no padding: a batched GEMM, W_g (mpg x cpg) @ X_g (cpg x pixels)
    def _pointwise(self, x, w, b, z, y, group, act, p0, p1):
        N, C = x.shape[:2]
        M = w.shape[0]
        cpg, mpg = C // group, M // group
        P = int(np.prod(x.shape[2:]))
        if _flat_spatial(x.shape, elem_strides(x)) is None:
            x = contiguous(x)
        w2 = contiguous(w).reshape(M, cpg)
        xs, ys = elem_strides(x), elem_strides(y)
        xp, yp = _flat_spatial(x.shape, xs), _flat_spatial(y.shape, ys)
        zs = elem_strides(z) if z is not None else None
        zp = _flat_spatial(z.shape, zs) if z is not None else None

        def merges(st, p):  # images and pixels form one column axis (channels-last, or N == 1)
            return N == 1 or st[0] == p * P
        if merges(xs, xp) and merges(ys, yp) and (z is None or merges(zs, zp)):
            out = _as_view(y, (group, mpg, N * P), (mpg * ys[1], ys[1], yp))
            rz = None if z is None else _as_view(z, (group, mpg, N * P), (mpg * zs[1], zs[1], zp))
            batched_gemm([group, mpg, cpg], [mpg * cpg, cpg, 1], [group, cpg, N * P],
                         [cpg * xs[1], xs[1], xp], w2, x,
                         None if b is None else b.reshape(group, mpg, 1), 1.0, 1.0, r=rz,
                         act=act, p0=p0, p1=p1, out=out)
            return y
        out = _as_view(y, (N, group, mpg, P), (ys[0], mpg * ys[1], ys[1], yp))
        rz = None if z is None else _as_view(z, (N, group, mpg, P), (zs[0], mpg * zs[1], zs[1], zp))
        batched_gemm([1, group, mpg, cpg], [0, mpg * cpg, cpg, 1], [N, group, cpg, P],
                     [xs[0], cpg * xs[1], xs[1], xp], w2, x,
                     None if b is None else b.reshape(1, group, mpg, 1), 1.0, 1.0, r=rz, act=act,
                     p0=p0, p1=p1, out=out)
        return y

    # -- general convolution: implicit GEMM
    def _weights(self, w, tapmajor: bool):
        if not tapmajor:
            return contiguous(w)
        M, cpg = w.shape[:2]
        ksp = int(np.prod(w.shape[2:]))
        key = (id(w), tuple(w.shape), w.dtype.str)
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        from .tensor import transpose
        packed = transpose(contiguous(w).reshape(M, cpg, ksp), (0, 2, 1))   # (M, taps, cpg)
        if _constant_input(self, 1):
            self._packed = (key, packed)
        return packed

    def _implicit_gemm(self, x, w, b, z, y, ks, strides, begin, dil, group, outs, act, p0, p1):
        N, C = x.shape[:2]
        M = w.shape[0]
        cpg, mpg = C // group, M // group
        P = int(np.prod(outs))
        ksp = int(np.prod(ks))
        xs = list(elem_strides(x))
        ys = list(elem_strides(y))
        item = x.dtype.itemsize
        nd = x.ndim - 2
        # tap-major k order (channels innermost) lets channels-last inputs load 16-byte vectors
        spatial_ok = all(s % 4 == 0 for s in xs[2:]) and xs[0] % 4 == 0
        tapmajor = xs[1] == 1 and cpg % 4 == 0 and spatial_ok and _aligned(x, 4 * item)
        tc_vec = int(tapmajor and cpg % (16 // item) == 0 and _aligned(x, 16)
                     and all(s % (16 // item) == 0 for s in [xs[0]] + xs[2:]))
        wk = self._weights(w, tapmajor)
        Kd = cpg * ksp
        yp = _flat_spatial(y.shape, ys)
        f = dict(M=mpg, N=N * P, K=Kd, batches=group, bshape=[group],
                 a_bst=[mpg * Kd], b_bst=[cpg * xs[1]], c_bst=[mpg], y_bst=[mpg * ys[1]],
                 r_bst=[0], sam=Kd, sak=1, jdiv=P, y_m=ys[1], y_jo=ys[0], y_ji=yp,
                 cv_cpg=cpg, cv_tapmajor=int(tapmajor), cv_ksp=ksp,
                 cv_khw=int(np.prod(as3d(ks, 1)[1:])), cv_k=as3d(ks, 1), cv_out=as3d(outs, 1),
                 cv_in=as3d(x.shape[2:], 1), cv_stride=as3d(strides, 1),
                 cv_pad=as3d(begin, 0), cv_dil=as3d(dil, 1), cv_xn=xs[0], cv_xc=xs[1],
                 cv_xs=[0] * (3 - nd) + xs[2:])
        if b is not None:
            f.update(c_m=1)
        if z is not None:
            zs = elem_strides(z)
            f.update(r_bst=[mpg * zs[1]], r_m=zs[1], r_jo=zs[0], r_ji=_flat_spatial(z.shape, zs))
        a_vec = {"simt": int(Kd % 4 == 0 and _aligned(wk, 4 * item)),
                 "tc": int(Kd % (16 // item) == 0 and _aligned(wk, 16))}
        b_vec = {"simt": int(tapmajor), "tc": tc_vec}
        key = (f"conv|{N}x{C}x{'x'.join(map(str, x.shape[2:]))}|{M}k{'x'.join(map(str, ks))}"
               f"s{'x'.join(map(str, strides))}g{group}|tap{int(tapmajor)}{tc_vec}")
        epi = Epilogue(1.0, 1.0, b, z, act, p0, p1)
        forced = settings().force.get("conv")
        if forced is not None and forced not in CONV_SIMT and not forced.startswith("tc"):
            raise ValueError(f"unknown conv variant {forced!r}")
        run_engine("conv", wk, x, y, epi, f, a_vec, b_vec, True, True, key)
        return y

    # -- depthwise
    def _depthwise(self, x, w, b, z, y, ks, strides, begin, dil, act, p0, p1):
        nd = x.ndim - 2
        N, C = x.shape[:2]
        M = w.shape[0]
        w = contiguous(w)

        def two(v, fill):
            return [fill] * (2 - len(v)) + [int(s) for s in v]

        def st4(a):
            s = list(elem_strides(a))
            return s[:2] + [0] * (2 - nd) + s[2:]
        rs = st4(z) if z is not None else [0, 0, 0, 0]
        ys = st4(y)
        chlast = int(ys[1] == 1 and M > 1)
        info = blob([N, M, M // C] + two(x.shape[2:], 1) + two(y.shape[2:], 1) + two(ks, 1)
                    + two(strides, 1) + two(begin, 0) + two(dil, 1) + st4(x) + ys + rs + [chlast])
        kh, kw = two(ks, 1)
        k = kh if kh == kw and kh in (3, 5) else 0
        launch("conv", f"depthwise_k<{ctype(x.dtype)}, {k}, {k}>", y.size,
               (x, w, b, z, y, i64(y.size), np.int32(act), np.float32(p0), np.float32(p1), info))
        return y


def _as_view(arr: Any, shape: Sequence[int], strides: Sequence[int]) -> Any:
    """A view of `arr`'s memory with the given shape and element strides (numpy or CuPy)."""
    item = arr.dtype.itemsize
    return cp.lib.stride_tricks.as_strided(arr, tuple(shape), tuple(int(s) * item for s in strides))


@kernel("ConvTranspose", since=1, types={"T": FLOATS})
class ConvTranspose(_ConvBase):
    def forward(self, x, w, b=None):
        ins = list(x.shape[2:])
        ks, strides, dil, begin, outs, _ = self.conv.transpose_geometry(ins, w.shape)
        group = self.conv.group
        N, C = x.shape[0], x.shape[1]
        M = w.shape[1] * group
        if w.shape[0] != C or C % group:
            raise ValueError(f"ConvTranspose: input channels {C}, weight {tuple(w.shape)}, group {group}")
        y = empty((N, M, *outs), x.dtype)
        if y.size == 0:
            return y
        x, w = contiguous(x), contiguous(w)
        b = contiguous(b) if b is not None else None
        info = blob([N, C, M, group] + as3d(ins, 1) + as3d(outs, 1) + as3d(ks, 1)
                    + as3d(strides, 1) + as3d(begin, 0) + as3d(dil, 1))
        launch("conv", f"conv_transpose_k<{ctype(x.dtype)}>", y.size, (x, w, b, y, i64(y.size), info))
        return y
