"""The channel-blocked layout's (NCHWc: (N, C/16, H, W, 16)) loops besides the convolutions, AVX-512:
the layout changes between NCHW and NCHWc (16 x 16 blocks transposed in registers), the stride
phase planes a KxK conv reads (the padded image in one pass), MaxPool and GlobalAveragePool (a
window's max or mean 16 channels a vector). LLVM IR through numba's `intrinsic`, as `ep_cpu.conv_nchwc`'s tiles; the
drivers are `native_call` range callbacks and live in this file with the intrinsics they inline
(numba's disk cache checks only the cached function's own file). Kernels:
`ep_cpu/kernels/nchwc.py`.
"""
from __future__ import annotations

import numpy as np

from ep_cpu import native_call
from ep_cpu.vector_ir import VectorIR

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover
    numba = None

BLOCK = 16
REORDER_ARGS, MAXPOOL_ARGS, PHASES_ARGS, GLOBAL_MEAN_ARGS = 7, 14, 11, 4
REORDER_SPAN = 256   # positions of a reorder unit


def _make_window_reduce(kind: str):
    """window_<kind>(x, x_off, row_stride, rows, cols, y, y_off): y[y_off : y_off + 16] = the
    lane-wise max ("max": -inf for an empty window; NaN wins, as numpy's maximum) or mean
    ("mean") over r < rows, c < cols of x[x_off + r row_stride + 16 c : ... + 16]."""
    @intrinsic
    def window_reduce(typingctx, x_arr, x_off, row_stride, rows, cols, y_arr, y_off):
        sig = types.void(x_arr, types.int64, types.int64, types.int64, types.int64, y_arr, types.int64)

        def codegen(context, builder, signature, args):
            x_v, x_o, rs_v, rows_v, cols_v, y_v, y_o = args
            vir = VectorIR(builder)
            x = vir.data(context, signature.args[0], x_v, x_o)
            y = vir.data(context, signature.args[5], y_v, y_o)
            start = float("-inf") if kind == "max" else 0.0
            acc = cgutils.alloca_once_value(builder, ir.Constant(vir.v16, [start] * BLOCK))
            with cgutils.for_range(builder, rows_v) as row:
                base = builder.mul(row.index, rs_v)
                with cgutils.for_range(builder, cols_v) as col:
                    off = builder.add(base, builder.mul(col.index, vir.i64(BLOCK)))
                    v = builder.load(vir.ptr(x, off), align=4)
                    a = builder.load(acc)
                    if kind == "max":
                        m = builder.select(builder.fcmp_ordered("<=", v, a), a, v)
                        builder.store(builder.select(builder.fcmp_unordered("uno", a, a), a, m), acc)
                    else:
                        builder.store(builder.fadd(a, v), acc)
            out = builder.load(acc)
            if kind == "mean":
                count = builder.sitofp(builder.mul(rows_v, cols_v), ir.FloatType())
                out = builder.fdiv(out, vir.broadcast(count))
            builder.store(out, vir.ptr(y, vir.i64(0)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return window_reduce


def _make_copy_vectors():
    """copy_vectors(x, x_off, x_step, y, y_off, count): y[y_off + 16 q : ... + 16] = x[x_off +
    x_step q : ... + 16] for q < count; x None-like (x_step < 0): zeros."""
    @intrinsic
    def copy_vectors(typingctx, x_arr, x_off, x_step, y_arr, y_off, count):
        sig = types.void(x_arr, types.int64, types.int64, y_arr, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            x_v, x_o, step_v, y_v, y_o, count_v = args
            vir = VectorIR(builder)
            x = vir.data(context, signature.args[0], x_v, x_o)
            y = vir.data(context, signature.args[3], y_v, y_o)
            zero = ir.Constant(vir.v16, [0.0] * BLOCK)
            zeros = builder.icmp_signed("<", step_v, vir.i64(0))
            with cgutils.for_range(builder, count_v) as q:
                with builder.if_else(zeros) as (then, other):
                    with then:
                        builder.store(zero, vir.ptr(y, builder.mul(q.index, vir.i64(BLOCK))), align=4)
                    with other:
                        v = builder.load(vir.ptr(x, builder.mul(q.index, step_v)), align=4)
                        builder.store(v, vir.ptr(y, builder.mul(q.index, vir.i64(BLOCK))), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return copy_vectors


def _make_transpose16():
    """transpose16(src, s_off, s_ld, rows, load_lanes, dst, d_off, d_ld, rows_out, store_lanes):
    the 16 x 16 block src[s_off + r s_ld + u] (rows r < rows, lanes u < load_lanes read, the
    rest zero) stored transposed: dst[d_off + u d_ld + r] for u < rows_out, lanes r <
    store_lanes (`tile_transpose.transpose_in_registers`)."""
    from ep_cpu.tile_transpose import transpose_in_registers

    @intrinsic
    def transpose16(typingctx, src_arr, s_off, s_ld, rows, load_lanes, dst_arr, d_off, d_ld,
                    rows_out, store_lanes):
        i64 = types.int64
        sig = types.void(src_arr, i64, i64, i64, i64, dst_arr, i64, i64, i64, i64)

        def codegen(context, builder, signature, args):
            src_v, s_o, sld_v, rows_v, ll_v, dst_v, d_o, dld_v, ro_v, sl_v = args
            vir = VectorIR(builder)
            c64, align = vir.i64, ir.Constant(ir.IntType(32), 4)
            masked_load, masked_store = vir.masked_load(), vir.masked_store()
            src = vir.data(context, signature.args[0], src_v, s_o)
            dst = vir.data(context, signature.args[5], dst_v, d_o)
            zero = ir.Constant(vir.v16, [0.0] * BLOCK)
            none = ir.Constant(vir.mask_t, [0] * BLOCK)
            load_mask, store_mask = vir.first_lanes(ll_v), vir.first_lanes(sl_v)
            vecs = []
            for r in range(BLOCK):
                inside = builder.select(builder.icmp_signed("<", c64(r), rows_v), load_mask, none)
                vecs.append(builder.call(masked_load, [vir.ptr(src, builder.mul(sld_v, c64(r))),
                                                       align, inside, zero]))
            transpose_in_registers(builder, vecs)
            for u in range(BLOCK):
                inside = builder.select(builder.icmp_signed("<", c64(u), ro_v), store_mask, none)
                builder.call(masked_store, [vecs[u], vir.ptr(dst, builder.mul(dld_v, c64(u))), align,
                                            inside])
            return context.get_dummy_value()

        return sig, codegen

    return transpose16


if numba is not None:
    from ep_cpu.native_call import f32_at, f64_at

    window_max = _make_window_reduce("max")
    window_mean = _make_window_reduce("mean")
    copy_vectors = _make_copy_vectors()
    transpose16 = _make_transpose16()

    def _maxpool(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # MAXPOOL_ARGS; columns: (image, channel block, output row) units. The max over each
        # window's positions inside the image (padding never wins), 16 channels a vector
        a = numba.carray(f64_at(args_at), (MAXPOOL_ARGS,))
        x_at, y_at = np.int64(a[0]), np.int64(a[1])
        cb, h, w, oh, ow = np.int64(a[2]), np.int64(a[3]), np.int64(a[4]), np.int64(a[5]), np.int64(a[6])
        kh, kw, sh, sw = np.int64(a[7]), np.int64(a[8]), np.int64(a[9]), np.int64(a[10])
        pt, pl, n = np.int64(a[11]), np.int64(a[12]), np.int64(a[13])
        x = numba.carray(f32_at(x_at), (n * cb * h * w * BLOCK,))
        y = numba.carray(f32_at(y_at), (n * cb * oh * ow * BLOCK,))
        for u in range(c0, c1):
            oy = u % oh
            plane = u // oh   # image i, block c: i cb + c
            y0 = oy * sh - pt
            iy0, iy1 = max(y0, 0), min(y0 + kh, h)
            for ox in range(ow):
                x0 = ox * sw - pl
                ix0, ix1 = max(x0, 0), min(x0 + kw, w)
                window_max(x, ((plane * h + iy0) * w + ix0) * BLOCK, w * BLOCK, max(iy1 - iy0, 0),
                           max(ix1 - ix0, 0), y, ((plane * oh + oy) * ow + ox) * BLOCK)

    def _global_mean(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # GLOBAL_MEAN_ARGS; columns: (image, channel block) units: the mean over the positions
        a = numba.carray(f64_at(args_at), (GLOBAL_MEAN_ARGS,))
        x_at, y_at, planes, positions = np.int64(a[0]), np.int64(a[1]), np.int64(a[2]), np.int64(a[3])
        x = numba.carray(f32_at(x_at), (planes * positions * BLOCK,))
        y = numba.carray(f32_at(y_at), (planes * BLOCK,))
        for u in range(c0, c1):
            window_mean(x, u * positions * BLOCK, 0, 1, positions, y, u * BLOCK)

    def _phases(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # PHASES_ARGS; columns: (image, channel block, plane py, plane px, plane row) units:
        # `phase_planes` (the padded image's stride x stride planes, hq x wq each, zero where
        # no input falls) in one pass
        a = numba.carray(f64_at(args_at), (PHASES_ARGS,))
        x_at, out_at = np.int64(a[0]), np.int64(a[1])
        cb, h, w, s, hq, wq = (np.int64(a[2]), np.int64(a[3]), np.int64(a[4]), np.int64(a[5]),
                               np.int64(a[6]), np.int64(a[7]))
        t, l, n = np.int64(a[8]), np.int64(a[9]), np.int64(a[10])
        x = numba.carray(f32_at(x_at), (n * cb * h * w * BLOCK,))
        out = numba.carray(f32_at(out_at), (n * cb * s * s * hq * wq * BLOCK,))
        for u in range(c0, c1):
            r = u % hq
            rest = u // hq
            px = rest % s
            py = (rest // s) % s
            plane = rest // (s * s)   # image i, block c: i cb + c
            o = u * wq * BLOCK
            iy = py + s * r - t
            # plane columns [q0, q1) hold input columns px + s q - l in [0, w)
            q0 = min(max((l - px + s - 1) // s, 0), wq)
            q1 = max(min((w - 1 - px + l) // s + 1, wq), q0)
            if iy < 0 or iy >= h:
                q1 = q0
            copy_vectors(x, 0, -1, out, o, q0)
            copy_vectors(x, (plane * h + iy) * w * BLOCK + (px + s * q0 - l) * BLOCK, s * BLOCK,
                         out, o + q0 * BLOCK, q1 - q0)
            copy_vectors(x, 0, -1, out, o + q1 * BLOCK, wq - q1)

    def _reorder(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # REORDER_ARGS; columns: (image, channel block, span of REORDER_SPAN positions) units;
        # to_blocked: (N, C, P) -> (N, CB, P, 16) with the channels past C zero, else back (the
        # padding channels dropped); 16 positions x 16 channels a transpose in registers
        a = numba.carray(f64_at(args_at), (REORDER_ARGS,))
        src_at, dst_at = np.int64(a[0]), np.int64(a[1])
        c_real, cb, positions, to_blocked = np.int64(a[2]), np.int64(a[3]), np.int64(a[4]), a[5] != 0
        n = np.int64(a[6])
        spans = (positions + REORDER_SPAN - 1) // REORDER_SPAN
        plain = numba.carray(f32_at(src_at if to_blocked else dst_at), (n * c_real * positions,))
        blocked = numba.carray(f32_at(dst_at if to_blocked else src_at), (n * cb * positions * BLOCK,))
        for u in range(c0, c1):
            span = u % spans
            rest = u // spans
            c = rest % cb
            i = rest // cb
            lanes = min(BLOCK, c_real - c * BLOCK)
            p_end = min(positions, (span + 1) * REORDER_SPAN)
            plain_at = (i * c_real + c * BLOCK) * positions
            block_at = (i * cb + c) * positions * BLOCK
            for p0 in range(span * REORDER_SPAN, p_end, BLOCK):
                pn = min(BLOCK, p_end - p0)
                if to_blocked:
                    transpose16(plain, plain_at + p0, positions, lanes, pn, blocked,
                                block_at + p0 * BLOCK, BLOCK, pn, BLOCK)
                else:
                    transpose16(blocked, block_at + p0 * BLOCK, BLOCK, pn, BLOCK, plain,
                                plain_at + p0, positions, lanes, pn)

    CACHED = (_reorder, _maxpool, _phases, _global_mean)   # (their disk cache entries: `conv_nchwc._cached`)


def reorder():
    """C callback of the layout changes between NCHW and NCHWc, REORDER_ARGS packed."""
    return native_call.callback(_reorder, REORDER_ARGS)


def maxpool():
    """C callback of MaxPool on blocked values, MAXPOOL_ARGS packed."""
    return native_call.callback(_maxpool, MAXPOOL_ARGS)


def global_mean():
    """C callback of GlobalAveragePool on blocked values, GLOBAL_MEAN_ARGS packed."""
    return native_call.callback(_global_mean, GLOBAL_MEAN_ARGS)


def phase_planes():
    """C callback, PHASES_ARGS packed, of the phase planes of a blocked image x (N, CB, H, W,
    16): x zero-padded by `pads` (top, left, bottom, right) and split into stride x stride
    planes, (N, CB, stride, stride, hq, wq, 16) (`phase_shape`), plane (py, px) row r, column c
    holding padded row r stride + py, column c stride + px."""
    return native_call.callback(_phases, PHASES_ARGS)


def compile_kernels() -> None:
    """Compile (or load from the disk cache) every callback (`conv_nchwc.compile_kernels`)."""
    reorder(), maxpool(), phase_planes(), global_mean()


def phase_shape(h: int, w: int, pads: list[int], stride: int, kh: int, kw: int, oh: int,
                ow: int) -> tuple[int, int]:
    """(hq, wq) of the phase planes (`phase_planes`): room for the output grid (oh rows of wq
    positions) plus the window's reach and one row, so that every tap of every grid position
    reads inside a plane, and for every input row and column."""
    t, l, s = pads[0], pads[1], stride
    hq = max(oh + (kh - 1) // s + 1, -(-(h + t) // s))
    wq = max(ow + (kw - 1) // s, -(-(w + l) // s))
    return hq, wq
