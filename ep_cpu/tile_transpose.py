"""A GEMM tile stored transposed, for the thin conv's positions-as-rows product whose output is
channels by positions (`ep_cpu.conv_thin`): up to 16 x 16 values transposed in registers (four
rounds of two-source shuffles, `vpermt2ps`), each output row finished with its channel's bias,
the residual and a clamp, and stored with a lane mask. The scalar loop this replaces spent 1-2
cycles a value; ResNet-50's 256->1024 1x1 on 14x14 stored 200K values a run that way (~550 us of
a ~1.1 ms conv).

Written in LLVM IR through numba's `intrinsic`; float32, AVX2 or AVX-512 CPUs
(`microkernel.available`).
"""
from __future__ import annotations

from ep_cpu import microkernel as mk
from ep_cpu.vector_ir import VectorIR

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None


def _butterfly_masks(block: int) -> tuple[list[int], list[int]]:
    """Shuffle masks of one transpose round: rows i and i + block swap their off-diagonal
    block x block sub-blocks (lanes of the second row are numbered from 16)."""
    low = [lane if not lane & block else 16 + lane - block for lane in range(16)]
    high = [lane + block if not lane & block else 16 + lane for lane in range(16)]
    return low, high


def transpose_in_registers(builder, vecs: list) -> None:
    """Transpose 16 <16 x float> rows in place (vecs[i] lane j <- vecs[j] lane i): four rounds
    of two-source shuffles."""
    block = 8
    while block:
        low, high = (ir.Constant(ir.VectorType(ir.IntType(32), 16), m) for m in _butterfly_masks(block))
        for i in range(16):
            if not i & block:
                a, b = vecs[i], vecs[i + block]
                vecs[i] = builder.shuffle_vector(a, b, low)
                vecs[i + block] = builder.shuffle_vector(a, b, high)
        block //= 2


def _make_store_transposed():

    @intrinsic
    def store_transposed(typingctx, tile_arr, t_off, rows, cols, y_arr, y_off, ldy, bias_arr,
                         b_off, has_bias, res_arr, has_res, lo, hi):
        """For u < cols and r < rows (both <= 16): y[y_off + u*ldy + r] = clamp(tile[t_off +
        r*NR + u] + bias[b_off + u] (has_bias) + res[y_off + u*ldy + r] (has_res), lo, hi).
        Rows of the tile from `rows` on are not read, lanes of y from `rows` on not written."""
        i64 = types.int64
        sig = types.void(tile_arr, i64, i64, i64, y_arr, i64, i64, bias_arr, i64, i64, res_arr,
                         i64, types.float32, types.float32)

        def codegen(context, builder, signature, args):
            (t_v, t_o, rows_v, cols_v, y_v, y_o, ld_v, b_v, b_o, hb_v, r_v, hr_v, lo_v,
             hi_v) = args
            tys = signature.args
            vir = VectorIR(builder)
            c64, mask_t, align = vir.i64, vir.mask_t, ir.Constant(ir.IntType(32), 4)
            masked_load, masked_store = vir.masked_load(), vir.masked_store()
            tile = vir.data(context, tys[0], t_v, t_o)
            y = vir.data(context, tys[4], y_v, y_o)
            bias = vir.data(context, tys[7], b_v, b_o)
            res = vir.data(context, tys[10], r_v, y_o)
            zero = ir.Constant(vir.v16, [0.0] * 16)
            none = ir.Constant(mask_t, [0] * 16)
            every = ir.Constant(mask_t, [1] * 16)
            lanes = vir.first_lanes(rows_v)
            res_lanes = builder.select(builder.icmp_signed("!=", hr_v, c64(0)), lanes, none)
            vecs = []
            for r in range(16):
                inside = builder.select(builder.icmp_signed("<", c64(r), rows_v), every, none)
                vecs.append(builder.call(masked_load, [vir.ptr(tile, c64(r * mk.NR)), align, inside,
                                                       zero]))
            transpose_in_registers(builder, vecs)
            lo_s, hi_s = vir.broadcast(lo_v), vir.broadcast(hi_v)
            with_bias = builder.icmp_signed("!=", hb_v, c64(0))
            for u in range(16):
                with builder.if_then(builder.icmp_signed("<", c64(u), cols_v)):
                    off = builder.mul(ld_v, c64(u))
                    b_val = builder.select(with_bias, builder.load(builder.gep(bias, [c64(u)])),
                                           ir.Constant(ir.FloatType(), 0.0))
                    v = builder.fadd(vecs[u], vir.broadcast(b_val))
                    v = builder.fadd(v, builder.call(masked_load, [vir.ptr(res, off), align,
                                                                   res_lanes, zero]))
                    builder.call(masked_store, [vir.clamp(v, lo_s, hi_s), vir.ptr(y, off), align,
                                                lanes])
            return context.get_dummy_value()

        return sig, codegen

    return store_transposed


if numba is not None:
    store_transposed = _make_store_transposed()
