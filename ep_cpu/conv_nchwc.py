"""Convolutions on channel-blocked activations (NCHWc: (N, C/16, H, W, 16)), AVX-512.

The conv tile is `mr` positions x `nv` blocks of 16 output channels, its sums in registers:
each k step broadcasts one input channel of the `mr` positions (16-float rows of the blocked
image, side by side) and multiplies it by `nv` weight vectors (packed (K, 16 nv) per output
group). The k blocks (16 input channels at one tap) are read through a table of offsets, so one
tile serves 1x1 convs, KxK convs (over the padded image's stride-phase planes: every window at
unit stride) and strided 1x1 convs (the subsampled image). Depthwise 3x3 convs run 16 channels
a vector, 8 positions in flight. The tiles and rows are LLVM IR (`llvm.fma`) through numba's
`intrinsic`, as `ep_cpu.microkernel`'s; the drivers are `native_call` range callbacks, and live
in this file with them (numba's disk cache checks only the cached function's own file).
The reorders, phase planes and MaxPool are `ep_cpu.nchwc_layout`'s; the kernels are
`ep_cpu/kernels/nchwc.py`; `ep_core/rewrites_layout.py` chooses the chains.
"""
from __future__ import annotations

import numpy as np

from ep_cpu import native_call
from ep_cpu.vector_ir import EPILOGUE, EPILOGUE_RES, RAW, VectorIR  # noqa: F401 - (the modes, as ours)

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover
    numba = None

BLOCK = 16
NO_ACT = -1   # no activation after the clamp; else a `vector_math` kind (Silu, Tanh, Gelu)


# (positions, output blocks) of the conv tiles (`tile_rows` picks the positions)
TILE_SHAPES = tuple((mr, nv) for nv in (2, 1) for mr in (12, 8, 7, 6, 4, 2, 1))
PLAIN_TILE_SHAPES = tuple((mr, nv) for mr, nv in TILE_SHAPES if nv == 1)
PLAIN_STRIDES = (1, 2)   # strides of the convs on plain images (each its own tiles)


def _emit_tile(context, builder, tys, args, mr: int, nv: int, inner: int, step: int = 0) -> None:
    """The IR of one conv tile of `mr` positions x `nv` output blocks (`blocked_tile`): k steps
    of `inner` input channels each, BLOCK (a blocked image) or 1 (a plain NCHW one, its
    positions `step` floats apart)."""
    vec = ir.VectorType(ir.FloatType(), BLOCK)
    (x_v, x_o, _xs, offs_v, w_v, w_o, kb_v, y_v, y_o, yvs_v, b_v, b_o, r_v, lo_v, hi_v,
     mode_v) = args
    vir = VectorIR(builder)
    const, broadcast, vec_ptr, fma = vir.i64, vir.broadcast, vir.ptr, vir.fma
    x = vir.data(context, tys[0], x_v, x_o)
    offs = vir.data(context, tys[3], offs_v)
    w = vir.data(context, tys[4], w_v, w_o)
    y = vir.data(context, tys[7], y_v, y_o)
    res = vir.data(context, tys[12], r_v, y_o)
    bias = vir.data(context, tys[10], b_v, b_o)

    accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(mr * nv)]

    def k_step(xi, wi, position_step: int) -> None:
        # accs[r, h] += broadcast(xi[r position_step]) * wi[16 h : 16 h + 16]
        bvec = [builder.load(vec_ptr(wi, const(h * BLOCK)), align=4) for h in range(nv)]
        for r in range(mr):
            sv = broadcast(builder.load(builder.gep(xi, [const(r * position_step)])))
            for h in range(nv):
                slot = accs[r * nv + h]
                builder.store(builder.call(fma, [sv, bvec[h], builder.load(slot)]), slot)

    with cgutils.for_range(builder, kb_v) as loop:
        xb = builder.gep(x, [builder.load(builder.gep(offs, [loop.index]))])
        if inner == 1:
            # a plain image: k step j is one input value of each position (channel, tap) at
            # x + offs[j] + r step (the conv's stride, a constant: with it a runtime value the
            # 12 positions' offsets took 12 registers, and spilled), times one (16 nv) weight row
            k_step(xb, builder.gep(w, [builder.mul(loop.index, const(nv * BLOCK))]), step)
        else:
            wb = builder.gep(w, [builder.mul(loop.index, const(BLOCK * BLOCK * nv))])
            # one input channel an iteration (a loop, not unrolled 16 times: in one block of 16
            # channels LLVM's Zen 4 scheduler hoisted the broadcasts ahead of their FMAs and
            # spilled them, 3x3 256 -> 256 on 14x14 at 19 GMAC/s against 46 through the GEMM
            # tiles)
            with cgutils.for_range(builder, const(BLOCK)) as channel:
                i = channel.index
                k_step(builder.gep(xb, [i]), builder.gep(wb, [builder.mul(i, const(nv * BLOCK))]),
                       BLOCK)
    _emit_store(builder, vir, accs, mr, nv, y, res, bias, yvs_v, lo_v, hi_v, mode_v)


def _emit_store(builder, vir, accs, mr, nv, y, res, bias, yvs_v, lo_v, hi_v, mode_v) -> None:
    """The tile's sums stored at y (+ 16 r, + yvs per output block) in `mode_v`'s form."""
    const, broadcast, vec_ptr = vir.i64, vir.broadcast, vir.ptr
    lo_s, hi_s = broadcast(lo_v), broadcast(hi_v)
    col_bias = [builder.load(vec_ptr(bias, const(BLOCK * h)), align=4) for h in range(nv)]

    def store(mode):
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
    vir.store_modes(mode_v, store)


def _make_blocked_tile():
    """blocked_tile(mr, nv, inner, x, x_off, xs, offs, w, w_off, kb, y, y_off, yvs, bias,
    bias_off, res, lo, hi, mode): the tile of `mr` positions x `nv` output blocks over `kb` k
    steps. `inner` BLOCK: a blocked image, the positions 16-float rows from x + x_off, k step
    j 16 input channels at x + x_off + offs[j] (+ 16 r + i), its weights the (16, 16 nv) rows
    at w + w_off + 256 nv j. `inner` 1: a plain image, k step j one value a position at
    x + x_off + offs[j] + r xs (xs 1 or 2: PLAIN_STRIDES; nv 1), its weights the (16 nv) row
    at w + w_off + 16 nv j. Stored at y + y_off + 16 r (+ yvs per output block) with `mode` RAW
    (the sums), EPILOGUE (+ bias[bias_off + 16 h + l], clamped to [lo, hi]) or EPILOGUE_RES
    (+ res at y's offsets before the clamp). (mr, nv) one of TILE_SHAPES (PLAIN_TILE_SHAPES on
    a plain image; each its own code, chosen by a switch; anything else stores nothing)."""
    i64 = ir.IntType(64)

    @intrinsic
    def blocked_tile(typingctx, mr, nv, inner, x_arr, x_off, xs, offs_arr, w_arr, w_off, kb,
                     y_arr, y_off, yvs, bias_arr, bias_off, res_arr, lo, hi, mode):
        sig = types.void(types.int64, types.int64, types.int64, x_arr, types.int64, types.int64,
                         offs_arr, w_arr, types.int64, types.int64, y_arr, types.int64,
                         types.int64, bias_arr, types.int64, res_arr, types.float32,
                         types.float32, types.int64)

        def codegen(context, builder, signature, args):
            mr_v, nv_v, inner_v, xs_v = args[0], args[1], args[2], args[5]
            # variant 0: blocked; 1, 2: plain at that stride
            plain = builder.icmp_signed("==", inner_v, ir.Constant(i64, 1))
            variant = builder.select(plain, xs_v, ir.Constant(i64, 0))
            shape = builder.add(builder.mul(builder.add(builder.mul(mr_v, ir.Constant(i64, 4)),
                                                        nv_v), ir.Constant(i64, 4)), variant)
            done = builder.append_basic_block("tile_done")
            switch = builder.switch(shape, done)
            for variant_c in (0,) + PLAIN_STRIDES:
                # (a plain image's tiles one output block wide: with two, the 12 broadcasts
                # spilled beside the 24 sums)
                for mr_c, nv_c in PLAIN_TILE_SHAPES if variant_c else TILE_SHAPES:
                    block = builder.append_basic_block(f"tile_{mr_c}x{nv_c}_{variant_c}")
                    switch.add_case(ir.Constant(i64, (mr_c * 4 + nv_c) * 4 + variant_c), block)
                    builder.position_at_end(block)
                    _emit_tile(context, builder, signature.args[3:], args[3:], mr_c, nv_c,
                               1 if variant_c else BLOCK, variant_c)
                    builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return blocked_tile


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
    vec = ir.VectorType(ir.FloatType(), BLOCK)

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
            vir = VectorIR(builder)
            const, broadcast, vec_ptr, fma = vir.i64, vir.broadcast, vir.ptr, vir.fma
            x = vir.data(context, tys[0], x_v, x_o)
            y = vir.data(context, tys[5], y_v, y_o)
            res = vir.data(context, tys[13], r_v, y_o)
            wt = vir.data(context, tys[9], wt_v, w_o)
            zeros = vir.data(context, tys[17], z_v)

            taps = [builder.load(vec_ptr(wt, const(t * BLOCK)), align=4) for t in range(9)]
            bias = builder.load(vec_ptr(vir.data(context, tys[11], b_v, b_o), const(0)), align=4)
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
    from ep_cpu.native_call import f32_at, f64_at, i64_at
    from ep_cpu.vector_math import activate16

    dw_row = _make_depthwise_row()

    blocked_tile = _make_blocked_tile()

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def tile_rows(left):  # pragma: no cover - compiled
        # positions of the next tile of a row with `left` to go: the widest tile (12, 8, 7, 6,
        # 4, 2, 1) that leaves none or at least 4 (a 1- or 2-position tile runs its FMAs in 2-4
        # chains: a fraction of the rate), else the widest that fits
        for mr in (12, 8, 7, 6, 4):
            if mr <= left and (left - mr == 0 or left - mr >= 4):
                return mr
        for mr in (12, 8, 7, 6, 4, 2):
            if mr <= left:
                return mr
        return 1

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def conv_row(x, x_row, inner, xs, offs, nk, wp, bias, res, y, y_row, yvs, q0, q1, mb, lo,
                 hi, mode, g0, g1, act):  # pragma: no cover - compiled
        # output positions [q0, q1) of one row: position q's input at x[x_row + xs q + offs[j]]
        # for k step j (`inner` channels: 16 of a blocked image, xs = 16; or 1 of a plain one,
        # xs = the stride), its output at y[y_row + 16 q + ob yvs]; tiles of up to 12 positions
        # (`tile_rows`), output groups [g0, g1) of two blocks (the last may be one; one block
        # each on a plain image), each group's weights (nk inner, 16 nv) at per g 16 nk inner
        # in wp; `act` (a vector_math kind, or NO_ACT) applied to each tile just stored, still
        # in L1
        per = 2 if inner == BLOCK else 1
        q = q0
        while q < q1:
            mr = tile_rows(q1 - q)
            for g in range(g0, g1):
                ob = per * g
                nv = 2 if mb - ob >= 2 and per == 2 else 1
                y_at = y_row + q * BLOCK + ob * yvs
                blocked_tile(mr, nv, inner, x, x_row + q * xs, xs, offs, wp,
                             ob * BLOCK * nk * inner, nk, y, y_at, yvs, bias, ob * BLOCK, res, lo,
                             hi, mode)
                if act != NO_ACT:
                    for h in range(nv):
                        for r in range(mr):
                            activate16(y, y_at + h * yvs + r * BLOCK, act)
            q += mr

    def _conv(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # CONV_ARGS; columns: output groups (two blocks); rows: (image, output row, chunk of
        # `chunk` positions) units. The input (N, CB, hp, wp, 16) (padded where the conv pads:
        # every tap of every output position inside it); output (N, MB, oh, ow, 16)
        a = numba.carray(f64_at(args_at), (CONV_ARGS,))
        x_at, y_at, res_at, w_at, bias_at, offs_at = (np.int64(a[0]), np.int64(a[1]), np.int64(a[2]),
                                                      np.int64(a[3]), np.int64(a[4]), np.int64(a[5]))
        nk, cb, hp, wpos, oh, ow = (np.int64(a[6]), np.int64(a[7]), np.int64(a[8]), np.int64(a[9]),
                                    np.int64(a[10]), np.int64(a[11]))
        stride, mb, mode, chunk = np.int64(a[12]), np.int64(a[13]), np.int64(a[14]), np.int64(a[15])
        lo, hi, n, groups_outer = np.float32(a[16]), np.float32(a[17]), np.int64(a[18]), a[19] != 0
        act, unit, xs = np.int64(a[20]), np.int64(a[21]), np.int64(a[22])
        # (`unit`: floats a position of the input holds, 16 blocked or 1 plain)
        x_len, y_len = cb * hp * wpos * unit, mb * oh * ow * BLOCK
        x = numba.carray(f32_at(x_at), (n * x_len,))
        y = numba.carray(f32_at(y_at), (n * y_len,))
        res = numba.carray(f32_at(res_at if mode == EPILOGUE_RES else y_at), (n * y_len,))
        wp = numba.carray(f32_at(w_at), (nk * BLOCK * mb * BLOCK,))
        bias = numba.carray(f32_at(bias_at), (mb * BLOCK,))
        offs = numba.carray(i64_at(offs_at), (nk,))
        chunks = (ow + chunk - 1) // chunk
        # `groups_outer`: a group's weights (K x 32: ~300 KB for 3x3 of 256 channels) stay in
        # L2 while every position of the part meets them (positions outer ran a 3x3 256 -> 256
        # conv, 2.4 MB of weights, at 41 GMAC/s from L3); else each tile's inputs stay in L1
        # while every group meets them (small weights: 91 against 78 GMAC/s for 384 -> 64)
        g_outer0, g_outer1 = (c0, c1) if groups_outer else (0, 1)
        for go in range(g_outer0, g_outer1):
            g0, g1 = (go, go + 1) if groups_outer else (c0, c1)
            for r in range(r0, r1):
                q = r % chunks
                rest = r // chunks
                oy = rest % oh
                i = rest // oh
                conv_row(x, i * x_len + oy * stride * wpos * unit, unit, xs, offs, nk, wp,
                         bias, res, y, i * y_len + oy * ow * BLOCK, oh * ow * BLOCK, q * chunk,
                         min(ow, q * chunk + chunk), mb, lo, hi, mode, g0, g1, act)

    def _depthwise(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
        # DEPTHWISE_ARGS; columns: (image, channel block, output row) units
        a = numba.carray(f64_at(args_at), (DEPTHWISE_ARGS,))
        x_at, y_at, res_at, w_at, bias_at = (np.int64(a[0]), np.int64(a[1]), np.int64(a[2]),
                                             np.int64(a[3]), np.int64(a[4]))
        cb, h, w, oh, ow, stride = (np.int64(a[5]), np.int64(a[6]), np.int64(a[7]), np.int64(a[8]),
                                    np.int64(a[9]), np.int64(a[10]))
        lo, hi, has_res, n = np.float32(a[11]), np.float32(a[12]), np.int64(a[13]), np.int64(a[14])
        act = np.int64(a[15])
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
            y_row = i * y_len + (c * oh + oy) * ow * BLOCK
            dw_row(x, i * x_len + c * h * w * BLOCK, h, w, oy * stride - 1, y, y_row, ow, stride,
                   wt, c * 9 * BLOCK, bias, c * BLOCK, res, has_res, lo, hi, zeros)
            if act != NO_ACT:
                for ox in range(ow):
                    activate16(y, y_row + ox * BLOCK, act)

TILE = 12    # positions of a pointwise tile
CONV_ARGS, DEPTHWISE_ARGS = 23, 16
GROUPS_OUTER_BYTES = 1 << 20   # weights from which a conv part runs group by group


def conv():
    """C callback (native_call.RANGE_SIG) of the 1x1 and KxK convs, CONV_ARGS packed."""
    return native_call.callback(_conv, CONV_ARGS)


def depthwise():
    """C callback of the 3x3 depthwise conv (padding 1), DEPTHWISE_ARGS packed."""
    return native_call.callback(_depthwise, DEPTHWISE_ARGS)


def compile_kernels() -> None:
    """Compile (or load from the disk cache) the conv callbacks (`ep_cpu.jit_tier`)."""
    conv(), depthwise()
    native_call.compile_runner()


def families() -> tuple:
    """The `jit_tier` kernel families the blocked ops need: (name, build) pairs, each loading
    from the disk cache within `jit_tier.WAIT_S` (together they took 0.27 s, past it)."""
    from ep_cpu import nchwc_layout
    return (("conv_nchwc", compile_kernels), ("nchwc_layout", nchwc_layout.compile_kernels))


def ready() -> bool:
    """Whether the compiled loops can run now, asked while a session is built (the layout
    rewrite converts only then). From numba's disk cache they load in ~0.3 s, waited for
    (`jit_tier.ready(on_disk=True)`: past its usual wait, which left sessions in NCHW); with
    none there (a fresh machine or source) they compile, ~3.5 s, on the
    background thread while this session stays in NCHW: its first run on numpy forms of the
    blocked ops took ResNet-50's cold first session from 2.8 to 3.6 s."""
    from ep_cpu import jit_tier
    cached = _disk_cache.get("found")
    if cached is None:
        cached = _disk_cache["found"] = _cached()
    if cached:
        return all([jit_tier.ready(name, build, on_disk=True) for name, build in families()])
    ask = jit_tier.ready if jit_tier.sync() else jit_tier.start
    return all([ask(name, build) for name, build in families()])   # (every family requested)


_disk_cache: dict = {}   # "found": whether `_cached` found the loops on disk (asked once)


def _cached() -> bool:
    """Every callback has an index in numba's disk cache (it may still be stale: then the wait
    of `jit_tier.ready` runs out and the session stays in NCHW)."""
    try:
        import os

        from numba.core.caching import CompileResultCacheImpl
        from ep_cpu import nchwc_layout
        for fn in (_conv, _depthwise) + nchwc_layout.CACHED:
            impl = CompileResultCacheImpl(fn)
            index = os.path.join(impl.locator.get_cache_path(), impl.filename_base + ".nbi")
            if not os.path.exists(index):
                return False
        return True
    except Exception:   # noqa: BLE001 - numba's cache layout moved: decide by waiting
        return True


def available() -> bool:
    """The blocked kernels run here: numba and AVX-512 (16-float vectors)."""
    from ep_cpu import microkernel
    return numba is not None and microkernel.wide()


def pack_conv(w: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(M, C, kh, kw) weights as the conv tiles read them: (packed flat float32, input blocks,
    output blocks). Row j 16 + i of a group's (K, 16 nv) matrix is input channel 16 cb + i at
    tap t of k block j = cb taps + t (`conv_offsets`); output channels in groups of two blocks
    (K, 32), a last single one (K, 16); padding channels zero. One strided copy into the result
    where no channel needs padding (four whole copies took 58 ms of ResNet-50's session build)."""
    m, c, kh, kw = w.shape
    kb, mb = -(-c // BLOCK), -(-m // BLOCK)
    taps = kh * kw
    w3 = w.reshape(m, c, taps)
    if m != mb * BLOCK or c != kb * BLOCK or w3.dtype != np.float32:
        wpad = np.zeros((mb * BLOCK, kb * BLOCK, taps), np.float32)
        wpad[:m, :c] = w3
        w3 = wpad
    k = kb * taps * BLOCK
    out = np.empty(mb * BLOCK * k, np.float32)
    pairs = mb // 2   # groups of two output blocks, then a last single one
    if pairs:
        src = w3[:pairs * 2 * BLOCK].reshape(pairs, 2 * BLOCK, kb, BLOCK, taps)
        out[:pairs * 2 * BLOCK * k].reshape(pairs, kb, taps, BLOCK, 2 * BLOCK)[...] = \
            src.transpose(0, 2, 4, 3, 1)
    if mb % 2:
        src = w3[pairs * 2 * BLOCK:].reshape(BLOCK, kb, BLOCK, taps)
        out[pairs * 2 * BLOCK * k:].reshape(kb, taps, BLOCK, BLOCK)[...] = src.transpose(1, 3, 2, 0)
    return out, kb, mb


def pack_plain(w: np.ndarray) -> np.ndarray:
    """(M, C, kh, kw) weights of a conv on a plain (NCHW) image as the tiles read them with
    `inner` 1: per output block the (C kh kw, 16) matrix, row j = (c kh + ky) kw + kx
    (`plain_offsets`); padding channels zero."""
    m = w.shape[0]
    mb = -(-m // BLOCK)
    k = int(np.prod(w.shape[1:]))
    wk = np.zeros((mb, BLOCK, k), np.float32)
    wk.reshape(mb * BLOCK, k)[:m] = w.reshape(m, k)
    return np.ascontiguousarray(wk.transpose(0, 2, 1)).reshape(-1)


def plain_offsets(c: int, kh: int, kw: int, hp: int, wp: int) -> np.ndarray:
    """Offsets of k step j = (c kh + ky) kw + kx from an output position's window corner in a
    padded plain image of hp x wp planes."""
    ci, ky, kx = np.meshgrid(np.arange(c), np.arange(kh), np.arange(kw), indexing="ij")
    return np.ascontiguousarray(((ci * hp + ky) * wp + kx).reshape(-1), dtype=np.int64)


def conv_offsets(kb: int, kh: int, kw: int, stride: int, hq: int, wq: int) -> np.ndarray:
    """Offsets (floats) of k block j = cb taps + (ky kw + kx) from an output position's grid
    position in the stride x stride phase planes of a channel block (`nchwc_layout.phase_planes`: each hq x wq,
    plane (cb, py, px) holding the padded input's rows py::stride, columns px::stride), so that
    the window of every output position is read at unit stride."""
    cb, ky, kx = np.meshgrid(np.arange(kb), np.arange(kh), np.arange(kw), indexing="ij")
    plane = (cb * stride + ky % stride) * stride + kx % stride
    return np.ascontiguousarray(((plane * hq + ky // stride) * wq + kx // stride).reshape(-1) * BLOCK,
                                dtype=np.int64)


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
