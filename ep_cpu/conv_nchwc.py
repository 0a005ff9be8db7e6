"""Convolutions on channel-blocked activations (NCHWc: (N, C/16, H, W, 16)), AVX-512.

Feasibility kernel: a 1x1 conv whose tile is `mr` positions x `nv` blocks of 16 output channels.
Each k step broadcasts one input channel of `mr` positions (contiguous 16-float rows of the
blocked image) and multiplies it by `nv` weight vectors (packed (K, 16 nv) per output group).
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
RAW, EPILOGUE, EPILOGUE_RES = 0, 1, 2


def _make_blocked_micro(mr: int, nv: int):
    i64, f32 = ir.IntType(64), ir.FloatType()
    vec = ir.VectorType(f32, BLOCK)

    @intrinsic
    def micro(typingctx, x_arr, x_off, xbs, w_arr, w_off, kb, y_arr, y_off, yvs, bias_arr, bias_off,
              res_arr, lo, hi, mode):
        sig = types.void(x_arr, types.int64, types.int64, w_arr, types.int64, types.int64, y_arr,
                         types.int64, types.int64, bias_arr, types.int64, res_arr, types.float32,
                         types.float32, types.int64)

        def codegen(context, builder, signature, args):
            (x_v, x_o, xbs_v, w_v, w_o, kb_v, y_v, y_o, yvs_v, b_v, b_o, r_v, lo_v, hi_v,
             mode_v) = args
            tys = signature.args

            def data(k, value):
                return context.make_array(tys[k])(context, builder, value).data

            def const(value):
                return ir.Constant(i64, value)

            x = builder.gep(data(0, x_v), [x_o])
            w = builder.gep(data(3, w_v), [w_o])
            y = builder.gep(data(6, y_v), [y_o])
            res = builder.gep(data(11, r_v), [y_o])
            bias = builder.gep(data(9, b_v), [b_o])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 "llvm.fma.v16f32")
            undef, zero_i32 = ir.Constant(vec, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK)

            def broadcast(scalar):
                return builder.shuffle_vector(builder.insert_element(undef, scalar, zero_i32),
                                              undef, splat)

            def vec_ptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None))
                    for _ in range(mr * nv)]
            with cgutils.for_range(builder, kb_v) as loop:
                xb = builder.gep(x, [builder.mul(loop.index, xbs_v)])
                wb = builder.gep(w, [builder.mul(loop.index, const(BLOCK * BLOCK * nv))])
                for i in range(BLOCK):
                    bvec = [builder.load(vec_ptr(wb, const((i * nv + h) * BLOCK)), align=4)
                            for h in range(nv)]
                    for r in range(mr):
                        sv = broadcast(builder.load(builder.gep(xb, [const(r * BLOCK + i)])))
                        for h in range(nv):
                            slot = accs[r * nv + h]
                            builder.store(builder.call(fma, [sv, bvec[h], builder.load(slot)]), slot)
            lo_s, hi_s = broadcast(lo_v), broadcast(hi_v)
            col_bias = [builder.load(vec_ptr(bias, const(BLOCK * h)), align=4) for h in range(nv)]
            done = builder.append_basic_block("tile_stored")
            switch = builder.switch(mode_v, done)
            for mode in (RAW, EPILOGUE, EPILOGUE_RES):
                block = builder.append_basic_block(f"store_mode_{mode}")
                switch.add_case(ir.Constant(i64, mode), block)
                builder.position_at_end(block)
                for h in range(nv):
                    vo = builder.mul(yvs_v, const(h))
                    for r in range(mr):
                        off = builder.add(vo, const(r * BLOCK))
                        v = builder.load(accs[r * nv + h])
                        if mode != RAW:
                            v = builder.fadd(v, col_bias[h])
                            if mode == EPILOGUE_RES:
                                v = builder.fadd(v, builder.load(vec_ptr(res, off), align=4))
                            v = VectorIR.clamp_with(builder, v, lo_s, hi_s)
                        builder.store(v, vec_ptr(y, off), align=4)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return micro


GROUP = 8   # output positions a depthwise step keeps in flight (8 chains of FMAs)


def _make_depthwise_row():
    """dw_row(x, x_off, h, w, iy0, y, y_off, ow, stride, wt, w_off, bias, b_off, res, has_res,
    lo, hi, zeros): one output row of a 3x3 depthwise conv (padding 1) of one channel block:
    y[y_off + 16 ox + l] = clamp(bias + sum over the taps inside the image of x[x_off + 16 (iy w
    + ix) + l] * wt[w_off + 16 (3 ky + kx) + l] (+ res at y's offset)), iy = iy0 + ky, ix =
    ox stride - 1 + kx. An input row outside the image reads `zeros` (at least 16 w floats)
    instead; the positions whose taps are all inside the row run GROUP at a time with no
    checks (GROUP sums in registers: one sum's nine FMAs in a chain waited on each other), the
    edge ones with a check per tap."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    vec = ir.VectorType(f32, BLOCK)

    @intrinsic
    def dw_row(typingctx, x_arr, x_off, h, w, iy0, y_arr, y_off, ow, stride, wt_arr, w_off,
               bias_arr, b_off, res_arr, has_res, lo, hi, zeros_arr):
        sig = types.void(x_arr, types.int64, types.int64, types.int64, types.int64, y_arr,
                         types.int64, types.int64, types.int64, wt_arr, types.int64, bias_arr,
                         types.int64, res_arr, types.int64, types.float32, types.float32, zeros_arr)

        def codegen(context, builder, signature, args):
            (x_v, x_o, h_v, w_v, iy0_v, y_v, y_o, ow_v, s_v, wt_v, w_o, b_v, b_o, r_v, hr_v,
             lo_v, hi_v, z_v) = args
            tys = signature.args

            def data(k, value):
                return context.make_array(tys[k])(context, builder, value).data

            def const(value):
                return ir.Constant(i64, value)

            def vec_ptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            x = builder.gep(data(0, x_v), [x_o])
            y = builder.gep(data(5, y_v), [y_o])
            res = builder.gep(data(13, r_v), [y_o])
            wt = builder.gep(data(9, wt_v), [w_o])
            zeros = data(17, z_v)
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 "llvm.fma.v16f32")
            undef, zero_i32 = ir.Constant(vec, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK)

            def broadcast(scalar):
                return builder.shuffle_vector(builder.insert_element(undef, scalar, zero_i32),
                                              undef, splat)

            taps = [builder.load(vec_ptr(wt, const(t * BLOCK)), align=4) for t in range(9)]
            bias = builder.load(vec_ptr(builder.gep(data(11, b_v), [b_o]), const(0)), align=4)
            lo_s, hi_s = broadcast(lo_v), broadcast(hi_v)
            add_res = builder.icmp_signed("!=", hr_v, const(0))
            rows = []
            for ky in range(3):
                iy = builder.add(iy0_v, const(ky))
                inside = builder.and_(builder.icmp_signed(">=", iy, const(0)),
                                      builder.icmp_signed("<", iy, h_v))
                rows.append(builder.select(inside, builder.gep(x, [builder.mul(builder.mul(iy, w_v),
                                                                               const(BLOCK))]), zeros))
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(GROUP)]

            def finish(ox, acc):
                off = builder.mul(ox, const(BLOCK))
                v = builder.load(acc)
                with builder.if_then(add_res):
                    builder.store(builder.fadd(v, builder.load(vec_ptr(res, off), align=4)), acc)
                builder.store(VectorIR.clamp_with(builder, builder.load(acc), lo_s, hi_s),
                              vec_ptr(y, off), align=4)

            def interior(ox0, count):
                for g in range(count):
                    builder.store(bias, accs[g])
                for ky in range(3):
                    for kx in range(3):
                        for g in range(count):
                            ix = builder.add(builder.mul(builder.add(ox0, const(g)), s_v),
                                             const(kx - 1))
                            xv = builder.load(vec_ptr(rows[ky], builder.mul(ix, const(BLOCK))), align=4)
                            builder.store(builder.call(fma, [xv, taps[3 * ky + kx],
                                                             builder.load(accs[g])]), accs[g])
                for g in range(count):
                    finish(builder.add(ox0, const(g)), accs[g])

            def checked(ox):
                builder.store(bias, accs[0])
                ix0 = builder.sub(builder.mul(ox, s_v), const(1))
                for ky in range(3):
                    for kx in range(3):
                        ix = builder.add(ix0, const(kx))
                        inside = builder.and_(builder.icmp_signed(">=", ix, const(0)),
                                              builder.icmp_signed("<", ix, w_v))
                        with builder.if_then(inside):
                            xv = builder.load(vec_ptr(rows[ky], builder.mul(ix, const(BLOCK))), align=4)
                            builder.store(builder.call(fma, [xv, taps[3 * ky + kx],
                                                             builder.load(accs[0])]), accs[0])
                finish(ox, accs[0])

            def clamp0(v):
                return builder.select(builder.icmp_signed("<", v, const(0)), const(0), v)

            # interior positions [1, hi): every tap inside the row (ox s + 1 <= w - 1)
            hi_pos = builder.add(builder.sdiv(builder.sub(w_v, const(2)), s_v), const(1))
            hi_pos = builder.select(builder.icmp_signed("<", hi_pos, ow_v), hi_pos, ow_v)
            hi_pos = builder.select(builder.icmp_signed("<", w_v, const(2)), const(0), hi_pos)
            inner = clamp0(builder.sub(hi_pos, const(1)))
            with builder.if_then(builder.icmp_signed(">", ow_v, const(0))):
                checked(const(0))
            groups = builder.sdiv(inner, const(GROUP))
            with cgutils.for_range(builder, groups) as loop:
                interior(builder.add(const(1), builder.mul(loop.index, const(GROUP))), GROUP)
            first_single = builder.add(const(1), builder.mul(groups, const(GROUP)))
            with cgutils.for_range(builder, builder.sub(inner, builder.mul(groups, const(GROUP)))) as loop:
                interior(builder.add(first_single, loop.index), 1)
            edge0 = builder.select(builder.icmp_signed(">", hi_pos, const(1)), hi_pos, const(1))
            with cgutils.for_range(builder, clamp0(builder.sub(ow_v, edge0))) as loop:
                checked(builder.add(edge0, loop.index))
            return context.get_dummy_value()

        return sig, codegen

    return dw_row


if numba is not None:
    from ep_cpu.native_call import f32_at, f64_at

    dw_row = _make_depthwise_row()

    m12_2 = _make_blocked_micro(12, 2)
    m8_2 = _make_blocked_micro(8, 2)
    m4_2 = _make_blocked_micro(4, 2)
    m2_2 = _make_blocked_micro(2, 2)
    m1_2 = _make_blocked_micro(1, 2)
    m12_1 = _make_blocked_micro(12, 1)
    m8_1 = _make_blocked_micro(8, 1)
    m4_1 = _make_blocked_micro(4, 1)
    m2_1 = _make_blocked_micro(2, 1)
    m1_1 = _make_blocked_micro(1, 1)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _tile(mr, nv, x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode):  # pragma: no cover
        if nv == 2:
            if mr == 12:
                m12_2(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 8:
                m8_2(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 4:
                m4_2(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 2:
                m2_2(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            else:
                m1_2(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
        else:
            if mr == 12:
                m12_1(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 8:
                m8_1(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 4:
                m4_1(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            elif mr == 2:
                m2_1(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)
            else:
                m1_1(x, x_off, xbs, w, w_off, kb, y, y_off, yvs, bias, b_off, res, lo, hi, mode)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def pointwise_range(x, wp, bias, res, y, positions, kb, mb, lo, hi, mode, p0, p1, g0, g1):  # pragma: no cover
        # one image: x (kb, P, 16), y and res (mb, P, 16) flat; wp: output groups of 2 blocks
        # (K, 32), a last single block (K, 16); positions [p0, p1) in tiles of 12 and a tail
        # of 8/4/2/1, output groups [g0, g1)
        xbs = positions * BLOCK
        kdim = kb * BLOCK
        p = p0
        while p < p1:
            left = p1 - p
            mr = 12 if left >= 12 else (8 if left >= 8 else (4 if left >= 4 else (2 if left >= 2 else 1)))
            for g in range(g0, g1):
                ob = 2 * g
                nv = 2 if mb - ob >= 2 else 1
                _tile(mr, nv, x, p * BLOCK, xbs, wp, ob * BLOCK * kdim, kb, y,
                      ob * xbs + p * BLOCK, xbs, bias, ob * BLOCK, res, lo, hi, mode)
            p += mr

    def _pointwise(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # POINTWISE_ARGS; columns: output groups (two blocks); rows: chunks of `chunk` positions
        # over every image
        a = numba.carray(f64_at(args_at), (12,))
        x_at, y_at, res_at, w_at, bias_at = (np.int64(a[0]), np.int64(a[1]), np.int64(a[2]),
                                             np.int64(a[3]), np.int64(a[4]))
        positions, kb, mb, mode = np.int64(a[5]), np.int64(a[6]), np.int64(a[7]), np.int64(a[10])
        lo, hi = np.float32(a[8]), np.float32(a[9])
        chunk = np.int64(a[11])
        chunks = (positions + chunk - 1) // chunk   # per image
        x_len, y_len = kb * positions * BLOCK, mb * positions * BLOCK
        wp = numba.carray(f32_at(w_at), (kb * BLOCK * mb * BLOCK,))
        bias = numba.carray(f32_at(bias_at), (mb * BLOCK,))
        for r in range(r0, r1):
            i = r // chunks
            q0 = (r - i * chunks) * chunk
            q1 = min(positions, q0 + chunk)
            x = numba.carray(f32_at(x_at + 4 * i * x_len), (x_len,))
            y = numba.carray(f32_at(y_at + 4 * i * y_len), (y_len,))
            res = numba.carray(f32_at((res_at if mode == EPILOGUE_RES else y_at) + 4 * i * y_len),
                               (y_len,))
            pointwise_range(x, wp, bias, res, y, positions, kb, mb, lo, hi, mode, q0, q1, c0, c1)

    def _depthwise(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # DEPTHWISE_ARGS; columns: (image, channel block, output row) units
        a = numba.carray(f64_at(args_at), (15,))
        x_at, y_at, res_at, w_at, bias_at = (np.int64(a[0]), np.int64(a[1]), np.int64(a[2]),
                                             np.int64(a[3]), np.int64(a[4]))
        cb, h, w, oh, ow, stride = (np.int64(a[5]), np.int64(a[6]), np.int64(a[7]), np.int64(a[8]),
                                    np.int64(a[9]), np.int64(a[10]))
        lo, hi, has_res, n = np.float32(a[11]), np.float32(a[12]), np.int64(a[13]), np.int64(a[14])
        wt = numba.carray(f32_at(w_at), (cb * 9 * BLOCK,))
        bias = numba.carray(f32_at(bias_at), (cb * BLOCK,))
        x_len, y_len = cb * h * w * BLOCK, cb * oh * ow * BLOCK
        x = numba.carray(f32_at(x_at), (n * x_len,))
        y = numba.carray(f32_at(y_at), (n * y_len,))
        res = numba.carray(f32_at(res_at if has_res else y_at), (n * y_len,))
        zeros = np.zeros(w * BLOCK, dtype=np.float32)
        for u in range(c0, c1):
            oy = u % oh
            rest = u // oh
            c = rest % cb
            i = rest // cb
            dw_row(x, i * x_len + c * h * w * BLOCK, h, w, oy * stride - 1, y,
                   i * y_len + (c * oh + oy) * ow * BLOCK, ow, stride, wt, c * 9 * BLOCK, bias,
                   c * BLOCK, res, has_res, lo, hi, zeros)

    def _reorder(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # REORDER_ARGS; columns: (image, channel block) units; to_blocked: (N, C, P) -> (N, CB,
        # P, 16) with the channels past C zero, else back (the padding channels dropped)
        a = numba.carray(f64_at(args_at), (6,))
        src_at, dst_at = np.int64(a[0]), np.int64(a[1])
        c_real, cb, positions, to_blocked = np.int64(a[2]), np.int64(a[3]), np.int64(a[4]), a[5] != 0
        plain_len, block_len = c_real * positions, cb * positions * BLOCK
        for u in range(c0, c1):
            i = u // cb
            c = u - i * cb
            plain = numba.carray(f32_at((src_at if to_blocked else dst_at) + 4 * i * plain_len),
                                 (plain_len,))
            blocked = numba.carray(f32_at((dst_at if to_blocked else src_at)
                                          + 4 * (i * block_len + c * positions * BLOCK)),
                                   (positions * BLOCK,))
            lanes = min(BLOCK, c_real - c * BLOCK)
            if to_blocked:
                for p in range(positions):
                    for l in range(BLOCK):
                        blocked[p * BLOCK + l] = (plain[(c * BLOCK + l) * positions + p]
                                                  if l < lanes else np.float32(0.0))
            else:
                for l in range(lanes):
                    base = (c * BLOCK + l) * positions
                    for p in range(positions):
                        plain[base + p] = blocked[p * BLOCK + l]


TILE = 12    # positions of a pointwise tile
POINTWISE_ARGS, DEPTHWISE_ARGS, REORDER_ARGS = 12, 15, 6


def pointwise():
    """C callback (native_call.RANGE_SIG) of the pointwise conv, POINTWISE_ARGS packed."""
    return native_call.callback(_pointwise, POINTWISE_ARGS)


def depthwise():
    """C callback of the 3x3 depthwise conv (padding 1), DEPTHWISE_ARGS packed."""
    return native_call.callback(_depthwise, DEPTHWISE_ARGS)


def reorder():
    """C callback of the layout changes between NCHW and NCHWc, REORDER_ARGS packed."""
    return native_call.callback(_reorder, REORDER_ARGS)


def compile_kernels() -> None:
    """Compile (or load from the disk cache) every callback (`ep_cpu.jit_tier`)."""
    pointwise(), depthwise(), reorder()
    native_call.compile_runner()


def available() -> bool:
    """The blocked kernels run here: numba and AVX-512 (16-float vectors)."""
    from ep_cpu import microkernel
    return numba is not None and microkernel.wide()


def pack_pointwise(w: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(M, C, 1, 1) weights as the pointwise tiles read them: (packed flat float32, input
    blocks, output blocks); output channels in groups of two blocks (K, 32), a last single one
    (K, 16), K = the input blocks' channels; padding channels zero."""
    m, c = w.shape[:2]
    kb, mb = -(-c // BLOCK), -(-m // BLOCK)
    wpad = np.zeros((mb * BLOCK, kb * BLOCK), np.float32)
    wpad[:m, :c] = w.reshape(m, c)
    groups, ob = [], 0
    while ob < mb:
        nv = 2 if mb - ob >= 2 else 1
        groups.append(np.ascontiguousarray(wpad[ob * BLOCK:(ob + nv) * BLOCK].T).reshape(-1))
        ob += nv
    return np.concatenate(groups), kb, mb


def pack_depthwise(w: np.ndarray) -> np.ndarray:
    """(C, 1, 3, 3) weights as (CB, 9, 16) float32 flat, padding channels zero."""
    c = w.shape[0]
    cb = -(-c // BLOCK)
    out = np.zeros((cb * BLOCK, 9), np.float32)
    out[:c] = w.reshape(c, 9)
    return np.ascontiguousarray(out.reshape(cb, BLOCK, 9).transpose(0, 2, 1)).reshape(-1)


def padded(v: np.ndarray | None, channels: int) -> np.ndarray:
    """A per-channel vector (or None: zeros) padded with zeros to `channels`."""
    out = np.zeros(channels, np.float32)
    if v is not None:
        out[:np.size(v)] = np.asarray(v, dtype=np.float32).reshape(-1)
    return out
