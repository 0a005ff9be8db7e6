"""Depthwise convolution tiles over a channel's zero-padded stride-phase planes: the kernel
`ep_cpu.conv_depthwise` runs for the map sizes `depthwise_flat` and `depthwise_direct` leave
(`depthwise_planes`: per channel, the planes filled in an L1/L2 scratch and 64-position tiles
read in place from them). float32, AVX2 or AVX-512 CPUs (`ep_cpu.microkernel.available`)."""
from __future__ import annotations

import numpy as np

from ep_cpu.vector_ir import VectorIR

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None


DW_VECTORS = 4                   # depthwise tile: 4 vectors = 64 output positions
DW_TILE = 16 * DW_VECTORS


def _make_depthwise_tile():
    """dw_tile(x, x_off, offs, taps, w, w_off, y, y_off, bias, lo, hi): y[y_off : + DW_TILE] =
    clamp(bias + sum_t w[w_off + t] * x[x_off + offs[t] : + DW_TILE]): one channel's tile of a
    depthwise convolution read in place from its (phase) planes, accumulators in registers."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    v16 = ir.VectorType(f32, 16)

    @intrinsic
    def dw_tile(typingctx, x_arr, x_off, offs_arr, taps, w_arr, w_off, y_arr, y_off, bias, lo, hi):
        sig = types.void(x_arr, types.int64, offs_arr, types.int64, w_arr, types.int64, y_arr,
                         types.int64, types.float32, types.float32, types.float32)

        def codegen(context, builder, signature, args):
            x_v, x_o, offs_v, nt, w_v, w_o, y_v, y_o, bias_v, lo_v, hi_v = args
            tys = signature.args

            def data(k_arg, value):
                return context.make_array(tys[k_arg])(context, builder, value).data

            x = builder.gep(data(0, x_v), [x_o])
            offs = data(2, offs_v)
            w = builder.gep(data(4, w_v), [w_o])
            y = builder.gep(data(6, y_v), [y_o])
            vir = VectorIR(builder)
            fma, broadcast, vec_ptr = vir.fma, vir.broadcast, vir.ptr
            b = broadcast(bias_v)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, None)) for _ in range(DW_VECTORS)]
            for slot in accs:
                builder.store(b, slot)
            with cgutils.for_range(builder, nt) as loop:
                src = builder.gep(x, [builder.load(builder.gep(offs, [loop.index]))])
                wv = broadcast(builder.load(builder.gep(w, [loop.index])))
                for h, slot in enumerate(accs):
                    xv = builder.load(vec_ptr(src, ir.Constant(i64, 16 * h)), align=4)
                    builder.store(builder.call(fma, [wv, xv, builder.load(slot)]), slot)
            lo_s, hi_s = broadcast(lo_v), broadcast(hi_v)
            for h, slot in enumerate(accs):
                builder.store(vir.clamp(builder.load(slot), lo_s, hi_s),
                              vec_ptr(y, ir.Constant(i64, 16 * h)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return dw_tile


if numba is not None:
    dw_tile = _make_depthwise_tile()

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def depthwise_planes(x, w, offs, bias, lo, hi, y, sh, sw, ph, pw, hq, wq, c0, c1):  # pragma: no cover
        # One image: x (C, H, W), y (C, oh, ow), w (C, taps) with tap offsets `offs` into a
        # channel's sh*sw phase planes of hq x wq (the zero-padded image, row a + t*sh of it
        # being row t of phase a). Per channel the planes are filled in a scratch that stays
        # in L1/L2 (padding positions are never written, so they stay zero), the tiles run
        # in place on it into a wide row buffer, and the ow of every wq positions are copied
        # out. Channels [c0, c1).
        u64 = np.uint64
        h, wd = x.shape[1], x.shape[2]
        oh, ow = y.shape[1], y.shape[2]
        taps = offs.shape[0]
        plane = hq * wq
        ldc = -(-(oh * wq) // DW_TILE) * DW_TILE
        buf = np.zeros(sh * sw * plane + offs.max() + ldc, dtype=np.float32)
        wide = np.empty(ldc, dtype=np.float32)
        # A channel's copies into its planes, the same for every channel, worked out once:
        # (input row, first input column, plane position, count). Done per row inside the
        # channel loop, the divisions by the strides cost more than the copies on 7x7-28x28
        # maps (384x14x14: 128 -> 92 us; 960x7x7: 135 -> 91).
        runs = np.empty((h * sw, 4), dtype=np.int64)
        nrun = 0
        for iy in range(h):
            py = iy + ph
            if py < 0 or py // sh >= hq:
                continue
            row0 = ((py % sh) * sw) * plane + (py // sh) * wq
            for b in range(sw):
                # padded column b + sw*u is input column b + sw*u - pw
                u_lo = max(0, -((b - pw) // sw))
                u_hi = min(wq, (wd - 1 + pw - b) // sw + 1)
                if u_hi > u_lo:
                    runs[nrun, 0] = iy
                    runs[nrun, 1] = b + sw * u_lo - pw
                    runs[nrun, 2] = row0 + b * plane + u_lo
                    runs[nrun, 3] = u_hi - u_lo
                    nrun += 1
        for c in range(c0, c1):
            xc = x[c]
            for r in range(nrun):
                xr = xc[runs[r, 0]]
                s0, d0, cnt = u64(runs[r, 1]), u64(runs[r, 2]), u64(runs[r, 3])
                if sw == 1:
                    for u in range(cnt):
                        buf[d0 + u] = xr[s0 + u]
                elif sw == 2:
                    for u in range(cnt):
                        buf[d0 + u] = xr[s0 + u64(2) * u]
                else:
                    for u in range(cnt):
                        buf[d0 + u] = xr[s0 + u64(sw) * u]
            for p0 in range(0, ldc, DW_TILE):
                dw_tile(buf, p0, offs, taps, w, c * taps, wide, p0, bias[c], lo, hi)
            yc = y[c]
            for oy in range(oh):
                yr = yc[oy]
                src = u64(oy * wq)
                for ox in range(ow):
                    yr[u64(ox)] = wide[src + u64(ox)]

    @numba.njit(nogil=True, cache=True, parallel=True)
    def depthwise_planes_parallel(x, w, offs, bias, lo, hi, y, sh, sw, ph, pw, hq, wq,
                                  parts):  # pragma: no cover - compiled
        # depthwise_planes over `parts` ranges of channels on numba's threads
        c = x.shape[0]
        step = (c + parts - 1) // parts
        for p in numba.prange(parts):
            depthwise_planes(x, w, offs, bias, lo, hi, y, sh, sw, ph, pw, hq, wq, p * step,
                             min(c, (p + 1) * step))
