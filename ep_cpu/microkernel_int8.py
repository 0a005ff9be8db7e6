"""The int8 GEMM microkernel (AVX-512 VNNI) and its driver: u8 activations x s8 weights -> int32,
finished in the tile as int32 (MatMulInteger) or float32 = acc * a_scale * w_scale[col] + bias.

`vpdpbusd` adds to each 32-bit lane the four products of 4 unsigned bytes of one operand and 4
signed bytes of the other: exact (the non-saturating form wraps only past int32, i.e. beyond
K ~ 65k of 8-bit values). A tile of MR rows x NR=32 columns keeps 2*MR accumulators of 16 int32
in registers, as `ep_cpu.microkernel` does for float32; per step of 4 k, one int32 word of A per
row (its 4 bytes) is broadcast and two B vectors (32 columns x 4 bytes) are read.

Layouts. B (K, N) is packed once per session (`pack_weight`): column panels of NR columns, each
(ceil(K/4), NR, 4) bytes, k padded with zeros. A is quantized or copied per call into row panels
(ceil(K/4), MR, 4) bytes (`pack_rows_u8`, `quantize_pack`). Zero points never enter the inner
loop; with c = b - b_zero_point,

    sum_k (a - za) c  =  sum_k a b' + d[j] * rowsum(a) - za * colsum(c)

where b' = c (d = 0) when c fits in int8 (symmetric int8 weights: the usual case) and otherwise
b' = b - 128 for uint8 B or b for int8 B, d[j] = c - b' per column. The epilogue adds
rows[i] * d[j] + colterm[j] (colterm = -za * colsum(c), per call) and, in FLOAT mode, converts to
float32 and multiplies by mult[j] = a_scale * w_scale[j] (float32, one rounding as the unfused
Cast -> Mul) and adds bias[j]: no int32 tensor is materialised. int8 A is shifted into uint8 by
flipping its sign bit (a + 128), its zero point with it.

Only with AVX-512 VNNI (`available()`); callers keep their float32 path otherwise. The driver is
a numba cfunc over raw addresses run by `ep_cpu.native_call.run_ranges` (numba's TBB threads or
`ep_cpu.gemm`'s pool).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu import native_call
from ep_cpu.tile_shapes import choose_mr  # the int8 drivers' tile rows

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; callers keep the float path
    numba = None

NR = 32                     # tile columns: two vectors of 16 int32 lanes
MR_MAX = 12
PANEL_BLOCK_BYTES = 512 * 1024   # B panels per block of the driver: half of a Zen 5 core's L2
RAW_INT32, SCALED_FLOAT = 0, 1  # tile store modes: corrected int32, or float32 scaled + bias

_state = {"checked": False, "available": False}


def available() -> bool:
    """numba, AVX-512F/BW and AVX-512 VNNI on the host CPU."""
    if not _state["checked"]:
        ok = False
        if numba is not None and mk.available():
            try:
                import llvmlite.binding as ll
                f = ll.get_host_cpu_features()
                ok = bool(f.get("avx512vnni", False) and f.get("avx512bw", False))
            except Exception:   # noqa: BLE001 - feature query failed: keep the float path
                ok = False
        _state["available"] = ok
        _state["checked"] = True
    return _state["available"]


@dataclass
class PackedWeight:
    """A constant (K, N) 8-bit B with its zero point, packed for the microkernel."""
    k: int
    n: int
    panels: np.ndarray    # (NB, ceil(K/4) * NR * 4) int8
    d: np.ndarray         # (NB * NR,) int32: c - b' per column (zeros in the usual case)
    colsum: np.ndarray    # (NB * NR,) int64: sum over k of c = b - zero point
    uses_rows: bool       # whether d is non-zero (the row sums of A are needed)
    colsum32: np.ndarray  # colsum wrapped to int32 (the epilogue's arithmetic)


def pack_weight(b: np.ndarray, zero_point: np.ndarray | None) -> PackedWeight:
    """(K, N) int8/uint8 B and its zero point (None, scalar or one per column)."""
    k, n = b.shape
    zp = np.zeros(n, np.int64) if zero_point is None else \
        np.broadcast_to(np.asarray(zero_point, np.int64).reshape(-1), (n,))
    c = b.astype(np.int64) - zp
    if c.size == 0 or (c.min() >= -128 and c.max() <= 127):
        bq, d = c, np.zeros(n, np.int64)
    elif b.dtype == np.uint8:
        bq, d = b.astype(np.int64) - 128, 128 - zp
    else:
        bq, d = b.astype(np.int64), -zp
    nb, k4 = -(-n // NR), -(-k // 4)
    padded = np.zeros((k4 * 4, nb * NR), np.int8)
    padded[:k, :n] = bq
    # (k4, 4, nb, NR) -> (nb, k4, NR, 4): 4 consecutive k of a column are one int32 lane
    panels = padded.reshape(k4, 4, nb, NR).transpose(2, 0, 3, 1).reshape(nb, k4 * NR * 4)
    col_d = np.zeros(nb * NR, np.int32)
    col_d[:n] = d
    colsum = np.zeros(nb * NR, np.int64)
    colsum[:n] = c.sum(axis=0)
    return PackedWeight(k, n, np.ascontiguousarray(panels), col_d, colsum, bool(np.any(d)),
                        colsum.astype(np.int32))


def pack_rows_u8(a: np.ndarray, mr: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) uint8 or int8 A -> (row panels (MB, ceil(K/4) * mr * 4) uint8, row sums (MB * mr,)
    int32); int8 values are shifted into uint8 (+128, the caller adds 128 to the zero point)."""
    m, k = a.shape
    mb, k4 = -(-m // mr), -(-k // 4)
    ap = np.empty((mb, k4 * mr * 4), np.uint8)
    rows = np.empty(mb * mr, np.int32)
    a8 = np.ascontiguousarray(a).view(np.uint8)
    if k % 4 == 0 and m:
        _pack_words(a8, a8.view(np.uint32), a.dtype == np.int8, mr, ap.reshape(-1).view(np.uint32), rows)
    else:
        _pack_u8(a8, a.dtype == np.int8, mr, ap, rows)
    return ap, rows


PAR_QUANTIZE_MIN = 1 << 18   # values of A from which its quantization is split over the threads


def quantize_pack(x: np.ndarray, mr: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.float32, int]:
    """DynamicQuantizeLinear of float32 (M, K) x (`quantize.dynamic_quantize_uint8`'s rule) straight
    into row panels: (panels, row sums, scale, zero point). Large A: row panels split over
    `threads` of numba's TBB threads (where it loads)."""
    m, k = x.shape
    xf = np.ascontiguousarray(x, dtype=np.float32)
    lo = min(0.0, float(xf.min())) if xf.size else 0.0
    hi = max(0.0, float(xf.max())) if xf.size else 0.0
    scale = np.float32((hi - lo) / 255.0)
    mb, k4 = -(-m // mr), -(-k // 4)
    ap = np.empty((mb, k4 * mr * 4), np.uint8)
    rows = np.empty(mb * mr, np.int32)
    if scale == 0:
        ap[:] = 0
        rows[:] = 0
        return ap, rows, scale, 0
    # round() is half to even as np.rint; the quotient is float32's, as DynamicQuantizeLinear's
    zp = min(255, max(0, round(float(np.float32(0 - lo) / scale))))
    workers = min(threads, mb)
    if workers > 1 and xf.size >= PAR_QUANTIZE_MIN and native_call.parallel_ok():
        params = _params(xf, m, k, mr, ap, rows, scale, zp)
        native_call.set_threads(workers)
        native_call.run_parts(quantize_range().address, params.ctypes.data, 1, mb, workers, False)
    else:
        _quantize_pack(xf, scale, np.float32(zp), mr, ap, rows)
    return ap, rows, scale, zp


PAR_MIN_PANELS = 2
PAR_MIN_MACS = 1 << 23


def matmul(ap: np.ndarray, rows: np.ndarray, m: int, w: PackedWeight, a_zero_point: int,
           mult: np.ndarray | None, bias: np.ndarray | None, y: np.ndarray, threads: int,
           pool) -> np.ndarray:
    """y (M, N) = (A - za) @ (B - zb) as int32 (mult None, y int32) or as float32 times mult (N,)
    plus bias (N,) (y float32), A packed by `pack_rows_u8` / `quantize_pack` with choose_mr(m)."""
    n, nb = w.n, w.panels.shape[0]
    mr = choose_mr(m)
    k4 = -(-w.k // 4)
    colterm = w.colsum32 * np.int32(-int(a_zero_point))   # int32: wraps as the result does
    if mult is None:
        mode, mv, bv = RAW_INT32, _zeros_f32(nb * NR), _zeros_f32(nb * NR)
    else:
        mode, mv = SCALED_FLOAT, _padded(mult, nb * NR)
        bv = _zeros_f32(nb * NR) if bias is None else _padded(bias, nb * NR)
    row_panels = ap.shape[0]
    by_columns = nb >= 2 * PAR_MIN_PANELS or nb >= row_panels
    workers = max(1, min(threads, (nb if by_columns else row_panels) // PAR_MIN_PANELS))
    if m * w.k * n < PAR_MIN_MACS:
        workers = 1
    yf = y.reshape(-1)
    params = _params(ap, row_panels, k4, w.panels, nb, m, n, mr, rows, w.d, colterm, mv, bv, mode, yf)
    _run(gemm_i8_range(), params, nb if by_columns else row_panels, nb, row_panels,
         workers, by_columns, pool)
    return y


def _padded(v: np.ndarray, size: int) -> np.ndarray:
    """A per-column float32 vector padded with zeros to whole panels (as is when it already is)."""
    v = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    if v.size == size:
        return v
    out = np.zeros(size, np.float32)
    out[:v.size] = v
    return out


def _params(*values) -> np.ndarray:
    """The callbacks' packed parameters (`native_call.pack`): arrays by address (C-contiguous,
    kept alive by the caller for the call), the rest as they are."""
    return native_call.pack(*[v.ctypes.data if isinstance(v, np.ndarray) else v for v in values])


PARTS_PER_WORKER = 2   # TBB balances parts between the threads: one thread's stall (a shared
                       # machine) costs a part, not half of the product


def _run(callback, args, count, cols, rows, workers, by_columns, pool) -> None:
    """`native_call.run_ranges`, split finer on numba's TBB threads (A is packed once, so a part costs
    only its own tiles)."""
    if workers > 1 and native_call.parallel_ok():
        native_call.set_threads(workers)
        native_call.run_parts(callback.address, args.ctypes.data, cols, rows,
                              max(workers, min(count, PARTS_PER_WORKER * workers)), by_columns)
        return
    native_call.run_ranges(callback, args, cols, rows, workers, by_columns, pool)


def matmul_batched(a: np.ndarray, b: np.ndarray, a_zero_point: int, b_zero_point: int,
                   mult: float | None, threads: int, pool) -> np.ndarray:
    """(batch, M, K) x (batch, K, N) 8-bit operands, both per call (attention's products of two
    activations), scalar zero points: int32 (mult None) or float32 times mult. B's matrices are
    packed here; the batch is split over the threads."""
    batch, m, k = a.shape
    n = b.shape[2]
    mr = choose_mr(m)
    mb, nb, k4 = -(-m // mr), -(-n // NR), -(-k // 4)
    za = int(a_zero_point) + (128 if a.dtype == np.int8 else 0)
    bp = np.empty((batch, nb, k4 * NR * 4), np.uint8)
    colterm = np.empty((batch, nb * NR), np.int32)
    # B' = B - 128 for uint8 B (its int8 bits: b ^ 0x80), B itself for int8; c = B - zb = B' + d
    d = (128 if b.dtype == np.uint8 else 0) - int(b_zero_point)
    if m % mr == 0:     # the batch's row panels are those of its (batch * M, K) rows
        ap, rows = pack_rows_u8(a.reshape(batch * m, k), mr)
    else:
        ap = np.empty((batch, mb, k4 * mr * 4), np.uint8)
        rows = np.empty((batch, mb * mr), np.int32)
        for t in range(batch):
            ap[t], rows[t] = pack_rows_u8(a[t], mr)
    _pack_batch(np.ascontiguousarray(b).view(np.uint8), b.dtype == np.uint8, d, za, bp, colterm)
    dv = np.full(nb * NR, d, np.int32)
    if mult is None:
        mode, mv, y = RAW_INT32, _zeros_f32(nb * NR), np.empty((batch, m, n), np.int32)
    else:
        mode, mv, y = SCALED_FLOAT, np.full(nb * NR, mult, np.float32), np.empty((batch, m, n), np.float32)
    workers = max(1, min(threads, batch)) if batch * m * n * k >= PAR_MIN_MACS else 1
    params = _params(ap, mb, k4, bp, nb, m, n, mr, rows, dv, colterm, mv, _zeros_f32(nb * NR), mode, y)
    _run(gemm_i8_batch_range(), params, batch, batch, 1, workers, True, pool)
    return y


_zero_cache: dict = {}


def _zeros_f32(n: int) -> np.ndarray:
    z = _zero_cache.get(n)
    if z is None:
        z = _zero_cache[n] = np.zeros(n, np.float32)
    return z


def _make_micro_i8(mr: int):
    """micro(a, a_off, b, b_off, k4, c, c_off, ldc, rows, rows_off, d, colterm, mult, bias,
    col_off, mode): the tile C[0:mr, 0:NR] (row stride ldc, int32 words) of A's row panel
    (k4, mr) int32 words at a_off times B's column panel (k4, NR) words at b_off, corrected with
    rows[rows_off + r] * d[col_off + j] + colterm[col_off + j], stored as int32 (RAW_INT32) or
    as float32 * mult[col_off + j] + bias[col_off + j] (SCALED_FLOAT). Whole tiles only."""
    i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
    v16i, v16f = ir.VectorType(i32, 16), ir.VectorType(f32, 16)

    @intrinsic
    def micro(typingctx, a_arr, a_off, b_arr, b_off, k4, c_arr, c_off, ldc, rows_arr, rows_off,
              d_arr, ct_arr, mult_arr, bias_arr, col_off, mode):
        sig = types.void(a_arr, types.int64, b_arr, types.int64, types.int64, c_arr, types.int64,
                         types.int64, rows_arr, types.int64, d_arr, ct_arr, mult_arr, bias_arr,
                         types.int64, types.int64)

        def codegen(context, builder, signature, args):
            (a_v, a_o, b_v, b_o, kk, c_v, c_o, ld, rows_v, rows_o, d_v, ct_v, mult_v, bias_v,
             col_o, mode_v) = args
            tys = signature.args

            def data(k_arg, value):
                return context.make_array(tys[k_arg])(context, builder, value).data

            dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16i, [v16i] * 3),
                                                    "llvm.x86.avx512.vpdpbusd.512")
            a = builder.gep(data(0, a_v), [a_o])
            b = builder.gep(data(2, b_v), [b_o])
            c = builder.gep(data(5, c_v), [c_o])
            rows = builder.gep(data(8, rows_v), [rows_o])
            d = builder.gep(data(10, d_v), [col_o])
            ct = builder.gep(data(11, ct_v), [col_o])
            mult = builder.gep(data(12, mult_v), [col_o])
            bias = builder.gep(data(13, bias_v), [col_o])
            undef = ir.Constant(v16i, ir.Undefined)
            splat = ir.Constant(v16i, [0] * 16)

            def broadcast(scalar, vec_undef=undef):
                return builder.shuffle_vector(builder.insert_element(vec_undef, scalar, ir.Constant(i32, 0)),
                                              vec_undef, splat)

            def vptr(base, offset, vt=v16i):
                return builder.bitcast(builder.gep(base, [ir.Constant(i64, offset)] if isinstance(offset, int)
                                                   else [offset]), vt.as_pointer())

            accs = [cgutils.alloca_once_value(builder, ir.Constant(v16i, None)) for _ in range(2 * mr)]
            with cgutils.for_range(builder, kk) as loop:
                brow = builder.gep(b, [builder.mul(loop.index, ir.Constant(i64, NR))])
                bvec = [builder.load(vptr(brow, 16 * h), align=4) for h in range(2)]
                arow = builder.gep(a, [builder.mul(loop.index, ir.Constant(i64, mr))])
                for r in range(mr):
                    av = broadcast(builder.load(builder.gep(arow, [ir.Constant(i64, r)])))
                    for h in range(2):
                        slot = accs[2 * r + h]
                        builder.store(builder.call(dpbusd, [builder.load(slot), av, bvec[h]]), slot)
            dv = [builder.load(vptr(d, 16 * h), align=4) for h in range(2)]
            cv = [builder.load(vptr(ct, 16 * h), align=4) for h in range(2)]
            done = builder.append_basic_block("tile_stored")
            switch = builder.switch(mode_v, done)
            for mode in (RAW_INT32, SCALED_FLOAT):
                block = builder.append_basic_block(f"store_mode_{mode}")
                switch.add_case(ir.Constant(i64, mode), block)
                builder.position_at_end(block)
                if mode == SCALED_FLOAT:
                    mv = [builder.load(vptr(mult, 16 * h, v16f), align=4) for h in range(2)]
                    bv = [builder.load(vptr(bias, 16 * h, v16f), align=4) for h in range(2)]
                for r in range(mr):
                    rv = broadcast(builder.load(builder.gep(rows, [ir.Constant(i64, r)])))
                    row_off = builder.mul(ld, ir.Constant(i64, r))
                    for h in range(2):
                        v = builder.load(accs[2 * r + h])
                        v = builder.add(builder.add(v, builder.mul(rv, dv[h])), cv[h])
                        off = builder.add(row_off, ir.Constant(i64, 16 * h))
                        if mode == RAW_INT32:
                            builder.store(v, vptr(c, off), align=4)
                        else:
                            f = builder.fadd(builder.fmul(builder.sitofp(v, v16f), mv[h]), bv[h])
                            builder.store(f, vptr(c, off, v16f), align=4)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return micro


if numba is not None:
    micro4 = _make_micro_i8(4)
    micro8 = _make_micro_i8(8)
    micro12 = _make_micro_i8(12)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _store_row(words, r, mr, dst, base):  # pragma: no cover - compiled
        # one row's k4 words (4 bytes of k each) into its slot of the row panel (k4, mr) of
        # words at dst[base:]; views are made once by the callers (each costs ~40 ns)
        u64 = np.uint64
        for j in range(words.shape[0]):
            dst[u64(base + j * mr + r)] = words[u64(j)]

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _pack_words(a, words, signed, mr, ap, rows):  # pragma: no cover - compiled
        # K a multiple of 4: a (M, K) bytes and the same data as words (M, K/4) uint32 ->
        # ap (MB * k4 * mr,) uint32 words, rows (MB*mr,). No per-row views (they cost ~40 ns).
        u64 = np.uint64
        m, k = a.shape
        k4 = words.shape[1]
        mb = rows.shape[0] // mr
        flip = np.uint8(128) if signed else np.uint8(0)
        flip32 = np.uint32(0x80808080) if signed else np.uint32(0)
        for ib in range(mb):
            base = u64(ib * k4 * mr)
            for r in range(mr):
                i = ib * mr + r
                s = 0
                if i < m:
                    for kk in range(k):
                        s += np.int32(a[i, kk] ^ flip)
                    for j in range(k4):
                        ap[base + u64(j * mr + r)] = words[i, j] ^ flip32
                else:
                    for j in range(k4):
                        ap[base + u64(j * mr + r)] = 0
                rows[i] = s

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _pack_u8(a, signed, mr, ap, rows):  # pragma: no cover - compiled
        # a (M, K) bytes (uint8 view of uint8 or int8 data) -> ap (MB, k4*mr*4), rows (MB*mr,)
        u64 = np.uint64
        m, k = a.shape
        k4 = (k + 3) // 4
        flip = np.uint8(128) if signed else np.uint8(0)
        row = np.zeros(k4 * 4, dtype=np.uint8)   # padding k stays 0
        row32 = row.view(np.uint32)
        dst = ap.reshape(ap.size).view(np.uint32)
        for ib in range(ap.shape[0]):
            for r in range(mr):
                i = ib * mr + r
                s = 0
                if i < m:
                    src = a[i]
                    for kk in range(k):
                        v = src[u64(kk)] ^ flip
                        s += np.int32(v)
                        row[u64(kk)] = v
                else:
                    row[:] = 0
                _store_row(row32, r, mr, dst, ib * k4 * mr)
                rows[i] = s

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def quantize_u8(x, scale, zp, out):  # pragma: no cover - compiled
        """out = clip(rint(x / scale) + zp, 0, 255) as uint8, x and out flat, in one pass (the
        rint as in `_quantize_pack`)."""
        magic = np.float32(12582912.0)
        lo, hi = np.float32(0.0), np.float32(255.0)
        for i in range(x.shape[0]):
            q = ((x[i] / scale + magic) - magic) + zp
            out[i] = np.uint8(np.int32(max(lo, min(hi, q))))

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _quantize_pack(x, scale, zp, mr, ap, rows):  # pragma: no cover - compiled
        # q = clip(rint(x / scale) + zp, 0, 255) in float32 (DynamicQuantizeLinear), packed.
        # rint as (v + 1.5 * 2**23) - 1.5 * 2**23: round half to even for |v| < 2**22, and any
        # larger |v| is clipped anyway; it vectorizes where a rint call does not.
        u64 = np.uint64
        m, k = x.shape
        k4 = (k + 3) // 4
        magic = np.float32(12582912.0)
        lo, hi = np.float32(0.0), np.float32(255.0)
        row = np.zeros(k4 * 4, dtype=np.uint8)
        row32 = row.view(np.uint32)
        dst = ap.reshape(ap.size).view(np.uint32)
        for ib in range(ap.shape[0]):
            for r in range(mr):
                i = ib * mr + r
                s = 0
                if i < m:
                    src = x[i]
                    for kk in range(k):
                        q = ((src[u64(kk)] / scale + magic) - magic) + zp
                        q = max(lo, min(hi, q))
                        v = np.uint8(np.int32(q))
                        s += np.int32(v)
                        row[u64(kk)] = v
                else:
                    row[:] = 0
                _store_row(row32, r, mr, dst, ib * k4 * mr)
                rows[i] = s

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _pack_batch(b, b_unsigned, d, za, bp, colterm):  # pragma: no cover - compiled
        # b (batch, K, N) bytes -> column panels of each B' (B' = B ^ 0x80 for uint8 B) and
        # colterm = -za * colsum(B' + d)
        # Sums: the stored int8 bits w have the value (w ^ 0x80) - 128, and w ^ 0x80 is the
        # uint8 B itself or int8 B's bits flipped: colsum(B') = sum(that) - 128 K.
        u64 = np.uint64
        batch, k, n = b.shape
        k4 = (k + 3) // 4
        flip = np.uint8(128) if b_unsigned else np.uint8(0)
        unflip = np.uint8(0) if b_unsigned else np.uint8(128)
        sums = np.empty(n, dtype=np.int32)
        for t in range(batch):
            bt, ct = b[t], colterm[t]
            dst = bp[t].reshape(bp.shape[1] * bp.shape[2])
            dst[:] = 0
            sums[:] = 0
            for g in range(k4):
                for q in range(min(4, k - 4 * g)):
                    src = bt[4 * g + q]
                    for j in range(n):
                        v = src[u64(j)]
                        dst[u64((j // NR) * k4 * NR * 4 + g * NR * 4 + (j % NR) * 4 + q)] = v ^ flip
                        sums[u64(j)] += np.int32(v ^ unflip)
            ct[:] = 0
            for j in range(n):
                ct[u64(j)] = np.int32(-za) * (sums[u64(j)] - np.int32(128 * k) + np.int32(k * d))

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _tile(ap, a_off, mr, bp, b_off, k4, c, c_off, ldc, rows, rows_off, d, ct, mult, bias,
              col_off, mode):  # pragma: no cover - compiled
        if mr == 4:
            micro4(ap, a_off, bp, b_off, k4, c, c_off, ldc, rows, rows_off, d, ct, mult, bias, col_off, mode)
        elif mr == 8:
            micro8(ap, a_off, bp, b_off, k4, c, c_off, ldc, rows, rows_off, d, ct, mult, bias, col_off, mode)
        else:
            micro12(ap, a_off, bp, b_off, k4, c, c_off, ldc, rows, rows_off, d, ct, mult, bias, col_off,
                    mode)

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def gemm_i8_panels(ap, bp, m, n, k4, mr, rows, d, ct, mult, bias, mode, y, i0, i1, j0,
                       j1):  # pragma: no cover - compiled
        # ap (MB, k4*mr) and bp (NB, k4*NR) int32 words; y (M*N) int32 words (float32 bits in
        # SCALED_FLOAT mode). Whole tiles store in place; edge tiles through a scratch tile.
        u64 = np.uint64
        tile = np.empty(MR_MAX * NR, dtype=np.int32)
        block = max(1, PANEL_BLOCK_BYTES // (k4 * NR * 4))
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for ib in range(i0, i1):
                r0 = ib * mr
                nrows = min(mr, m - r0)
                for jb in range(jb0, jb1):
                    c0 = jb * NR
                    cols = min(NR, n - c0)
                    if nrows == mr and cols == NR:
                        _tile(ap, ib * k4 * mr, mr, bp, jb * k4 * NR, k4, y, r0 * n + c0, n, rows, r0,
                              d, ct, mult, bias, c0, mode)
                    else:
                        _tile(ap, ib * k4 * mr, mr, bp, jb * k4 * NR, k4, tile, 0, NR, rows, r0,
                              d, ct, mult, bias, c0, mode)
                        for r in range(nrows):
                            dst = u64((r0 + r) * n + c0)
                            src = u64(r * NR)
                            for u in range(cols):
                                y[dst + u64(u)] = tile[src + u64(u)]

    @intrinsic
    def _i32_at(typingctx, addr):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], ir.IntType(32).as_pointer())
        return types.CPointer(types.int32)(addr), codegen

    @intrinsic
    def _u8_at(typingctx, addr):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], ir.IntType(8).as_pointer())
        return types.CPointer(types.uint8)(addr), codegen

    _f32_at, _f64_at = native_call.f32_at, native_call.f64_at

    # The callbacks have native_call's one signature, RANGE_SIG (params, c0, c1, r0, r1), their
    # parameters packed (`_params`): a 5-argument ctypes call, and the one compiled runner.
    GEMM_I8_RANGE_SIG = native_call.RANGE_SIG

    @numba.njit(nogil=True, cache=True, inline="always")
    def _int(p, i):  # pragma: no cover - compiled
        return np.int64(p[i])

    def _gemm_i8_range(params_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """gemm_i8_panels over column panels [j0, j1) and row panels [i0, i1), its arrays by address
        in the parameters (ap, mb, k4, bp, nb, m, n, mr, rows, d, colterm, mult, bias, mode, y)."""
        p = numba.carray(_f64_at(params_at), (15,))
        ap_at, mb, k4, bp_at, nb = _int(p, 0), _int(p, 1), _int(p, 2), _int(p, 3), _int(p, 4)
        m, n, mr, rows_at, d_at = _int(p, 5), _int(p, 6), _int(p, 7), _int(p, 8), _int(p, 9)
        ct_at, mult_at, bias_at, mode, y_at = _int(p, 10), _int(p, 11), _int(p, 12), _int(p, 13), _int(p, 14)
        gemm_i8_panels(numba.carray(_i32_at(ap_at), (mb * k4 * mr,)),
                       numba.carray(_i32_at(bp_at), (nb * k4 * NR,)), m, n, k4, mr,
                       numba.carray(_i32_at(rows_at), (mb * mr,)),
                       numba.carray(_i32_at(d_at), (nb * NR,)), numba.carray(_i32_at(ct_at), (nb * NR,)),
                       numba.carray(_f32_at(mult_at), (nb * NR,)), numba.carray(_f32_at(bias_at), (nb * NR,)),
                       mode, numba.carray(_i32_at(y_at), (m * n,)), i0, i1, j0, j1)

    def _gemm_i8_batch_range(params_at, t0, t1, i0, i1):  # pragma: no cover - compiled
        """Matrices [t0, t1) of a batch: each A's panels, B's panels, row sums, colterm and Y
        follow the previous one's; d, mult and bias are shared. Parameters as `_gemm_i8_range`."""
        p = numba.carray(_f64_at(params_at), (15,))
        ap_at, mb, k4, bp_at, nb = _int(p, 0), _int(p, 1), _int(p, 2), _int(p, 3), _int(p, 4)
        m, n, mr, rows_at, d_at = _int(p, 5), _int(p, 6), _int(p, 7), _int(p, 8), _int(p, 9)
        ct_at, mult_at, bias_at, mode, y_at = _int(p, 10), _int(p, 11), _int(p, 12), _int(p, 13), _int(p, 14)
        a_words, b_words, y_size = mb * k4 * mr, nb * k4 * NR, m * n
        for t in range(t0, t1):
            gemm_i8_panels(numba.carray(_i32_at(ap_at + 4 * t * a_words), (a_words,)),
                           numba.carray(_i32_at(bp_at + 4 * t * b_words), (b_words,)), m, n, k4, mr,
                           numba.carray(_i32_at(rows_at + 4 * t * mb * mr), (mb * mr,)),
                           numba.carray(_i32_at(d_at), (nb * NR,)),
                           numba.carray(_i32_at(ct_at + 4 * t * nb * NR), (nb * NR,)),
                           numba.carray(_f32_at(mult_at), (nb * NR,)),
                           numba.carray(_f32_at(bias_at), (nb * NR,)), mode,
                           numba.carray(_i32_at(y_at + 4 * t * y_size), (y_size,)), 0, mb, 0, nb)

    def _quantize_range(params_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """_quantize_pack of row panels [i0, i1); packed parameters (x, m, k, mr, ap, rows,
        scale, zero point)."""
        p = numba.carray(_f64_at(params_at), (8,))
        x_at, m, k, mr, ap_at, rows_at = _int(p, 0), _int(p, 1), _int(p, 2), _int(p, 3), _int(p, 4), _int(p, 5)
        scale, zp = np.float32(p[6]), np.float32(p[7])
        mb, k4 = (m + mr - 1) // mr, (k + 3) // 4
        i1 = min(i1, mb)
        if i1 > i0:
            r0, r1 = min(m, i0 * mr), min(m, i1 * mr)
            x = numba.carray(_f32_at(x_at + 4 * r0 * k), (r1 - r0, k))
            ap = numba.carray(_u8_at(ap_at + i0 * k4 * mr * 4), (i1 - i0, k4 * mr * 4))
            rows = numba.carray(_i32_at(rows_at + 4 * i0 * mr), ((i1 - i0) * mr,))
            _quantize_pack(x, scale, zp, mr, ap, rows)

    def gemm_i8_batch_range():
        """C callback: matrices [t0, t1) of `matmul_batched`'s batch (the trailing i0, i1 unused)."""
        return native_call.callback(_gemm_i8_batch_range, 15, GEMM_I8_RANGE_SIG)

    def quantize_range():
        """C callback: quantize_pack's compiled pass over row panels [i0, i1)."""
        return native_call.callback(_quantize_range, 8, GEMM_I8_RANGE_SIG)

    def gemm_i8_range():
        """C callback: gemm_i8_panels(..., j0, j1, i0, i1) with its arrays by address (compiled
        or loaded from numba's disk cache on first use)."""
        return native_call.callback(_gemm_i8_range, 15, GEMM_I8_RANGE_SIG)
