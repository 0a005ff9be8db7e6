"""Depthwise convolution through a zero-padded copy of each channel: every tap one flat shift,
no lane masks in the multiply-adds. It runs on AVX2 and AVX-512 CPUs; `ep_cpu.conv_depthwise`
routes AVX2's depthwise convs of strides 1 and 2 here.

A channel is copied into a scratch plane with its padding as zeros, rows `wq` values apart
(stride 1: the padded image; stride 2: its four stride-phase planes, each input row split into
even and odd columns). Output position q = oy*wq + ox of the plane's grid reads tap (ky, kx) at
q + shifts[t]: one unmasked vector load per tap and 16 positions, the positions past a row's
`ow` outputs computed and dropped. The sums go to a second scratch (`tap_group`: four 16-float
accumulators, bias first, clamp last), whose rows are copied into y. Only the copies touch a
lane mask, and only for loads: AMD's AVX2 CPUs microcode a masked store (`depthwise_flat`,
which masks every tap and store, is the AVX-512 kernel). The copies store whole vectors; what
spills past a row is zeros (a padded plane's padding) or is rewritten by the next row, and a
range's last outputs are stored one by one, so threads splitting the channels never meet.

MobileNetV2's 3x3 depthwise convs on Zen 3 (1 thread, per conv, against the kernels
`ep_cpu.conv_depthwise` picked before): see `benchmarks/README.md`.
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

GROUP = 4        # 16-float output vectors per `tap_group` call (8 AVX2 accumulators)
SPAN = 16 * GROUP
# packed arguments of the callback (native_call.pack), in this order
PADDED_ARGS = ("x", "h", "w", "stride", "weights", "taps", "bias", "y", "oh", "ow", "shifts",
               "ph", "pw", "hp", "wp", "wq", "plane_stride", "nq", "p_size", "lo", "hi")


def available() -> bool:
    return numba is not None and mk.available()


# Padded image (values) up to which a channel takes this path: its four scratch planes stay a
# few MB (a 1024x1024 map); larger maps keep the kernels of `ep_cpu.conv_depthwise`
MAX_PLANE = 1 << 20


def applies(kernel_shape, strides, dilations, begin, out_shape) -> bool:
    """Strides 1 or 2 (the same both ways), no dilation, non-negative leading pads, a padded
    image of at most MAX_PLANE values."""
    if len(out_shape) != 2 or min(out_shape) <= 0 or len(strides) != 2 or len(kernel_shape) != 2:
        return False
    s = int(strides[0])
    hp = s * (int(out_shape[0]) - 1) + int(kernel_shape[0])
    wp = s * (int(out_shape[1]) - 1) + int(kernel_shape[1])
    return (s in (1, 2) and int(strides[1]) == s and all(int(d) == 1 for d in dilations)
            and min(int(b) for b in begin) >= 0 and hp * wp <= MAX_PLANE)


@functools.lru_cache(maxsize=256)
def geometry(kh: int, kw: int, oh: int, ow: int, stride: int) -> tuple[np.ndarray, tuple]:
    """(shifts (taps,) int64, (hp, wp, wq, plane_stride, nq, p_size)): the padded image hp x wp;
    plane rows wq values apart (stride 2: four phase planes plane_stride apart, a gap after each
    for the copies' spill); nq grid positions computed (whole tap groups); p_size the scratch
    plane's values (what the taps read past the grid included)."""
    hp, wp = stride * (oh - 1) + kh, stride * (ow - 1) + kw
    hq, wq = -(-hp // stride), -(-wp // stride)
    plane_stride = hq * wq + (2 * 16 if stride == 2 else 0)
    shifts = np.array([((ky % stride) * stride + kx % stride) * plane_stride
                       + (ky // stride) * wq + kx // stride
                       for ky in range(kh) for kx in range(kw)], dtype=np.int64)
    nq = -(-oh * wq // SPAN) * SPAN
    p_size = max(stride * stride * plane_stride, int(shifts.max()) + nq) + 32
    shifts.flags.writeable = False
    return shifts, (hp, wp, wq, plane_stride, nq, p_size)


def _lanes_below(builder, n, width: int):
    """<width x i1>: lane < n, as a vector compare (AVX2 takes it as a masked load's mask as it
    is; the bit mask `first_lanes` builds costs several instructions to widen there)."""
    i32 = ir.IntType(32)
    vec = ir.VectorType(i32, width)
    splat = builder.insert_element(ir.Constant(vec, None), builder.trunc(n, i32), ir.Constant(i32, 0))
    splat = builder.shuffle_vector(splat, ir.Constant(vec, None), ir.Constant(vec, [0] * width))
    return builder.icmp_signed("<", ir.Constant(vec, list(range(width))), splat)


def _make_kernels():
    i64, f32 = types.int64, types.float32

    @intrinsic
    def tap_group(typingctx, p_arr, p_off, shifts_arr, taps, w_arr, w_off, bias, lo, hi, q_arr,
                  q_off):
        """q[q_off + 16j + lane] = clamp(bias + sum over taps t of w[w_off + t] *
        p[p_off + 16j + lane + shifts[t]], lo, hi) for j < GROUP: unmasked loads and stores
        (p and q hold every value read and written)."""
        sig = types.void(p_arr, i64, shifts_arr, i64, w_arr, i64, f32, f32, f32, q_arr, i64)

        def codegen(context, builder, signature, args):
            p_v, p_o, sh_v, taps_v, w_v, w_o, bias_v, lo_v, hi_v, q_v, q_o = args
            tys = signature.args
            vir = VectorIR(builder)
            p, shifts = vir.data(context, tys[0], p_v, p_o), vir.data(context, tys[2], sh_v)
            wt, q = vir.data(context, tys[4], w_v, w_o), vir.data(context, tys[9], q_v, q_o)
            accs = [cgutils.alloca_once_value(builder, vir.broadcast(bias_v)) for _ in range(GROUP)]
            with cgutils.for_range(builder, taps_v) as loop:
                t = loop.index
                wv = vir.broadcast(builder.load(builder.gep(wt, [t])))
                base = builder.gep(p, [builder.load(builder.gep(shifts, [t]))])
                for j in range(GROUP):
                    v = builder.load(vir.ptr(base, vir.i64(16 * j)), align=4)
                    builder.store(builder.call(vir.fma, [wv, v, builder.load(accs[j])]), accs[j])
            lo_s, hi_s = vir.broadcast(lo_v), vir.broadcast(hi_v)
            for j in range(GROUP):
                out = vir.clamp(builder.load(accs[j]), lo_s, hi_s)
                builder.store(out, vir.ptr(q, vir.i64(16 * j)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tap_group


def _make_copies(LANES: int):
    """copy_run, move, split_run on vectors of LANES floats. The drivers move 16 floats at a
    time and a row's last 8 or fewer as 8 (AVX2: 7x7 and 14x14 maps' rows in 16-float vectors
    cost twice the loads and stores; 112x112's rows in 8-float ones ran ~15% slower)."""
    i64 = types.int64
    vec = ir.VectorType(ir.FloatType(), LANES)
    align = ir.Constant(ir.IntType(32), 4)

    def masked_load(builder, ptr, n):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec.as_pointer(), ir.IntType(32),
                                                  ir.VectorType(ir.IntType(1), LANES), vec]),
            f"llvm.masked.load.v{LANES}f32.p0v{LANES}f32")
        return builder.call(fn, [builder.bitcast(ptr, vec.as_pointer()), align,
                                 _lanes_below(builder, n, LANES), ir.Constant(vec, [0.0] * LANES)])

    def store(builder, value, ptr):
        builder.store(value, builder.bitcast(ptr, vec.as_pointer()), align=4)

    @intrinsic
    def copy_run(typingctx, x_arr, x_off, n, out_arr, dst):
        """out[dst : + LANES] = x[x_off : + n] then zeros (a masked load: x is not read past n;
        a whole store)."""
        sig = types.void(x_arr, i64, i64, out_arr, i64)

        def codegen(context, builder, signature, args):
            x_v, x_o, n_v, o_v, d_v = args
            tys = signature.args
            vir = VectorIR(builder)
            x, out = vir.data(context, tys[0], x_v, x_o), vir.data(context, tys[3], o_v, d_v)
            store(builder, masked_load(builder, x, n_v), out)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def move(typingctx, src_arr, s_off, dst_arr, d_off):
        """dst[d_off : + LANES] = src[s_off : + LANES] (one vector load and store)."""
        sig = types.void(src_arr, i64, dst_arr, i64)

        def codegen(context, builder, signature, args):
            s_v, s_o, d_v, d_o = args
            tys = signature.args
            vir = VectorIR(builder)
            src, dst = vir.data(context, tys[0], s_v, s_o), vir.data(context, tys[2], d_v, d_o)
            store(builder, builder.load(builder.bitcast(src, vec.as_pointer()), align=4), dst)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def split_run(typingctx, x_arr, x_off, n, out_arr, d0, d1):
        """Up to 2*LANES values x[x_off : + n]: the even ones to out[d0 : + LANES], the odd
        ones to out[d1 : + LANES], zeros after them (masked loads; whole stores)."""
        sig = types.void(x_arr, i64, i64, out_arr, i64, i64)

        def codegen(context, builder, signature, args):
            x_v, x_o, n_v, o_v, d0_v, d1_v = args
            tys = signature.args
            vir = VectorIR(builder)
            c64, l32 = vir.i64, ir.IntType(32)
            x, out = vir.data(context, tys[0], x_v, x_o), vir.data(context, tys[3], o_v)
            width = c64(LANES)
            n_lo = builder.select(builder.icmp_signed("<", n_v, width), n_v, width)
            n_hi = builder.select(builder.icmp_signed(">", n_v, width), builder.sub(n_v, width), c64(0))
            lo = masked_load(builder, x, n_lo)
            hi = masked_load(builder, builder.gep(x, [width]), n_hi)
            for first, d_v in ((0, d0_v), (1, d1_v)):
                lanes = ir.Constant(ir.VectorType(l32, LANES), list(range(first, 2 * LANES, 2)))
                store(builder, builder.shuffle_vector(lo, hi, lanes), builder.gep(out, [d_v]))
            return context.get_dummy_value()

        return sig, codegen

    return copy_run, move, split_run


if numba is not None:
    tap_group = _make_kernels()
    copy16, move16, split16 = _make_copies(16)
    copy8, move8, split8 = _make_copies(8)
    from ep_cpu.native_call import f32_at, f64_at, i64_at

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _fill(x, xo, h, w, stride, ph, pw, hp, wp, wq, plane_stride, p):  # pragma: no cover
        # channel x[xo : + h*w] into the padded plane (stride 2: its phase planes); input rows
        # and columns past the padded image are not copied
        rows, cols = min(h, hp - ph), min(w, wp - pw)
        for iy in range(rows):
            src, r = xo + iy * w, iy + ph
            if stride == 1:
                dst = r * wq + pw
                for j0 in range(0, cols, 16):
                    if cols - j0 > 8:
                        copy16(x, src + j0, min(16, cols - j0), p, dst + j0)
                    else:
                        copy8(x, src + j0, cols - j0, p, dst + j0)
            else:   # even columns of padded column pw + j to phase (pw + j) & 1, column (pw + j) >> 1
                row = (r & 1) * 2 * plane_stride + (r >> 1) * wq
                d_even = row + (pw & 1) * plane_stride + (pw >> 1)
                d_odd = row + ((pw + 1) & 1) * plane_stride + ((pw + 1) >> 1)
                for j0 in range(0, cols, 32):
                    if cols - j0 > 16:
                        split16(x, src + j0, min(32, cols - j0), p, d_even + (j0 >> 1),
                                d_odd + (j0 >> 1))
                    else:
                        split8(x, src + j0, cols - j0, p, d_even + (j0 >> 1), d_odd + (j0 >> 1))

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _copy_out(q, q_off, wq, y, y_off, oh, ow, end):  # pragma: no cover - compiled
        # the grid's rows (wq apart from q_off) -> one channel's oh x ow outputs at y_off; whole
        # vectors spill into the next row, none past `end`
        for oy in range(oh):
            src, dst = q_off + oy * wq, y_off + oy * ow
            for j0 in range(0, ow, 16):
                if ow - j0 > 8 and dst + j0 + 16 <= end:
                    move16(q, src + j0, y, dst + j0)
                elif ow - j0 <= 8 and dst + j0 + 8 <= end:
                    move8(q, src + j0, y, dst + j0)
                else:
                    for lane in range(min(16, ow - j0)):
                        y[np.uint64(dst + j0 + lane)] = q[np.uint64(src + j0 + lane)]

    def _padded_range(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # channels [c0, c1) of one image (PADDED_ARGS packed); rows [r0, r1) unused
        a = numba.carray(f64_at(args_at), (21,))
        h, w, stride, taps = np.int64(a[1]), np.int64(a[2]), np.int64(a[3]), np.int64(a[5])
        oh, ow, ph, pw = np.int64(a[8]), np.int64(a[9]), np.int64(a[11]), np.int64(a[12])
        hp, wp, wq, plane_stride = np.int64(a[13]), np.int64(a[14]), np.int64(a[15]), np.int64(a[16])
        nq, p_size = np.int64(a[17]), np.int64(a[18])
        lo, hi = np.float32(a[19]), np.float32(a[20])
        x = numba.carray(f32_at(np.int64(a[0])), (c1 * h * w,))
        wt = numba.carray(f32_at(np.int64(a[4])), (c1 * taps,))
        bias = numba.carray(f32_at(np.int64(a[6])), (c1,))
        y = numba.carray(f32_at(np.int64(a[7])), (c1 * oh * ow,))
        shifts = numba.carray(i64_at(np.int64(a[10])), (taps,))
        # two of each scratch: channel c + 1 is copied in and channel c - 1 copied out while
        # channel c's taps run, so no load reads a value stored just before it (a load across
        # two recent stores waits for them: 960x7x7 copied out at ~14 cycles a row otherwise)
        p = np.zeros(2 * p_size, dtype=np.float32)   # the padding: zeros, never written otherwise
        q = np.empty(2 * (nq + 16), dtype=np.float32)
        end = c1 * oh * ow    # this range's last output: nothing stored past it
        if c0 < c1:
            _fill(x, c0 * h * w, h, w, stride, ph, pw, hp, wp, wq, plane_stride, p[:p_size])
        for c in range(c0, c1 + 1):
            cur = (c - c0) & 1
            if c + 1 < c1:
                _fill(x, (c + 1) * h * w, h, w, stride, ph, pw, hp, wp, wq, plane_stride,
                      p[(1 - cur) * p_size:])
            if c < c1:
                for q0 in range(0, nq, SPAN):
                    tap_group(p, cur * p_size + q0, shifts, taps, wt, c * taps, bias[c], lo, hi, q,
                              cur * (nq + 16) + q0)
            if c > c0:
                _copy_out(q, (1 - cur) * (nq + 16), wq, y, (c - 1) * oh * ow, oh, ow, end)

    def padded_range():
        """C callback (native_call.RANGE_SIG) over channel ranges [c0, c1) of one image, its
        arguments packed in PADDED_ARGS order; compiled or loaded from the disk cache on first use."""
        return native_call.callback(_padded_range, len(PADDED_ARGS))


class PaddedPlan:
    """One depthwise conv's call for one input shape: geometry, threads and packed arguments
    (PADDED_ARGS) decided once; a run allocates y and writes two addresses an image. w2 (C,
    taps) and b (C,) float32, C-contiguous, kept; `bias` is the array the plan was made for (its
    caller checks it)."""

    def __init__(self, x_shape: tuple, w2: np.ndarray, b: np.ndarray, kernel_shape, strides,
                 begin, out_shape, clamp: tuple[float, float] | None, threads: int,
                 bias: np.ndarray | None = None) -> None:
        n, c, h, wd = (int(v) for v in x_shape)
        kh, kw = (int(v) for v in kernel_shape)
        oh, ow = (int(v) for v in out_shape)
        stride = int(strides[0])
        shifts, (hp, wp, wq, plane_stride, nq, p_size) = geometry(kh, kw, oh, ow, stride)
        lo, hi = (-math.inf, math.inf) if clamp is None else clamp
        self.x_shape, self.threads, self.bias = tuple(x_shape), threads, bias
        self.y_shape = (n, c, oh, ow)
        self.workers = native_call.workers_for(threads, c, n * c * oh * ow * kh * kw)
        self._keep = (w2, b, shifts)   # addresses in the template
        at = native_call.address
        self.template = native_call.pack(0, h, wd, stride, at(w2), kh * kw, at(b), 0, oh, ow,
                                         shifts.ctypes.data, int(begin[0]), int(begin[1]), hp, wp,
                                         wq, plane_stride, nq, p_size, lo, hi)

    def __call__(self, x: np.ndarray, pool: Callable) -> np.ndarray:
        """A new (N, C, OH, OW) array from float32 x of `x_shape`."""
        return native_call.run_images(padded_range(), self.template, x, self.y_shape, 0, 7, self.workers,
                                      pool)


def depthwise_2d(x: np.ndarray, w: np.ndarray, strides, begin, out_shape,
                 bias: np.ndarray | None, clamp: tuple[float, float] | None, threads: int,
                 pool: Callable) -> np.ndarray:
    """Depthwise conv of float32 x (N, C, H, W) with w (C, 1, KH, KW), bias and an optional
    clamp (Relu, Clip; NaN passes it), geometry as `applies`. A new (N, C, OH, OW) array."""
    c = x.shape[1]
    kh, kw = w.shape[2:]
    w2 = np.ascontiguousarray(w.reshape(c, kh * kw), dtype=np.float32)
    b = (np.zeros(c, dtype=np.float32) if bias is None
         else np.ascontiguousarray(bias, dtype=np.float32).reshape(c))
    return PaddedPlan(x.shape, w2, b, (kh, kw), strides, begin, out_shape, clamp, threads)(x, pool)
