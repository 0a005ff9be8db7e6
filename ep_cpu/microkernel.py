"""The register-tiled GEMM microkernel shared by the compiled convolution and GEMM drivers.

The micro kernels (MR = 4, 8, 12 rows; the GEMM's also 1 and 2, for one position or a batch-1
recurrent step: `tile_shapes.choose_gemm_mr`) compute
C[0:MR, 0:NR] (+)= A[k, 0:MR]^T-broadcast x B[k, 0:NR] over k for one tile: A is a packed row
panel (k, MR) whose values are broadcast, B a packed column panel (k, NR) read as two 16-float
vectors, C a tile with row stride `ldc`. The 2*MR accumulators stay in registers (MR=12: 24 of
AVX-512's 32), one fused multiply-add per accumulator and k.

They are written in LLVM IR (`llvm.fma`) through numba's `intrinsic`: numba's auto-vectorizer
does not keep a tile of accumulators in registers, and numba ships LLVM, so no compiler is needed
on the user's machine. CPUs with AVX-512F (`wide()`) run a tile in one pass over k; AVX2 + FMA
CPUs (`available()`) in passes of at most 6 rows x 16 columns of 8-float vectors (`_passes`: 12
accumulators of their 16 registers; 1- and 2-row tiles in one pass over all 32 columns). Where
the tiles are the faster GEMM and convolution path is `beats_blas()` (AVX-512 only: on AVX2
OpenBLAS's own kernel wins); the thin convs and the recurrent steps use them on both.

The compiled drivers that call the microkernel live here too (`conv_in_place`, `gemm_panels`):
numba's disk cache checks only the source file of the function it caches, so a driver in another
file would keep a stale inlined microkernel after this file changes.

Unsigned indices in the drivers: numba wraps negative signed indices, and that select keeps
LLVM from vectorizing copies (measured 0.9 -> 0.1-0.3 ns a value for panel packing).
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
except ImportError:  # pragma: no cover - numba is a dependency; callers keep the BLAS path
    numba = None

NR = 32          # tile columns: two 16-float vectors
MR_MAX = 12      # tile rows of the larger kernel (scratch tiles are MR_MAX x NR)
PANEL_BLOCK_BYTES = 512 * 1024   # GEMM: B panels per block, half of a Zen 5 core's L2 (Zen 3: all of it)

_state = {"checked": False, "available": False, "wide": False, "amd": False}


def _check_cpu() -> None:
    ok = wide = amd = False
    if numba is not None:
        try:
            import llvmlite.binding as ll
            features = ll.get_host_cpu_features()
            wide = bool(features.get("avx512f", False))
            ok = wide or bool(features.get("avx2", False) and features.get("fma", False))
            amd = ll.get_host_cpu_name().startswith("znver")
        except Exception:   # noqa: BLE001 - feature query failed: keep the BLAS path
            ok = wide = False
    _state.update(available=ok, wide=wide, amd=amd, checked=True)


def _cpu(key: str) -> bool:
    if not _state["checked"]:
        _check_cpu()
    return _state[key]


def available() -> bool:
    """numba imports and the host CPU has AVX2 and FMA (or AVX-512F). The kernels are written
    on 16-float vectors; LLVM splits them in two where registers hold 8 (AVX2)."""
    return _cpu("available")


def wide() -> bool:
    """The host CPU has AVX-512F: 32 registers of 16 floats (tile shapes and instructions)."""
    return _cpu("wide")


def amd() -> bool:
    """The host CPU is an AMD Zen (LLVM's `znver*`): some paths measured apart from Intel's."""
    return _cpu("amd")


def beats_blas() -> bool:
    """Whether the compiled GEMM and convolution tiles outrun the BLAS path: with AVX-512 (about
    twice OpenBLAS's SGEMM on Zen 5). With AVX2 OpenBLAS's own kernel is the faster one (Zen 3,
    1 thread: ResNet-50 ~150 ms through im2col + BLAS, 210-240 through the tiles; BERT-base
    ~360 against 420-450); the thin convs (`ep_cpu.conv_thin`: a few positions, where BLAS's
    GEMM is slow), the recurrent, element-wise and depthwise kernels still pay there."""
    return wide()


def convs_beat_blas(threads: int) -> bool:
    """Whether the implicit-GEMM conv tiles (`ep_cpu.conv_implicit`) take convolutions from
    im2col + BLAS at `threads` intra-op threads: where `beats_blas`, and with AVX2 from two
    threads, on numba's threads with BLAS held to the calling thread (OpenBLAS's workers
    busy-wait after each threaded call and took the second core from the parallel kernels after
    it; Zen 3, 2 threads, separate processes: ResNet-50 92 -> 70-80 ms, MobileNetV2 17 -> 12,
    YOLOv8n 35 -> 28, with Winograd first). A large GEMM there runs on `ep_cpu.gemm`'s tiles,
    one one-thread BLAS call each on its pool (raising BLAS's threads for the call made results
    differ between concurrent runs of a session)."""
    return beats_blas() or (threads >= 2 and available())


# k per microkernel call: the panels' slices stay in L1 (AVX2's passes read them twice or four
# times; Zen 3's L1 holds 32 KB)
KC = 256 if wide() else 128
# Each k step of a tile prefetches (into L2) the weights `ahead` floats on: the same k of the
# next panel (the conv's A row panel, the GEMM's B column panel), which the next tile then reads
# from L2 instead of L3/DRAM; a model's weights are cold at every run. Intel Xeon (AVX-512, 2 MB
# L2), 1 thread, alternating processes: ResNet-50 85.7 -> 82.2 ms, BERT-base 224 -> 213,
# MobileNetV2 13.0 -> 12.4, GPT-2 step 47.0 -> 45.1; 2 threads ResNet-50 57.4 -> 55.2. Single
# convs with weights out of cache: 2048->512 1x1 on 7x7 1511 -> 1211 us, 3x3 512 on 7x7 3173 ->
# 2578. Not measured on AMD's CPUs, which keep the kernels they were tuned with.
PREFETCH_AHEAD = wide() and not amd()


def tail_rows(left: int, mr: int) -> int:
    """Tile rows of a last row panel holding `left` (1..mr) rows, the panels before it having
    `mr`: the shortest of the 4-, 8- and mr-row tiles that holds them. Packed as (k, tail_rows)
    at the start of its panel's slot, so every panel still starts k*mr values after the one
    before."""
    return min(mr, 4 if left <= 4 else (8 if left <= 8 else mr))


# Tile store modes of the microkernel (`vector_ir`'s): RAW stores the sums; EPILOGUE finishes the
# tile with + bias, then the clamp [lo, hi]; EPILOGUE_RES also adds the residual before the clamp.


def _passes(mr: int) -> list[tuple[int, int, int, int]]:
    """The tile's (first row, rows, first vector, vectors) passes over k. AVX-512: the whole
    tile at once (2*mr of its 32 registers). AVX2 has 16 registers of 8 floats: a 32-column
    tile would need 4*mr accumulators, so it runs in passes of at most 6 rows x 16 columns (12
    accumulators, 2 of B, 1 broadcast), each pass over all of k (the panels' k-slices, 12 and
    32 KB at KC = 256, stay in L1/L2)."""
    if wide():
        return [(0, mr, 0, 2)]
    if mr <= 2:   # one pass over all 32 columns: 4 or 8 accumulators
        return [(0, mr, 0, 4)]
    rows = 6 if mr % 6 == 0 else 4
    return [(r0, min(rows, mr - r0), v0, 2) for r0 in range(0, mr, rows) for v0 in (0, 2)]


def _make_micro(mr: int, indexed_b: bool, bias_per_row: bool):
    """The microkernel for tiles of `mr` rows. With `indexed_b`, row k of B starts at
    b + b_off + rows[k] (an int64 array of offsets) instead of b + b_off + k*NR: B is then read
    in place from an image (convolution, `ep_cpu.conv_implicit`). The bias is one per row
    (bias[bias_off + r]: conv channels) or one per column (bias[bias_off + j]: GEMM); callers
    without a bias pass zeros.

    micro(a, a_off, b, b_off, rows, c, c_off, ldc, k, accumulate, bias, bias_off, res, res_off,
    lo, hi, mode, ahead): C (+)= A x B over k; with mode EPILOGUE / EPILOGUE_RES the stored tile
    is clamp(sums + bias (+ res[res_off + r*ldc + j])). Whole tiles only: every row and column is
    stored. Where PREFETCH_AHEAD, each k step prefetches the weights' row `ahead` floats on (A
    with `indexed_b`, else B): prefetches do not fault, so it may point past the last panel. Only the store differs between modes, so the IR stays small (compile time).
    Vectors of 16 floats with AVX-512, 8 with AVX2 (`_passes`)."""
    i64, f32 = ir.IntType(64), ir.FloatType()
    width = 16 if wide() else 8     # floats per vector
    vec = ir.VectorType(f32, width)
    passes = _passes(mr)

    @intrinsic
    def micro(typingctx, a_arr, a_off, b_arr, b_off, rows_arr, c_arr, c_off, ldc, k, accumulate,
              bias_arr, bias_off, res_arr, res_off, lo, hi, mode, ahead):
        sig = types.void(a_arr, types.int64, b_arr, types.int64, rows_arr, c_arr, types.int64,
                         types.int64, types.int64, types.int64, bias_arr, types.int64, res_arr,
                         types.int64, types.float32, types.float32, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            (a_v, a_o, b_v, b_o, rows_v, c_v, c_o, ld, kk, acc_flag, bias_v, bias_o, res_v, res_o,
             lo_v, hi_v, mode_v, ahead_v) = args
            tys = signature.args

            def data(k_arg, value):
                return context.make_array(tys[k_arg])(context, builder, value).data

            def const(value):
                return ir.Constant(i64, value)

            a = builder.gep(data(0, a_v), [a_o])
            b = builder.gep(data(2, b_v), [b_o])
            rows = data(4, rows_v)
            c = builder.gep(data(5, c_v), [c_o])
            bias = builder.gep(data(10, bias_v), [bias_o])
            res = builder.gep(data(12, res_v), [res_o])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{width}f32")
            undef, zero_i32 = ir.Constant(vec, ir.Undefined), ir.Constant(ir.IntType(32), 0)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

            def broadcast(scalar):
                return builder.shuffle_vector(builder.insert_element(undef, scalar, zero_i32), undef, splat)

            def vec_ptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            prefetch_fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")

            def prefetch(base, offset):
                builder.call(prefetch_fn, [builder.bitcast(builder.gep(base, [offset]), i8p),
                                           ir.Constant(i32, 0), ir.Constant(i32, 2),   # read, L2
                                           ir.Constant(i32, 1)])

            add = builder.icmp_signed("!=", acc_flag, const(0))
            lo_s, hi_s = broadcast(lo_v), broadcast(hi_v)
            for r_first, n_rows, v_first, n_vecs in passes:
                # allocas in the entry block: LLVM promotes them to registers. Small tiles keep
                # sets of sums (k modulo `sets`) so that 16 (AVX-512) or 8 (AVX2) chains of FMAs
                # cover the FMA latency of two pipes (AVX-512, 4 x 256 x 512 from L2: 8 chains
                # 119, 16 chains 196 GFLOP/s measured)
                sets = max(1, min(4, (16 if width == 16 else 8) // (n_rows * n_vecs)))
                accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, None))
                        for _ in range(n_vecs * n_rows * sets)]

                def k_step(kidx, acc_set):
                    if indexed_b:
                        brow = builder.gep(b, [builder.load(builder.gep(rows, [kidx]))])
                    else:
                        brow = builder.gep(b, [builder.mul(kidx, const(NR))])
                    bvec = [builder.load(vec_ptr(brow, const(width * (v_first + h))), align=4)
                            for h in range(n_vecs)]
                    arow = builder.gep(a, [builder.mul(kidx, const(mr))])
                    if PREFETCH_AHEAD and r_first == 0 and v_first == 0:
                        # the weights' k row in the next panel (A's row: mr floats, one line;
                        # B's: NR floats, two)
                        if indexed_b:
                            prefetch(arow, ahead_v)
                        else:
                            for line in range(0, NR, 16):
                                prefetch(brow, builder.add(ahead_v, const(line)))
                    for r in range(n_rows):
                        sv = broadcast(builder.load(builder.gep(arow, [const(r_first + r)])))
                        for h in range(n_vecs):
                            slot = accs[(acc_set * n_rows + r) * n_vecs + h]
                            builder.store(builder.call(fma, [sv, bvec[h], builder.load(slot)]), slot)

                with cgutils.for_range(builder, builder.sdiv(kk, const(sets))) as loop:
                    for s in range(sets):
                        k_step(builder.add(builder.mul(loop.index, const(sets)), const(s)), s)
                if sets > 1:   # the last k % sets steps into set 0, then the sets summed
                    k_tail = builder.mul(builder.sdiv(kk, const(sets)), const(sets))
                    with cgutils.for_range(builder, builder.sub(kk, k_tail)) as loop:
                        k_step(builder.add(k_tail, loop.index), 0)
                    one = n_rows * n_vecs
                    for s in range(1, sets):
                        for slot, other in zip(accs[:one], accs[s * one:(s + 1) * one]):
                            builder.store(builder.fadd(builder.load(slot), builder.load(other)), slot)
                if not bias_per_row:
                    col_bias = [builder.load(vec_ptr(bias, const(width * (v_first + h))), align=4)
                                for h in range(n_vecs)]

                def store(mode):
                    for r in range(n_rows):
                        row_off = builder.mul(ld, const(r_first + r))
                        if mode != RAW and bias_per_row:
                            b_row = broadcast(builder.load(builder.gep(bias, [const(r_first + r)])))
                        for h in range(n_vecs):
                            off = builder.add(row_off, const(width * (v_first + h)))
                            ptr = vec_ptr(c, off)
                            v = builder.load(accs[r * n_vecs + h])
                            v = builder.select(add, builder.fadd(v, builder.load(ptr, align=4)), v)
                            if mode != RAW:
                                v = builder.fadd(v, b_row if bias_per_row else col_bias[h])
                                if mode == EPILOGUE_RES:
                                    v = builder.fadd(v, builder.load(vec_ptr(res, off), align=4))
                                v = VectorIR.clamp_with(builder, v, lo_s, hi_s)
                            builder.store(v, ptr, align=4)
                VectorIR(builder).store_modes(mode_v, store)
            return context.get_dummy_value()

        return sig, codegen

    return micro


if numba is not None:
    from ep_cpu.native_call import call_void, f32_at, f64_at, i64_at
    # (it reads NR from this module: imported once that exists)
    from ep_cpu.tile_transpose import store_transposed

    conv_micro4 = _make_micro(4, indexed_b=True, bias_per_row=True)
    conv_micro8 = _make_micro(8, indexed_b=True, bias_per_row=True)
    conv_micro12 = _make_micro(12, indexed_b=True, bias_per_row=True)
    gemm_micro1 = _make_micro(1, indexed_b=False, bias_per_row=False)
    gemm_micro2 = _make_micro(2, indexed_b=False, bias_per_row=False)
    gemm_micro4 = _make_micro(4, indexed_b=False, bias_per_row=False)
    gemm_micro8 = _make_micro(8, indexed_b=False, bias_per_row=False)
    gemm_micro12 = _make_micro(12, indexed_b=False, bias_per_row=False)
    tail_rows_jit = numba.njit(nogil=True, cache=True, inline="always")(tail_rows)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def conv_tile(ap, a_off, mr, image, p0, rows, kdim, c, c_off, ldc, bias, bias_off, res, res_off,
                  lo, hi, mode, ahead):  # pragma: no cover - compiled
        """C tile (mr x NR at c_off, row stride ldc) = A row panel (kdim, mr) at a_off x B, B's
        row k being image[p0 + rows[k] : + NR]; the last k block stores with `mode`; `ahead`:
        the next row panel's offset from this one (its prefetch)."""
        for k0 in range(0, kdim, KC):
            kc = min(KC, kdim - k0)
            md = mode if k0 + kc == kdim else RAW
            if mr == 4:
                conv_micro4(ap, a_off + k0 * 4, image, p0, rows[k0:], c, c_off, ldc, kc, k0,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            elif mr == 8:
                conv_micro8(ap, a_off + k0 * 8, image, p0, rows[k0:], c, c_off, ldc, kc, k0,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            else:
                conv_micro12(ap, a_off + k0 * 12, image, p0, rows[k0:], c, c_off, ldc, kc, k0,
                             bias, bias_off, res, res_off, lo, hi, md, ahead)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def gemm_tile(ap, a_off, mr, bp, b_off, no_rows, kdim, c, c_off, ldc, bias, bias_off, res,
                  res_off, lo, hi, mode, acc, ahead):  # pragma: no cover - compiled
        """C tile (+)= A row panel slice (kdim, mr) at a_off x the column panel slice (kdim, NR)
        at b_off; acc: add to the tile already in C (a later block of k); `ahead`: the next
        column panel's offset from this one (its prefetch)."""
        for k0 in range(0, kdim, KC):
            kc = min(KC, kdim - k0)
            md = mode if k0 + kc == kdim else RAW
            add = k0 + acc
            if mr == 4:
                gemm_micro4(ap, a_off + k0 * 4, bp, b_off + k0 * NR, no_rows, c, c_off, ldc, kc, add,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            elif mr == 8:
                gemm_micro8(ap, a_off + k0 * 8, bp, b_off + k0 * NR, no_rows, c, c_off, ldc, kc, add,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            elif mr == 1:
                gemm_micro1(ap, a_off + k0, bp, b_off + k0 * NR, no_rows, c, c_off, ldc, kc, add,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            elif mr == 2:
                gemm_micro2(ap, a_off + k0 * 2, bp, b_off + k0 * NR, no_rows, c, c_off, ldc, kc, add,
                            bias, bias_off, res, res_off, lo, hi, md, ahead)
            else:
                gemm_micro12(ap, a_off + k0 * 12, bp, b_off + k0 * NR, no_rows, c, c_off, ldc, kc,
                             add, bias, bias_off, res, res_off, lo, hi, md, ahead)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def store_tile(tile, rows, cols, r0, c0, y, ldy, bias, bias_per_row, has_bias, res, has_res,
                   lo, hi):  # pragma: no cover - compiled
        """Edge tiles: y[r0+r, c0+u] = clamp(tile[r, u] + bias + res[r0+r, c0+u]) for r < rows,
        u < cols; y, res flat with row stride ldy; bias per row (conv) or per column (GEMM)."""
        u64 = np.uint64
        tf = tile.reshape(tile.size)
        for r in range(rows):
            tr = u64(r * NR)
            yo = u64((r0 + r) * ldy + c0)
            brow = bias[r0 + r] if (has_bias and bias_per_row) else np.float32(0.0)
            for u in range(cols):
                v = tf[tr + u64(u)] + brow
                if has_bias and not bias_per_row:
                    v += bias[c0 + u]
                if has_res:
                    v += res[yo + u64(u)]
                v = lo if v < lo else v
                y[yo + u64(u)] = hi if v > hi else v

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def crop_rows(y, ldc, out, oh, ow, wq, r0, nrows, p0, p1, shift):  # pragma: no cover - compiled
        # out (M, oh, ow) flat from the grid y (M, ldc), rows [r0, r0 + nrows), the grid's
        # positions [p0, p1) (y's element 0 is grid position `shift`): each grid row's first ow
        # positions, copied while the tiles that wrote them are in cache
        u64 = np.uint64
        p1 = min(p1, oh * wq)
        if p1 <= p0:
            return
        plane = oh * ow
        for oy in range(p0 // wq, (p1 - 1) // wq + 1):
            x0, x1 = max(p0 - oy * wq, 0), min(p1 - oy * wq, ow)
            for r in range(r0, r0 + nrows):
                src, dst = u64(r * ldc + oy * wq - shift), u64(r * plane + oy * ow)
                for ox in range(x0, x1):
                    out[dst + u64(ox)] = y[src + u64(ox)]

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def conv_in_place(xf, rows, ap, m, ldc, bias, has_bias, res, has_res, lo, hi, mode, y,
                      act, act_kind, j0, j1, i0, i1, out, oh, ow, wq, shift, block):  # pragma: no cover - compiled
        # Stride 1: output (oy, ox) is position p = oy*wp + ox of the padded image's grid, and
        # its input for row k = (channel, tap) of the weights is xf[p + rows[k]]: the
        # microkernel reads B straight from the image, NR positions at a time. y and res are
        # (M, ldc) flat in that grid (the wp - ow positions of each row past the output are
        # computed, then dropped); tiles [j0, j1) of positions, row panels [i0, i1).
        # `act` (a callback address, 0: none) runs on each finished tile while it is in L1:
        # act(tile address, rows, NR, ldc, act_kind) (`vector_math.tile_callback`). With `out`
        # not empty, each row panel's block of tiles is then cropped into out (M, oh, ow)
        # (`crop_rows`; y's element 0 being grid position `shift`). `block`: tiles per block
        # (`tile_shapes.block_tiles`).
        y_at = np.int64(y.ctypes.data)
        kdim = rows.shape[0]
        mr = ap.shape[2]
        tile = np.empty((MR_MAX, NR), dtype=np.float32)
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for ib in range(i0, i1):
                r0 = ib * mr
                nrows = min(mr, m - r0)
                mt = mr if nrows == mr else tail_rows_jit(nrows, mr)   # the last panel's tiles
                for jb in range(jb0, jb1):
                    # (a map of positions not a multiple of NR, ldc positions a row: its last
                    # tile is the last NR positions, overlapping the one before)
                    p0 = min(jb * NR, ldc - NR)
                    if nrows == mt:
                        conv_tile(ap, ib * kdim * mr, mt, xf, p0, rows, kdim, y, r0 * ldc + p0, ldc,
                                  bias, r0, res, r0 * ldc + p0, lo, hi, mode, kdim * mr)
                    else:
                        conv_tile(ap, ib * kdim * mr, mt, xf, p0, rows, kdim, tile, 0, NR, bias, 0,
                                  res, 0, lo, hi, RAW, kdim * mr)
                        store_tile(tile, nrows, NR, r0, p0, y, ldc, bias, True, has_bias, res,
                                   has_res, lo, hi)
                    if act != 0:
                        call_void(act, (y_at + 4 * (r0 * ldc + p0), nrows, np.int64(NR), ldc, act_kind))
                if out.size:
                    crop_rows(y, ldc, out, oh, ow, wq, r0, nrows, jb0 * NR + shift, jb1 * NR + shift,
                              shift)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def pack_row_panels(a, mr, i0, i1):  # pragma: no cover - compiled
        # row panels [i0, i1) of a (M, K) as (i1 - i0, K * mr): panel row k holds a[r0:r0+mr, k]
        u64 = np.uint64
        m, kdim = a.shape
        af = a.reshape(a.size)
        ap = np.empty((i1 - i0, kdim * mr), dtype=np.float32)
        for ib in range(i0, i1):
            dst = ap[ib - i0]
            r0 = ib * mr
            rows = min(mr, m - r0)
            mt = mr if rows == mr else tail_rows_jit(rows, mr)   # the last panel: (k, mt)
            for r in range(rows):
                src = u64((r0 + r) * kdim)
                for k in range(kdim):
                    dst[u64(k * mt + r)] = af[src + u64(k)]
            for r in range(rows, mt):
                for k in range(kdim):
                    dst[u64(k * mt + r)] = 0.0
        return ap

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def gemm_panels(ap, first, m, kdim, bp, n, mr, bias, has_bias, res, has_res, lo, hi, mode, y,
                    i0, i1, j0, j1, transposed, act, act_kind):  # pragma: no cover - compiled
        # ap: A's row panels (`pack_row_panels`), ap[ib - first] being panel ib; bp (NB, K, NR)
        # packed B; y, res (M * N) flat; row panels [i0, i1) of mr rows, column panels [j0, j1).
        # Whole tiles. Where A's row panels fit in L2 (a few rows: a thin conv, a decoder
        # step), each tile runs whole k and B's column panels stream once, in order (from DRAM
        # at a model's first use: k blocks jumping between panels measured 10-25% slower
        # there). Otherwise k runs in blocks of KC: a block of row panels' k-slices
        # (PANEL_BLOCK_BYTES) stays in L2 while each column panel's k-slice, in L1, meets every
        # row panel of the block, the sums waiting in y between k blocks; so A is no longer
        # re-read per block of column panels (2048^3: 62 -> 85 GMAC/s). The last k block stores
        # with the epilogue (`mode`). Edge tiles (a last partial row or column panel) run whole k
        # through a scratch tile. `transposed`: y (N, M), y[j, i] = C[i, j] (a thin conv's output
        # channels by positions): every tile whole k through the scratch tile, stored transposed.
        # `act` (a callback address, 0: none; not with `transposed`) runs on each finished tile
        # while it is in L1: act(tile address, rows, NR, ldc, act_kind) (`vector_math.tile_callback`).
        tile = np.empty(MR_MAX * NR, dtype=np.float32)
        y_at = np.int64(y.ctypes.data)
        no_rows = np.zeros(1, dtype=np.int64)
        left = m - (m // mr) * mr
        mt = tail_rows_jit(left, mr) if left else mr   # tile rows of the last row panel
        if transposed:
            i_full, j_full = i1, j1
        else:
            # (a last row panel its tiles fill exactly runs with the others: the edge loop
            # below would stream all of B again for it)
            i_full = max(i0, min(i1, m // mr + (left > 0 and left == mt)))
            j_full = max(j0, min(j1, n // NR))
        rows_outer = transposed or (i1 - i0) * mr * kdim * 4 <= PANEL_BLOCK_BYTES
        if rows_outer:   # a row panel's A reused over a block of column panels
            k_block, rows_block = kdim, max(1, i_full - i0)
            cols_block = max(1, PANEL_BLOCK_BYTES // (kdim * NR * 4))
        else:            # a column panel's k-slice reused over a block of row panels
            k_block, rows_block = KC, max(1, PANEL_BLOCK_BYTES // (KC * mr * 4))
            cols_block = max(1, j_full - j0)
        for k0 in range(0, kdim, k_block):
            kc = min(k_block, kdim - k0)
            md = mode if k0 + kc == kdim else RAW
            for jb0 in range(j0, j_full, cols_block):
                jb1 = min(j_full, jb0 + cols_block)
                for ib0 in range(i0, i_full, rows_block):
                    n_i, n_j = min(i_full, ib0 + rows_block) - ib0, jb1 - jb0
                    for t in range(n_i * n_j):
                        if rows_outer:
                            ib, jb = ib0 + t // n_j, jb0 + t % n_j
                        else:
                            ib, jb = ib0 + t % n_i, jb0 + t // n_i
                        r0, c0 = ib * mr, jb * NR
                        dst, at, ld = (tile, 0, NR) if transposed else (y, r0 * n + c0, n)
                        ti = mr if r0 + mr <= m else mt   # the last row panel's tile rows
                        gemm_tile(ap, (ib - first) * kdim * mr + k0 * ti, ti, bp, (jb * kdim + k0) * NR,
                                  no_rows, kc, dst, at, ld, bias, c0, res, r0 * n + c0, lo, hi,
                                  RAW if transposed else md, k0, kdim * NR)
                        if act != 0 and md != RAW and not transposed:
                            call_void(act, (y_at + 4 * (r0 * n + c0), min(ti, m - r0), np.int64(NR), n,
                                            act_kind))
                        for h in range(2 if transposed else 0):
                            cols = min(16, n - c0 - 16 * h)
                            if cols > 0:
                                store_transposed(tile, 16 * h, min(mr, m - r0), cols, y,
                                                 (c0 + 16 * h) * m + r0, m, bias, c0 + 16 * h,
                                                 np.int64(has_bias), res, np.int64(has_res), lo, hi)
        for ib in range(i0, i1):
            r0 = ib * mr
            rows = min(mr, m - r0)
            ti = mr if rows == mr else mt
            for jb in range(j_full if ib < i_full else j0, j1):
                c0 = jb * NR
                gemm_tile(ap, (ib - first) * kdim * mr, ti, bp, jb * kdim * NR, no_rows, kdim, tile, 0,
                          NR, bias, 0, res, 0, lo, hi, RAW, 0, kdim * NR)
                cols = min(NR, n - c0)
                store_tile(tile, rows, cols, r0, c0, y, n, bias, False, has_bias, res, has_res, lo, hi)
                if act != 0:   # (the callback takes whole vectors: through the scratch tile)
                    tf = tile.reshape(tile.size)
                    for r in range(rows):
                        for u in range(NR):
                            tf[r * NR + u] = y[(r0 + r) * n + c0 + u] if u < cols else np.float32(0.0)
                    call_void(act, (np.int64(tile.ctypes.data), rows, np.int64(NR), np.int64(NR), act_kind))
                    for r in range(rows):
                        for u in range(cols):
                            y[(r0 + r) * n + c0 + u] = tf[r * NR + u]

    # The drivers as C callbacks over raw addresses: the parallel runner (`native_call.run_parts`)
    # calls them by address, so it compiles in ~0.3 s (a prange loop that inlined a driver
    # took 6-8 s to compile, paid by the first session on a machine), and the Python pool calls
    # them through ctypes, which releases the GIL.
    # packed arguments (native_call.pack) of the two callbacks, in this order
    CONV_ARGS = ("xf", "xf_n", "rows", "kdim", "ap", "mb", "mr", "m", "ldc", "bias", "has_bias",
                 "res", "has_res", "lo", "hi", "mode", "y", "act", "act_kind", "out", "oh", "ow",
                 "wq", "shift", "block")
    GEMM_ARGS = ("a", "m", "kdim", "bp", "nb", "n", "mr", "bias", "has_bias", "res", "has_res",
                 "lo", "hi", "mode", "y", "a_packed", "y_transposed", "act", "act_kind")

    def _conv_range(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """conv_in_place over tiles [j0, j1) and row panels [i0, i1); CONV_ARGS packed."""
        a = numba.carray(f64_at(args_at), (25,))
        xf_n, kdim, mb, mr, m, ldc = (np.int64(a[1]), np.int64(a[3]), np.int64(a[5]),
                                      np.int64(a[6]), np.int64(a[7]), np.int64(a[8]))
        oh, ow = np.int64(a[20]), np.int64(a[21])
        # `out` (a[19], 0: no crop) as an array of M * oh * ow values, or none
        out = numba.carray(f32_at(np.int64(a[19])), (m * oh * ow if a[19] != 0 else 0,))
        conv_in_place(numba.carray(f32_at(np.int64(a[0])), (xf_n,)),
                      numba.carray(i64_at(np.int64(a[2])), (kdim,)),
                      numba.carray(f32_at(np.int64(a[4])), (mb, kdim, mr)), m, ldc,
                      numba.carray(f32_at(np.int64(a[9])), (m,)), a[10] != 0,
                      numba.carray(f32_at(np.int64(a[11])), (m * ldc,)), a[12] != 0,
                      np.float32(a[13]), np.float32(a[14]), np.int64(a[15]),
                      numba.carray(f32_at(np.int64(a[16])), (m * ldc,)), np.int64(a[17]),
                      np.int64(a[18]), j0, j1, i0, i1, out, oh, ow, np.int64(a[22]), np.int64(a[23]),
                      max(np.int64(1), np.int64(a[24])))

    def _gemm_range(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """gemm_panels over column panels [j0, j1) and row panels [i0, i1); GEMM_ARGS packed. A
        is (M, K) row-major, or with a_packed already its row panels (`pack_row_panels`); with
        y_transposed y is (N, M); act (a `vector_math.tile_callback` address, 0: none) and
        act_kind: the activation after the clamp."""
        a = numba.carray(f64_at(args_at), (19,))
        m, kdim, nb, n, mr = np.int64(a[1]), np.int64(a[2]), np.int64(a[4]), np.int64(a[5]), np.int64(a[6])
        if a[15] != 0:
            ap = numba.carray(f32_at(np.int64(a[0])), (i1, kdim * mr))
            first = np.int64(0)
        else:
            ap = pack_row_panels(numba.carray(f32_at(np.int64(a[0])), (m, kdim)), mr, i0, i1)
            first = i0
        gemm_panels(ap, first, m, kdim, numba.carray(f32_at(np.int64(a[3])), (nb, kdim, NR)), n, mr,
                    numba.carray(f32_at(np.int64(a[7])), (n,)), a[8] != 0,
                    numba.carray(f32_at(np.int64(a[9])), (m * n,)), a[10] != 0,
                    np.float32(a[11]), np.float32(a[12]), np.int64(a[13]),
                    numba.carray(f32_at(np.int64(a[14])), (m * n,)), i0, i1, j0, j1, a[16] != 0,
                    np.int64(a[17]), np.int64(a[18]))

    def conv_range():
        """C callback (native_call.RANGE_SIG): conv_in_place over tiles [j0, j1), row panels
        [i0, i1), its arguments packed in CONV_ARGS order."""
        return native_call.callback(_conv_range, len(CONV_ARGS))

    def gemm_range():
        """C callback (native_call.RANGE_SIG): gemm_panels over column panels [j0, j1), row
        panels [i0, i1), its arguments packed in GEMM_ARGS order."""
        return native_call.callback(_gemm_range, len(GEMM_ARGS))
