"""Depthwise convolution over a channel's whole output plane as flat 16-float vectors.

Where the output keeps the input's width (stride 1, the usual "same" padding), output position
p = oy*W + ox of a channel reads its input under tap (ky, kx) at p + (ky*dh - ph)*W + kx*dw - pw:
one shift per tap for the whole plane. So 16 consecutive positions, across row ends, are one
vector load at that shift, masked where a lane's row or column falls in the padding (the masks
depend only on the geometry: a table of 16-bit masks per tap and vector, made once). Each output
vector is `taps` fused multiply-adds; four vectors at a time keep four chains in flight. No
lane is wasted on short rows: a 7x7 map is 49 lanes of 64, where the row-wise kernel of
`ep_cpu.depthwise_direct` fills 7 of every 16 (MobileNetV2's 960x7x7 3x3 depthwise: 85 us
there and in the channels-last kernel, onnxruntime 22).

Stride 2 (the output half as wide as the input) splits each channel into its four stride-phase
planes first, in a scratch buffer that stays in cache (a vectorized even/odd copy), in which
every tap is again one flat shift. MaxPool of the same geometries runs the same way, with a
NaN-propagating max over -inf padding in place of the multiply-adds (`max_pool_2d`).

Written in LLVM IR through numba's `intrinsic` (`llvm.masked.load/store`, `llvm.fma`); float32,
AVX-512F CPUs (`available`). The driver is a C callback (`flat_range`) over channel ranges.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu import native_call
from ep_cpu.vector_ir import VectorIR

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

GROUP = 4                # output vectors per call (independent FMA chains)
# A depthwise multiply-add costs about this many of a GEMM's (`native_call.workers_for` counts
# the GEMM's): its loads, masks and the stride-2 phase split (576 channels 14x14 stride 2,
# 254K multiply-adds: 32 us at one thread, ~8 GMAC/s). Counted so, MobileNetV2's small-map
# depthwise convs split between two threads: 32 -> 22 us there, 960x7x7 28.5 -> 17.8 us.
MAC_WEIGHT = 8
# packed arguments of the callback (native_call.pack), in this order
FLAT_ARGS = ("x", "h", "w", "stride", "weights", "taps", "bias", "y", "plane_out", "shifts",
             "masks", "groups", "lo", "hi", "pool_max")


def available() -> bool:
    """AVX-512 only: with AVX2 a 16-bit lane mask becomes a vector mask in several instructions
    and masked stores are microcoded on AMD; measured 4-8x slower than `depthwise_tiles` on MobileNetV2's shapes (Zen 3)."""
    return numba is not None and mk.wide()


def applies(x_shape, kernel_shape, strides, dilations, begin, out_shape) -> bool:
    """Stride 1 with the output as wide as the input, or stride 2 with it as wide as the input's
    stride-phase planes (so every tap is one flat shift)."""
    if len(out_shape) != 2 or min(out_shape) <= 0 or len(strides) != 2:
        return False
    s = int(strides[0])
    return s in (1, 2) and int(strides[1]) == s and int(out_shape[1]) == -(-int(x_shape[3]) // s)


@functools.lru_cache(maxsize=256)
def geometry(h: int, w: int, kh: int, kw: int, dh: int, dw: int, ph: int, pw: int, oh: int,
             stride: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(shifts (taps,) int64, masks (taps + 1, vectors) uint16, groups): tap t of output lane p
    reads input p + shifts[t] (stride 2: of the four phase planes, (2*2, hq, wq) per channel)
    where bit p % 16 of masks[t, p // 16] is set; the last row of masks is the store mask
    (p < oh*ow); vectors is a whole number of GROUPs."""
    ow = -(-w // stride)
    hq = -(-h // stride)
    positions = oh * ow
    vectors = -(-positions // (16 * GROUP)) * GROUP
    p = np.arange(vectors * 16)
    oy, ox = p // ow, p % ow
    taps = kh * kw
    shifts = np.empty(taps, dtype=np.int64)
    bits = np.zeros((taps + 1, vectors * 16), dtype=bool)
    for ky in range(kh):
        for kx in range(kw):
            t = ky * kw + kx
            iy, ix = stride * oy + ky * dh - ph, stride * ox + kx * dw - pw
            oy_, ox_ = ky * dh - ph, kx * dw - pw    # the tap's offset in input rows, columns
            a, b = oy_ % stride, ox_ % stride          # its phase plane, and offset in it
            shifts[t] = ((a * stride + b) * hq + (oy_ - a) // stride) * ow + (ox_ - b) // stride
            bits[t] = (p < positions) & (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    bits[taps] = p < positions
    masks = np.packbits(bits.reshape(taps + 1, vectors, 2, 8), axis=-1, bitorder="little")
    masks = np.ascontiguousarray(masks.reshape(taps + 1, vectors, 2)).view(np.uint16)
    masks = masks.reshape(taps + 1, vectors).copy()
    shifts.flags.writeable = False
    masks.flags.writeable = False
    return shifts, masks, vectors // GROUP


def _make_group(pool_max: bool = False):

    @intrinsic
    def out_group(typingctx, x_arr, x_off, shifts_arr, masks_arr, v0, vectors, taps, w_arr, w_off,
                  bias, lo, hi, y_arr, y_off):
        """y[y_off + 16j + lane] = clamp(bias + sum over taps t of w[w_off + t] *
        x[x_off + 16j + lane + shifts[t]]) for the GROUP vectors j of output vectors v0.., lanes
        masked by masks[t * vectors + v0 + j] (loads) and masks[taps * vectors + v0 + j]
        (store); masked-off lanes are not read or written. `pool_max`: the largest of the
        taps instead (-inf where a tap is masked off, NaN if any is NaN; w, bias unused)."""
        i64 = types.int64
        sig = types.void(x_arr, i64, shifts_arr, masks_arr, i64, i64, i64, w_arr, i64,
                         types.float32, types.float32, types.float32, y_arr, i64)

        def codegen(context, builder, signature, args):
            (x_v, x_o, sh_v, m_v, v0_v, nv_v, taps_v, w_v, w_o, bias_v, lo_v, hi_v, y_v,
             y_o) = args
            tys = signature.args
            vir = VectorIR(builder)
            v16, c64, mask_t, l32 = vir.v16, vir.i64, vir.mask_t, ir.IntType(32)
            masked_load, masked_store = vir.masked_load(), vir.masked_store()
            x, shifts = vir.data(context, tys[0], x_v, x_o), vir.data(context, tys[2], sh_v)
            masks = vir.data(context, tys[3], m_v, v0_v)
            wt, y = vir.data(context, tys[7], w_v, w_o), vir.data(context, tys[12], y_v, y_o)
            zero = ir.Constant(v16, [0.0] * 16)

            def lane_mask(row, j):
                bits = builder.load(builder.gep(masks, [builder.add(builder.mul(row, nv_v), c64(j))]))
                return builder.bitcast(bits, mask_t)   # i16 -> <16 x i1>, bit j = lane j

            fill = ir.Constant(v16, [float("-inf")] * 16) if pool_max else zero
            accs = [cgutils.alloca_once_value(builder, fill if pool_max else vir.broadcast(bias_v))
                    for _ in range(GROUP)]
            with cgutils.for_range(builder, taps_v) as loop:
                t = loop.index
                wv = vir.broadcast(builder.load(builder.gep(wt, [t])))
                base = builder.gep(x, [builder.load(builder.gep(shifts, [t]))])
                for j in range(GROUP):
                    ptr = vir.ptr(base, c64(16 * j))
                    v = builder.call(masked_load, [ptr, ir.Constant(l32, 4), lane_mask(t, j), fill])
                    acc = builder.load(accs[j])
                    if pool_max:   # the larger, NaN if either is (as np.maximum)
                        bigger = builder.select(builder.fcmp_ordered(">", v, acc), v, acc)
                        acc = builder.select(builder.fcmp_unordered("uno", acc, v),
                                             builder.fadd(acc, v), bigger)
                    else:
                        acc = builder.call(vir.fma, [wv, v, acc])
                    builder.store(acc, accs[j])
            lo_s, hi_s = vir.broadcast(lo_v), vir.broadcast(hi_v)
            for j in range(GROUP):
                out = vir.clamp(builder.load(accs[j]), lo_s, hi_s)
                builder.call(masked_store, [out, vir.ptr(y, c64(16 * j)), ir.Constant(l32, 4),
                                            lane_mask(taps_v, j)])
            return context.get_dummy_value()

        return sig, codegen

    return out_group


def _make_split():

    @intrinsic
    def split_pairs(typingctx, x_arr, x_off, n, out_arr, d0, d1):
        """Up to 32 values x[x_off : + n]: the even ones to out[d0 :], the odd ones to out[d1 :]
        (two masked loads, two shuffles, two masked stores; masked-off lanes not touched)."""
        i64 = types.int64
        sig = types.void(x_arr, i64, i64, out_arr, i64, i64)

        def codegen(context, builder, signature, args):
            x_v, x_o, n_v, o_v, d0_v, d1_v = args
            tys = signature.args
            vir = VectorIR(builder)
            c64, first, l32 = vir.i64, vir.first_lanes, ir.IntType(32)
            masked_load, masked_store = vir.masked_load(), vir.masked_store()
            x, out = vir.data(context, tys[0], x_v, x_o), vir.data(context, tys[3], o_v)

            sixteen = c64(16)
            n_lo = builder.select(builder.icmp_signed("<", n_v, sixteen), n_v, sixteen)
            n_hi = builder.select(builder.icmp_signed(">", n_v, sixteen), builder.sub(n_v, sixteen), c64(0))
            zero = ir.Constant(vir.v16, [0.0] * 16)
            align = ir.Constant(l32, 4)
            lo = builder.call(masked_load, [vir.ptr(x, c64(0)), align, first(n_lo), zero])
            hi = builder.call(masked_load, [vir.ptr(x, sixteen), align, first(n_hi), zero])
            even = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(l32, 16), list(range(0, 32, 2))))
            odd = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(l32, 16), list(range(1, 32, 2))))
            n_even = builder.ashr(builder.add(n_v, c64(1)), c64(1))
            builder.call(masked_store, [even, vir.ptr(out, d0_v), align, first(n_even)])
            builder.call(masked_store, [odd, vir.ptr(out, d1_v), align, first(builder.ashr(n_v, c64(1)))])
            return context.get_dummy_value()

        return sig, codegen

    return split_pairs


if numba is not None:
    out_group = _make_group()
    max_group = _make_group(pool_max=True)
    split_pairs = _make_split()

    from ep_cpu.native_call import f32_at, f64_at, i64_at, u16_at

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _phase_planes(x, x_off, h, w, hq, wq, out):  # pragma: no cover - compiled
        # one channel x[x_off : + h*w] -> out (2, 2, hq, wq): plane (a, b) row i = input row
        # 2i + a, columns b::2: 32 columns at a time through `split_pairs` (the scalar split
        # LLVM made of a 7-column loop took ~55 ns of a 14x14 channel's ~80)
        plane = hq * wq
        if w <= 32:   # one call a row, its lane masks computed once
            for i in range(h):
                d0 = 2 * (i & 1) * plane + (i >> 1) * wq
                split_pairs(x, x_off + i * w, w, out, d0, d0 + plane)
            return
        for i in range(h):
            src = x_off + i * w
            d0 = 2 * (i & 1) * plane + (i >> 1) * wq
            for j0 in range(0, w, 32):
                split_pairs(x, src + j0, min(32, w - j0), out, d0 + (j0 >> 1), d0 + plane + (j0 >> 1))

    def _flat_range(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # channels [c0, c1) of one image (FLAT_ARGS packed); rows [r0, r1) unused
        a = numba.carray(f64_at(args_at), (15,))
        h, w, stride = np.int64(a[1]), np.int64(a[2]), np.int64(a[3])
        taps, plane_out, groups = np.int64(a[5]), np.int64(a[8]), np.int64(a[11])
        vectors = groups * GROUP
        x = numba.carray(f32_at(np.int64(a[0])), (c1 * h * w,))
        wt = numba.carray(f32_at(np.int64(a[4])), (c1 * taps,))
        bias = numba.carray(f32_at(np.int64(a[6])), (c1,))
        y = numba.carray(f32_at(np.int64(a[7])), (c1 * plane_out,))
        shifts = numba.carray(i64_at(np.int64(a[9])), (taps,))
        masks = numba.carray(u16_at(np.int64(a[10])), ((taps + 1) * vectors,))
        lo, hi = np.float32(a[12]), np.float32(a[13])
        hq, wq = (h + stride - 1) // stride, (w + stride - 1) // stride
        # stride 2: two plane buffers, channel c+1 split while channel c's taps read the other
        # (its loads straight after the split's stores stalled: 576x14x14 50 -> 20 us without)
        size = 4 * hq * wq if stride == 2 else 1
        planes = np.empty(2 * size, dtype=np.float32)
        if stride == 2 and c0 < c1:
            _phase_planes(x, c0 * h * w, h, w, hq, wq, planes)
        for c in range(c0, c1):
            cur = (c - c0) & 1
            if stride == 2 and c + 1 < c1:
                _phase_planes(x, (c + 1) * h * w, h, w, hq, wq, planes[(1 - cur) * size:])
            for g in range(groups):
                v0 = g * GROUP
                src, off = (planes, cur * size + 16 * v0) if stride == 2 else (x, c * h * w + 16 * v0)
                if a[14] != 0:   # MaxPool
                    max_group(src, off, shifts, masks, v0, vectors, taps, wt, 0, np.float32(0.0), lo,
                              hi, y, c * plane_out + 16 * v0)
                else:
                    out_group(src, off, shifts, masks, v0, vectors, taps, wt, c * taps, bias[c], lo,
                              hi, y, c * plane_out + 16 * v0)

    def flat_range():
        """C callback (native_call.RANGE_SIG) over channel ranges [c0, c1) of one image, its
        arguments packed in FLAT_ARGS order; compiled or loaded from the disk cache on first use."""
        return native_call.callback(_flat_range, len(FLAT_ARGS))


def depthwise_2d(x: np.ndarray, w: np.ndarray, strides, dilations, begin, out_shape,
                 bias: np.ndarray | None, clamp: tuple[float, float] | None, threads: int,
                 pool: Callable) -> np.ndarray:
    """Depthwise conv of float32 x (N, C, H, W) with w (C, 1, KH, KW), bias and an optional
    clamp (Relu, Clip; NaN passes it), strides 1 or 2 with the output as wide as x or its
    phase planes (`applies`). A new (N, C, OH, OW) array."""
    c = x.shape[1]
    kh, kw = w.shape[2:]
    w2 = np.ascontiguousarray(w.reshape(c, kh * kw), dtype=np.float32)
    b = (np.zeros(c, dtype=np.float32) if bias is None
         else np.ascontiguousarray(bias, dtype=np.float32).reshape(c))
    return FlatPlan(x.shape, w2, b, (kh, kw), strides, dilations, begin, out_shape, clamp,
                    threads)(x, pool)


def max_pool_2d(x: np.ndarray, kernel_shape, strides, dilations, begin, out_shape, threads: int,
                pool: Callable) -> np.ndarray:
    """MaxPool of float32 x (N, C, H, W) (-inf padding, NaN propagates), same geometries as
    `depthwise_2d` (`applies`). A new (N, C, OH, OW) array."""
    kh, kw = (int(k) for k in kernel_shape)
    none = np.zeros(max(1, x.shape[1] * kh * kw), dtype=np.float32)   # weights, bias: not read
    return FlatPlan(x.shape, none, none, (kh, kw), strides, dilations, begin, out_shape, None,
                    threads, pool_max=True)(x, pool)


class FlatPlan:
    """One depthwise conv's (or MaxPool's) call for one input shape: geometry, thread count and
    packed arguments (FLAT_ARGS) decided once, so a run allocates y and writes two addresses
    an image (the rest took ~10 us of a 7x7 map's ~30). w2 (C, taps) and b (C,) float32,
    C-contiguous, kept; `bias` is the array the plan was made for (its caller checks it)."""

    def __init__(self, x_shape: tuple, w2: np.ndarray, b: np.ndarray, kernel_shape, strides,
                 dilations, begin, out_shape, clamp: tuple[float, float] | None, threads: int,
                 pool_max: bool = False, bias: np.ndarray | None = None) -> None:
        n, c, h, wd = (int(v) for v in x_shape)
        kh, kw = (int(v) for v in kernel_shape)
        oh, ow = (int(v) for v in out_shape)
        stride = int(strides[0])
        shifts, masks, groups = geometry(h, wd, kh, kw, int(dilations[0]), int(dilations[1]),
                                         int(begin[0]), int(begin[1]), oh, stride)
        lo, hi = (-math.inf, math.inf) if clamp is None else clamp
        self.x_shape, self.threads, self.bias = tuple(x_shape), threads, bias
        self.y_shape = (n, c, oh, ow)
        self.workers = native_call.workers_for(threads, c, MAC_WEIGHT * n * c * oh * ow * kh * kw)
        self._keep = (w2, b, shifts, masks)   # addresses in the template
        at = native_call.address
        # the last group's masked-off lanes reach past the plane: never read, never written
        self.template = native_call.pack(0, h, wd, stride, at(w2), kh * kw, at(b), 0, oh * ow,
                                         shifts.ctypes.data, masks.ctypes.data, groups, lo, hi,
                                         pool_max)

    def __call__(self, x: np.ndarray, pool: Callable) -> np.ndarray:
        """A new (N, C, OH, OW) array from float32 x of `x_shape`."""
        return native_call.run_images(flat_range(), self.template, x, self.y_shape, 0, 7, self.workers,
                                      pool)
