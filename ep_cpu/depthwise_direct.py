"""Depthwise 2-D convolution read straight from the NCHW input with masked 16-float vectors.

One output vector is 16 neighbouring positions of an output row of one channel; every kernel tap
adds w[tap] * (the 16 inputs it reads) with a fused multiply-add, the sum staying in a register.
Stride 1 reads the 16 inputs with one vector load, stride 2 with two loads and an even-lane
shuffle; loads are masked where a lane falls in the zero padding (masked-off lanes are never
read), rows of the padding are skipped, and the last vector of a row is a masked store. So there
is no padded copy, no phase planes and no copy-out: the per-channel copies of
`depthwise_tiles.depthwise_planes` cost more than its taps on MobileNetV2's 7x7-56x56 maps (its
depthwise layers ran at 5-20 GMAC/s there).

Written in LLVM IR through numba's `intrinsic` (`llvm.masked.load`, `llvm.fma`); float32, strides
1 and 2, any kernel size, dilation and padding; AVX-512F CPUs (`available`). The driver is a C
callback (`depthwise_range`) run by `native_call.run_ranges` over channel ranges.
"""
from __future__ import annotations

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

# packed arguments of the callbacks (native_call.pack), in this order
DW_ARGS = ("x", "h", "w", "weights", "taps", "bias", "y", "oh", "ow", "sh", "sw", "dh", "dw",
           "ph", "pw", "kh", "kw", "lo", "hi")


def available() -> bool:
    """AVX-512 only: with AVX2 a 16-bit lane mask becomes a vector mask in several instructions
    and masked stores are microcoded on AMD; measured 1.1-2x slower than `depthwise_tiles` on MobileNetV2's shapes (Zen 3)."""
    return numba is not None and mk.wide()


def applies(strides, out_shape) -> bool:
    """Strides this kernel takes (1 or 2 along each axis)."""
    return all(int(s) in (1, 2) for s in strides) and min(out_shape) > 0


def _make_out16(kw_const: int | None, pool_max: bool = False):
    """The output-vector intrinsic; with `kw_const` its taps along a row are unrolled, and
    vectors whose lanes are all inside the row load without masks. `pool_max`: MaxPool instead
    of the weighted sum (padding reads -inf, NaN propagates; w and bias unused)."""

    @intrinsic
    def out16(typingctx, x_arr, x_off, h, w, iy0, ix0, dh, sw, dw, kh, kw, w_arr, w_off, bias,
              lo, hi, y_arr, y_off, valid, sh, ldy, two):
        """y[y_off : + valid] = clamp(bias + sum over taps (ky, kx) of
        w[w_off + ky*kw + kx] * x[x_off + iy * w + ix]) for the 16 positions j < valid of an
        output row, iy = iy0 + ky * dh (rows outside [0, h) skipped: padding), ix = ix0 + sw*j
        + kx * dw (lanes outside [0, w) read as zero); with `two` also the next output row
        (iy0 + sh, stored at y_off + ldy): independent sums, so the FMA chains overlap."""
        i64 = types.int64
        sig = types.void(x_arr, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, w_arr, i64,
                         types.float32, types.float32, types.float32, y_arr, i64, i64, i64, i64,
                         types.boolean)

        def codegen(context, builder, signature, args):
            (x_v, x_o, h_v, w_v, iy0_v, ix0_v, dh_v, sw_v, dw_v, kh_v, kw_v, wt_v, wt_o, bias_v,
             lo_v, hi_v, y_v, y_o, valid_v, sh_v, ldy_v, two_v) = args
            tys = signature.args
            vir = VectorIR(builder)
            v16 = vir.v16
            l64, l32 = ir.IntType(64), ir.IntType(32)
            masked_load, masked_store = vir.masked_load(), vir.masked_store()

            def data(k, value):
                return context.make_array(tys[k])(context, builder, value).data

            def c64(v):
                return ir.Constant(l64, v)

            x = builder.gep(data(0, x_v), [x_o])
            wt = builder.gep(data(11, wt_v), [wt_o])
            y = builder.gep(data(16, y_v), [y_o])
            # lane masks in 32-bit lanes (one register; rows are far below 2^31 values)
            vi32 = ir.VectorType(l32, 16)
            iota = ir.Constant(vi32, list(range(16)))
            zero = ir.Constant(v16, [0.0] * 16)
            padding = ir.Constant(v16, [float("-inf")] * 16) if pool_max else zero

            def splat32(v):
                v = builder.trunc(v, l32)
                return builder.shuffle_vector(
                    builder.insert_element(ir.Constant(vi32, ir.Undefined), v, ir.Constant(l32, 0)),
                    ir.Constant(vi32, ir.Undefined), ir.Constant(vi32, [0] * 16))

            def load(row, first, masked):
                ptr = builder.bitcast(builder.gep(row, [first]), v16.as_pointer())
                if not masked:
                    return builder.load(ptr, align=4)
                col = builder.add(iota, splat32(first))
                inside = builder.and_(builder.icmp_signed(">=", col, ir.Constant(vi32, [0] * 16)),
                                      builder.icmp_signed("<", col, splat32(w_v)))
                return builder.call(masked_load, [ptr, ir.Constant(l32, 4), inside, padding])

            even = ir.Constant(ir.VectorType(l32, 16), list(range(0, 32, 2)))

            def combine(a, b):
                if not pool_max:
                    return builder.fadd(a, b)
                # the larger, NaN if either is (as np.maximum)
                bigger = builder.select(builder.fcmp_ordered(">", b, a), b, a)
                return builder.select(builder.fcmp_unordered("uno", a, b), builder.fadd(a, b), bigger)

            def tap(row, wrow, kx, stride2, masked, acc):
                first = builder.add(ix0_v, builder.mul(kx, dw_v))
                if stride2:   # inputs first + 2j: the even lanes of 32
                    v = builder.shuffle_vector(load(row, first, masked),
                                               load(row, builder.add(first, c64(16)), masked), even)
                else:
                    v = load(row, first, masked)
                if pool_max:
                    builder.store(combine(builder.load(acc), v), acc)
                    return
                wv = vir.broadcast(builder.load(builder.gep(wt, [builder.add(wrow, kx)])))
                builder.store(builder.call(vir.fma, [wv, v, builder.load(acc)]), acc)

            def taps(stride2, masked):
                with cgutils.for_range(builder, kh_v) as ky_loop:
                    for r, row_acc in enumerate(accs):
                        iy = builder.add(iy0_v, builder.mul(ky_loop.index, dh_v))
                        if r:
                            iy = builder.add(iy, sh_v)
                        inside = builder.and_(builder.icmp_signed(">=", iy, c64(0)),
                                              builder.icmp_signed("<", iy, h_v))
                        with builder.if_then(inside):
                            row = builder.gep(x, [builder.mul(iy, w_v)])
                            wrow = builder.mul(ky_loop.index, kw_v)
                            if kw_const is None:
                                with cgutils.for_range(builder, kw_v) as kx_loop:
                                    tap(row, wrow, kx_loop.index, stride2, masked, row_acc[0])
                            else:   # one sum per kx: chains of kh FMAs, not kh * kw
                                for kx in range(kw_const):
                                    tap(row, wrow, c64(kx), stride2, masked, row_acc[kx])

            # every lane of every tap inside the row: ix0 >= 0 and the last input read < w
            last = builder.add(builder.add(ix0_v, builder.mul(sw_v, c64(15))),
                               builder.mul(builder.sub(kw_v, c64(1)), dw_v))
            last = builder.add(last, builder.select(builder.icmp_signed("==", sw_v, c64(2)), c64(16), c64(0)))
            all_in = builder.and_(builder.icmp_signed(">=", ix0_v, c64(0)),
                                  builder.icmp_signed("<", last, w_v))
            accs = []
            for _ in range(2):
                acc = [cgutils.alloca_once_value(builder, padding if pool_max else vir.broadcast(bias_v))]
                acc += [cgutils.alloca_once_value(builder, padding) for _ in range(1, kw_const or 1)]
                accs.append(acc)
            is_s1 = builder.icmp_signed("==", sw_v, c64(1))
            with builder.if_else(is_s1) as (s1, s2):
                for branch, stride2 in ((s1, False), (s2, True)):
                    with branch:
                        with builder.if_else(all_in) as (fast, edge):
                            with fast:
                                taps(stride2, False)
                            with edge:
                                taps(stride2, True)
            store_mask = builder.icmp_signed("<", iota, splat32(valid_v))
            for r, acc in enumerate(accs):
                total = builder.load(acc[0])
                for more in acc[1:]:
                    total = combine(total, builder.load(more))
                out = vir.clamp(total, vir.broadcast(lo_v), vir.broadcast(hi_v))
                dst = builder.bitcast(builder.gep(y, [builder.mul(ldy_v, c64(r))]), v16.as_pointer())
                if r:
                    with builder.if_then(two_v):
                        builder.call(masked_store, [out, dst, ir.Constant(l32, 4), store_mask])
                else:
                    builder.call(masked_store, [out, dst, ir.Constant(l32, 4), store_mask])
            return context.get_dummy_value()

        return sig, codegen

    return out16


if numba is not None:
    out16 = _make_out16(None)
    out16_k3 = _make_out16(3)
    max16 = _make_out16(None, pool_max=True)
    max16_k3 = _make_out16(3, pool_max=True)
    max16_k5 = _make_out16(5, pool_max=True)   # YOLO's SPPF pools

    from ep_cpu.native_call import f32_at, f64_at

    @numba.njit(nogil=True, cache=True, inline="always")
    def _unpack(args_at):  # pragma: no cover - compiled
        a = numba.carray(f64_at(args_at), (len(DW_ARGS),))
        v = [np.int64(a[k]) for k in range(17)]
        return v, np.float32(a[17]), np.float32(a[18])

    def _depthwise_range(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # channels [c0, c1) of one image (DW_ARGS packed); rows [r0, r1) unused
        v, lo, hi = _unpack(args_at)
        h, w, taps, oh, ow, sh, sw, dh, dw, ph, pw, kh, kw = (v[1], v[2], v[4], v[7], v[8], v[9],
                                                              v[10], v[11], v[12], v[13], v[14],
                                                              v[15], v[16])
        x = numba.carray(f32_at(v[0]), (c1 * h * w,))
        wt = numba.carray(f32_at(v[3]), (c1 * taps,))
        bias = numba.carray(f32_at(v[5]), (c1,))
        y = numba.carray(f32_at(v[6]), (c1 * oh * ow,))
        for c in range(c0, c1):
            for oy in range(0, oh, 2):   # two output rows per call
                iy0 = oy * sh - ph
                two = oy + 1 < oh
                for ox0 in range(0, ow, 16):
                    if kw == 3:
                        out16_k3(x, c * h * w, h, w, iy0, ox0 * sw - pw, dh, sw, dw, kh, kw, wt,
                                 c * taps, bias[c], lo, hi, y, (c * oh + oy) * ow + ox0,
                                 min(16, ow - ox0), sh, ow, two)
                    else:
                        out16(x, c * h * w, h, w, iy0, ox0 * sw - pw, dh, sw, dw, kh, kw, wt,
                              c * taps, bias[c], lo, hi, y, (c * oh + oy) * ow + ox0,
                              min(16, ow - ox0), sh, ow, two)

    def _maxpool_range(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # MaxPool of channels [c0, c1): DW_ARGS packed, w and bias unused
        v, lo, hi = _unpack(args_at)
        h, w, oh, ow, sh, sw, dh, dw, ph, pw, kh, kw = (v[1], v[2], v[7], v[8], v[9], v[10], v[11],
                                                        v[12], v[13], v[14], v[15], v[16])
        x = numba.carray(f32_at(v[0]), (c1 * h * w,))
        none = np.zeros(1, dtype=np.float32)
        y = numba.carray(f32_at(v[6]), (c1 * oh * ow,))
        for c in range(c0, c1):
            for oy in range(0, oh, 2):
                iy0 = oy * sh - ph
                two = oy + 1 < oh
                for ox0 in range(0, ow, 16):
                    if kw == 3:
                        max16_k3(x, c * h * w, h, w, iy0, ox0 * sw - pw, dh, sw, dw, kh, kw, none, 0,
                                 np.float32(0.0), lo, hi, y, (c * oh + oy) * ow + ox0,
                                 min(16, ow - ox0), sh, ow, two)
                    elif kw == 5:
                        max16_k5(x, c * h * w, h, w, iy0, ox0 * sw - pw, dh, sw, dw, kh, kw, none, 0,
                                 np.float32(0.0), lo, hi, y, (c * oh + oy) * ow + ox0,
                                 min(16, ow - ox0), sh, ow, two)
                    else:
                        max16(x, c * h * w, h, w, iy0, ox0 * sw - pw, dh, sw, dw, kh, kw, none, 0,
                              np.float32(0.0), lo, hi, y, (c * oh + oy) * ow + ox0,
                              min(16, ow - ox0), sh, ow, two)

    def depthwise_range(pool_max: bool = False):
        """C callback (native_call.RANGE_SIG) over channel ranges [c0, c1) of one image, its
        arguments packed in DW_ARGS order (`pool_max`: the MaxPool one); compiled or loaded
        from the disk cache on first use."""
        return native_call.callback(_maxpool_range if pool_max else _depthwise_range, len(DW_ARGS))


def depthwise_2d(x: np.ndarray, w: np.ndarray, strides, dilations, begin, out_shape,
                 bias: np.ndarray | None, clamp: tuple[float, float] | None, threads: int,
                 pool: Callable) -> np.ndarray:
    """Depthwise conv of float32 x (N, C, H, W) with w (C, 1, KH, KW), bias and an optional
    clamp (Relu, Clip; NaN passes it); strides 1 or 2 (`applies`). A new (N, C, OH, OW) array."""
    c = x.shape[1]
    kh, kw = w.shape[2:]
    w2 = np.ascontiguousarray(w.reshape(c, kh * kw), dtype=np.float32)
    b = (np.zeros(c, dtype=np.float32) if bias is None
         else np.ascontiguousarray(bias, dtype=np.float32).reshape(c))
    return _run(x, w2, b, (kh, kw), strides, dilations, begin, out_shape, clamp, threads, pool,
                False)


def max_pool_2d(x: np.ndarray, kernel_shape, strides, dilations, begin, out_shape, threads: int,
                pool: Callable) -> np.ndarray:
    """MaxPool of float32 x (N, C, H, W) (-inf padding, NaN propagates); strides 1 or 2."""
    none = np.zeros(1, dtype=np.float32)
    return _run(x, none, none, tuple(int(k) for k in kernel_shape), strides, dilations, begin,
                out_shape, None, threads, pool, True)


def _run(x, w2, b, kernel_shape, strides, dilations, begin, out_shape, clamp, threads, pool,
         pool_max: bool) -> np.ndarray:
    n, c, h, wd = x.shape
    kh, kw = kernel_shape
    oh, ow = (int(v) for v in out_shape)
    x = np.ascontiguousarray(x, dtype=np.float32)
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    y = np.empty((n, c, oh, ow), dtype=np.float32)
    workers = native_call.workers_for(threads, c, n * c * oh * ow * kh * kw)
    callback = depthwise_range(pool_max)
    for i in range(n):
        # arrays by address (C-contiguous and alive in this frame), in DW_ARGS order
        args = native_call.pack(x[i].ctypes.data, h, wd, w2.ctypes.data, kh * kw, b.ctypes.data,
                                y[i].ctypes.data, oh, ow, strides[0], strides[1], dilations[0],
                                dilations[1], begin[0], begin[1], kh, kw, lo, hi)
        native_call.run_ranges(callback, args, c, 1, workers, True, pool)
    return y
