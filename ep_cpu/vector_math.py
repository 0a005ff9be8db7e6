"""Element-wise activations in one compiled pass with a vectorized exp: Sigmoid, SiLU, Gelu, Tanh,
and the LSTM/GRU cell updates of a recurrent time step.

numpy runs these as 4-20 ufunc passes over the tensor (Gelu's erf: ~20), each streaming it
through memory once it outgrows the cache, and numba cannot vectorize `exp` without Intel's SVML
(it calls libm's scalar expf). Here exp is written in LLVM IR on 16-float vectors through numba's
`intrinsic`: x = n ln2 + r with n = rint(x / ln2) and a two-part ln2 (so r is exact to float32),
exp(r) a degree-6 Taylor polynomial (|r| <= ln2/2: relative error < 2e-7), and 2^n built in the
exponent bits. Sigmoid = 1 / (1 + exp(-x)), SiLU = x * sigmoid(x), Gelu = x * Phi(x) with
Abramowitz & Stegun 7.1.26 for erf (absolute error <= 1.5e-7, as `gemm_epilogue.fast_erf`).
Tanh = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|), and its Taylor series to x^11 below
|x| = 0.3, where 1 - e would cancel (relative error <= 3e-7 everywhere).

float32, C-contiguous arrays, on CPUs with AVX2 and FMA (`ep_cpu.microkernel.available`; with
AVX-512 2^n is one `vscalefps` and 1/d a 14-bit estimate and a Newton step); callers keep their
numpy passes elsewhere. The kernels are compiled with `cache=True`.
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import jit_tier, microkernel, native_call

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

SIGMOID, SILU, GELU, TANH, EXP = 0, 1, 2, 3, 4
KINDS = {"Sigmoid": SIGMOID, "Silu": SILU, "Gelu": GELU, "Tanh": TANH}
# tanh's Taylor coefficients of x^3 .. x^11 (the series' error below |x| = 0.3: < 6e-10)
_TANH_TAYLOR = (-1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925)

_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
FAST_MIN = 1 << 12   # elements: below this numpy's passes stay in cache and the call costs more


def available() -> bool:
    return numba is not None and microkernel.available()


def _vector_exp(builder, x, v16):
    """exp of a <16 x float> (inputs clamped to [-87.3, 88.7]; NaN stays NaN)."""
    i32 = ir.IntType(32)

    def const(value):
        return ir.Constant(v16, [float(np.float32(value))] * 16)

    rint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16]), "llvm.rint.v16f32")
    lo, hi = const(-87.3), const(88.7)
    x = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)
    x = builder.select(builder.fcmp_ordered(">", x, hi), hi, x)
    n = builder.call(rint, [builder.fmul(x, const(1.0 / math.log(2.0)))])
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16] * 3), "llvm.fma.v16f32")
    # r = x - n ln2, ln2 = 0.693359375 - 2.12194440e-4 (the first part has few bits), as two
    # fused multiply-adds
    r = builder.call(fma, [n, const(-0.693359375), x])
    r = builder.call(fma, [n, const(2.12194440e-4), r])
    p = const(1.0 / 720)
    for c in (1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):   # Horner steps as fused multiply-adds
        p = builder.call(fma, [p, r, const(c)])
    if microkernel.wide():   # p * 2^n in one instruction (vscalefps; n is already an integer)
        scalef = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v16, [v16, v16, v16, ir.IntType(16), i32]),
            "llvm.x86.avx512.mask.scalef.ps.512")
        return builder.call(scalef, [p, n, ir.Constant(v16, [0.0] * 16), ir.Constant(ir.IntType(16), -1),
                                     ir.Constant(i32, 4)])
    # elsewhere 2^n in the exponent bits, as two factors: n is in [-126, 128] and 2^128 is not a
    # float (n1 = n >> 1 and n - n1 both lie in [-63, 64])
    vi32 = ir.VectorType(i32, 16)
    ni = builder.fptosi(n, vi32)
    n1 = builder.ashr(ni, ir.Constant(vi32, [1] * 16))

    def power_of_two(e):
        return builder.bitcast(builder.shl(builder.add(e, ir.Constant(vi32, [127] * 16)),
                                           ir.Constant(vi32, [23] * 16)), v16)

    return builder.fmul(builder.fmul(p, power_of_two(n1)), power_of_two(builder.sub(ni, n1)))


def _reciprocal(builder, d, v16, special: bool = True):
    """1 / d of a <16 x float>: AVX-512's 14-bit estimate and one Newton step (relative error
    ~2^-28 before rounding; vdivps has a quarter of its throughput). 1/0 = inf, 1/inf = 0 as
    the estimate gives them; NaN stays NaN. `special=False` where d is finite and >= 1 (1 +
    exp(...) with a clamped exp): 0 and inf need no fix-up there."""
    if not microkernel.wide():   # no 14-bit estimate without AVX-512: divide (exact)
        return builder.fdiv(ir.Constant(v16, [1.0] * 16), d)
    rcp = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(v16, [v16, v16, ir.IntType(16)]), "llvm.x86.avx512.rcp14.ps.512")
    r = builder.call(rcp, [d, ir.Constant(v16, [0.0] * 16), ir.Constant(ir.IntType(16), -1)])
    two = ir.Constant(v16, [2.0] * 16)
    refined = builder.fmul(r, builder.fsub(two, builder.fmul(d, r)))
    if not special:
        return refined
    # the Newton step turns the estimate's exact 0 (d = inf) and inf (d = 0) into NaN: keep them
    vi32 = ir.VectorType(ir.IntType(32), 16)
    exp_bits = builder.and_(builder.bitcast(r, vi32), ir.Constant(vi32, [0x7F800000] * 16))
    special = builder.or_(builder.icmp_unsigned("==", exp_bits, ir.Constant(vi32, [0x7F800000] * 16)),
                          builder.icmp_unsigned("==", exp_bits, ir.Constant(vi32, [0] * 16)))
    return builder.select(special, r, refined)


def _vector_tanh(builder, x, v16):
    """tanh of a <16 x float> (NaN stays NaN)."""
    def const(value):
        return ir.Constant(v16, [float(np.float32(value))] * 16)

    fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16]), "llvm.fabs.v16f32")
    a = builder.call(fabs, [x])
    e = _vector_exp(builder, builder.fmul(a, const(-2.0)), v16)
    one = const(1.0)
    big = builder.fmul(builder.fsub(one, e), _reciprocal(builder, builder.fadd(one, e), v16, False))
    x2 = builder.fmul(a, a)
    p = const(_TANH_TAYLOR[-1])
    for c in reversed(_TANH_TAYLOR[:-1]):
        p = builder.fadd(builder.fmul(p, x2), const(c))
    small = builder.fadd(a, builder.fmul(builder.fmul(a, x2), p))
    t = builder.select(builder.fcmp_unordered("<", a, const(0.3)), small, big)
    vi32 = ir.VectorType(ir.IntType(32), 16)
    sign = builder.and_(builder.bitcast(x, vi32), ir.Constant(vi32, [-(1 << 31)] * 16))
    return builder.bitcast(builder.or_(builder.bitcast(t, vi32), sign), v16)


if numba is not None:
    @intrinsic
    def activate16(typingctx, arr, off, kind):
        """arr[off : off + 16] = activation(arr[off : off + 16]) in place."""
        sig = types.void(arr, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            arr_v, off_v, kind_v = args
            v16 = ir.VectorType(ir.FloatType(), 16)
            data = context.make_array(signature.args[0])(context, builder, arr_v).data
            ptr = builder.bitcast(builder.gep(data, [off_v]), v16.as_pointer())
            x = builder.load(ptr, align=4)

            def const(value):
                return ir.Constant(v16, [float(np.float32(value))] * 16)

            one = const(1.0)
            done = builder.append_basic_block("activated")
            switch = builder.switch(kind_v, done)
            for kind in (SIGMOID, SILU, GELU, TANH, EXP):
                block = builder.append_basic_block(f"kind_{kind}")
                switch.add_case(ir.Constant(ir.IntType(64), kind), block)
                builder.position_at_end(block)
                if kind == EXP:
                    # 0 below exp's float32 range (and at -inf), inf above it, NaN as NaN
                    y = _vector_exp(builder, x, v16)
                    y = builder.select(builder.fcmp_ordered("<", x, const(-87.5)), const(0.0), y)
                    y = builder.select(builder.fcmp_ordered(">", x, const(88.72)), const(math.inf), y)
                    y = builder.select(builder.fcmp_unordered("uno", x, x), x, y)
                elif kind == TANH:
                    y = _vector_tanh(builder, x, v16)
                elif kind in (SIGMOID, SILU):
                    e = _vector_exp(builder, builder.fsub(const(0.0), x), v16)
                    y = _reciprocal(builder, builder.fadd(one, e), v16, False)
                    if kind == SILU:
                        # x * sigmoid(x) is -inf * 0 = NaN at x = -inf in numpy and
                        # onnxruntime; here sigmoid(-inf) is a tiny 1/exp(88.7), not 0
                        y = builder.select(builder.fcmp_ordered("==", x, const(-math.inf)),
                                           const(math.nan), builder.fmul(x, y))
                else:
                    # u = |x| / sqrt(2); q = 1 - erf(u) = t*poly(t)*exp(-u^2), t = 1/(1 + p u);
                    # Phi(x) = 1 - q/2 for x >= 0, q/2 below
                    fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16]),
                                                          "llvm.fabs.v16f32")
                    u = builder.fmul(builder.call(fabs, [x]), const(1.0 / math.sqrt(2.0)))
                    t = _reciprocal(builder, builder.fadd(one, builder.fmul(u, const(_ERF_P))), v16)
                    poly = const(_ERF_A[-1] / 2)
                    for c in reversed(_ERF_A[:-1]):
                        poly = builder.fadd(builder.fmul(poly, t), const(c / 2))
                    half_q = builder.fmul(builder.fmul(poly, t),
                                          _vector_exp(builder, builder.fsub(const(0.0), builder.fmul(u, u)), v16))
                    phi = builder.select(builder.fcmp_ordered(">=", x, const(0.0)),
                                         builder.fsub(one, half_q), half_q)
                    y = builder.fmul(x, phi)
                builder.store(y, ptr, align=4)
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _activate_padded(flat, kind, pad):  # pragma: no cover - compiled
        # the activation over flat in place, its tail through `pad` (16 floats of scratch)
        n = flat.shape[0]
        full = n - n % 16
        for off in range(0, full, 16):
            activate16(flat, off, kind)
        if full < n:
            for i in range(n - full):
                pad[i] = flat[full + i]
            activate16(pad, 0, kind)
            for i in range(n - full):
                flat[full + i] = pad[i]

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def activate(flat, kind):  # pragma: no cover - compiled
        """The activation over a flat float32 array in place (the tail through a 16-float pad)."""
        _activate_padded(flat, kind, np.zeros(16, dtype=np.float32))


    # reassociation only (a vectorized sum over a row); NaN and inf keep their meaning
    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy",
                fastmath={"reassoc", "nsz", "contract"})
    def _softmax_rows(flat, rows, n, empty_zero):  # pragma: no cover - compiled
        # each row of n values in place: exp(x - max) / sum. A row whose max is not finite
        # subtracts 0 (all -inf: 0 / 0, NaN; with `empty_zero` zeros, as attention's masked
        # rows); a NaN makes its row NaN. The max runs in 16 lanes (a vector max), exp 16 values
        # at a time, the tail through a 16-float pad.
        u = np.uint64
        pad = np.zeros(16, dtype=np.float32)
        lanes = np.empty(16, dtype=np.float32)
        full = n - n % 16
        for r in range(rows):
            base = r * n
            for lane in range(16):
                lanes[lane] = -np.inf
            for j in range(0, full, 16):
                for lane in range(16):
                    v = flat[u(base + j + lane)]
                    lanes[lane] = v if v > lanes[lane] else lanes[lane]
            m = np.float32(-np.inf)
            for lane in range(16):
                m = lanes[lane] if lanes[lane] > m else m
            for j in range(full, n):
                v = flat[u(base + j)]
                m = v if v > m else m
            finite = m > -np.inf and m < np.inf
            if not finite:
                m = np.float32(0.0)
            for j in range(n):
                flat[u(base + j)] = flat[u(base + j)] - m
            _activate_padded(flat[base:base + n], EXP, pad)
            total = np.float32(0.0)
            for j in range(n):
                total += flat[u(base + j)]
            if empty_zero and not finite and total == 0:
                total = np.float32(1.0)
            for j in range(n):
                flat[u(base + j)] = flat[u(base + j)] / total

    # The cells run each activation over a row's gates, then the element-wise updates as plain
    # loops LLVM vectorizes (unsigned indices): interleaving the activations 16 values at a time
    # with the updates took 7.5 us a step for 4 rows x 256 units, this 4.3 (Zen 3). Units
    # [u0, u1) only (multiples of 16): a step split between two threads runs half each.
    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _lstm_cell(gates, c, h_out, rows, hid, u0, u1):  # pragma: no cover - compiled
        # gates (rows, 4 hid): pre-activations of i, o, f, c~ with the input projection and the
        # biases in; c (rows, hid) in place; h_out = o * tanh(c). hid a multiple of 16.
        u64 = np.uint64
        for b in range(rows):
            g0 = b * 4 * hid
            for gate in range(3):
                for j in range(g0 + gate * hid + u0, g0 + gate * hid + u1, 16):
                    activate16(gates, j, SIGMOID)
            for j in range(g0 + 3 * hid + u0, g0 + 3 * hid + u1, 16):
                activate16(gates, j, TANH)
            gi, go, gf, gc, cb = (u64(g0 + u0), u64(g0 + hid + u0), u64(g0 + 2 * hid + u0),
                                  u64(g0 + 3 * hid + u0), u64(b * hid + u0))
            for k in range(u1 - u0):
                kk = u64(k)
                v = gates[gf + kk] * c[cb + kk] + gates[gi + kk] * gates[gc + kk]
                c[cb + kk] = v
                h_out[cb + kk] = v
            for j in range(b * hid + u0, b * hid + u1, 16):
                activate16(h_out, j, TANH)
            for k in range(u1 - u0):
                h_out[cb + u64(k)] *= gates[go + u64(k)]

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _gru_cell(gates, xp, h_prev, h_out, rows, hid, u0, u1):  # pragma: no cover - compiled
        # linear_before_reset: gates (rows, 3 hid) = h_prev R^T with the recurrent bias of the
        # candidate in; xp the input projection with the other biases in.
        # z, r = sigmoid(gates + xp); n = tanh(xp_n + r * gates_n); h_out = n + z (h_prev - n)
        u64 = np.uint64
        for b in range(rows):
            g0 = b * 3 * hid
            gz, gr, gn, hb = u64(g0 + u0), u64(g0 + hid + u0), u64(g0 + 2 * hid + u0), u64(b * hid + u0)
            for k in range(u1 - u0):
                gates[gz + u64(k)] += xp[gz + u64(k)]
                gates[gr + u64(k)] += xp[gr + u64(k)]
            for gate in range(2):
                for j in range(g0 + gate * hid + u0, g0 + gate * hid + u1, 16):
                    activate16(gates, j, SIGMOID)
            for k in range(u1 - u0):
                kk = u64(k)
                gates[gn + kk] = xp[gn + kk] + gates[gr + kk] * gates[gn + kk]
            for j in range(g0 + 2 * hid + u0, g0 + 2 * hid + u1, 16):
                activate16(gates, j, TANH)
            for k in range(u1 - u0):
                kk = u64(k)
                n = gates[gn + kk]
                h_out[hb + kk] = n + gates[gz + kk] * (h_prev[hb + kk] - n)

    CELL_SIG = types.void(types.int64, types.int64, types.int64, types.int64, types.int64,
                          types.int64, types.int64, types.int64, types.int64)

    def _lstm_cell_at(gates_at, xp_at, c_at, h_prev_at, h_out_at, rows, hid, u0,
                      u1):  # pragma: no cover
        f32_at = microkernel.f32_at
        _lstm_cell(numba.carray(f32_at(gates_at), (rows * 4 * hid,)),
                   numba.carray(f32_at(c_at), (rows * hid,)),
                   numba.carray(f32_at(h_out_at), (rows * hid,)), rows, hid, u0, u1)

    def _gru_cell_at(gates_at, xp_at, c_at, h_prev_at, h_out_at, rows, hid, u0,
                     u1):  # pragma: no cover
        f32_at = microkernel.f32_at
        _gru_cell(numba.carray(f32_at(gates_at), (rows * 3 * hid,)),
                  numba.carray(f32_at(xp_at), (rows * 3 * hid,)),
                  numba.carray(f32_at(h_prev_at), (rows * hid,)),
                  numba.carray(f32_at(h_out_at), (rows * hid,)), rows, hid, u0, u1)

    TILE_SIG = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def _activate_tile(at, rows, cols, ld, kind):  # pragma: no cover - compiled
        # the activation over `rows` rows of `cols` values (a multiple of 16), row stride `ld`
        t = numba.carray(microkernel.f32_at(at), ((rows - 1) * ld + cols,))
        for r in range(rows):
            for j in range(0, cols, 16):
                activate16(t, r * ld + j, kind)

    def tile_callback():
        """C callback `act(tile, rows, cols, ld, kind)`: a KINDS activation in place over a
        tile just stored by a compiled driver (float32 by address, cols a multiple of 16)."""
        return native_call.callback(_activate_tile, sig=TILE_SIG)

    def cell_callback(kind: str):
        """C callback `cell(gates, xp, c, h_prev, h_out, rows, hid, u0, u1)` (float32 arrays by
        address, C-contiguous, hid a multiple of 16) of one recurrent time step after its
        product, for hidden units [u0, u1) (multiples of 16): "LSTM" (gates hold the input
        projection already; c updated in place) or "GRU" (linear_before_reset; c unused).
        Compiled, or loaded from the disk cache, on first use."""
        return native_call.callback({"LSTM": _lstm_cell_at, "GRU": _gru_cell_at}[kind], sig=CELL_SIG)


def apply(t: np.ndarray, name: str) -> bool:
    """`name` (Sigmoid, Silu, Gelu, Tanh) applied to t in place in one compiled pass; False (nothing
    done) where that does not apply: other dtypes or layouts, small tensors, no AVX2."""
    kind = KINDS.get(name)
    if (kind is None or t.dtype != np.float32 or not t.flags.c_contiguous or t.size < FAST_MIN
            or not available()):
        return False
    activate(t.reshape(-1), kind)
    return True


def compile_softmax() -> None:
    """Compile (or load from the disk cache) the row softmax (an `ep_cpu.jit_tier` build)."""
    _softmax_rows(np.zeros(20, np.float32), 1, 20, True)


def softmax_last_axis(v: np.ndarray, empty_zero: bool = False) -> bool:
    """Softmax over the last axis of float32 C-contiguous `v` in place, compiled, row by row
    (numpy's six passes over BERT-base's 12 x 128 x 128 scores took ~410 us); rows of -inf
    become NaN, or zeros with `empty_zero`. False (nothing done) where that does not apply:
    other dtypes or layouts, no AVX2, not compiled yet."""
    if (v.dtype != np.float32 or not v.flags.c_contiguous or v.ndim == 0 or v.size == 0
            or not available() or not jit_tier.ready("softmax", compile_softmax)):
        return False
    n = v.shape[-1]
    _softmax_rows(v.reshape(-1), v.size // n, n, empty_zero)
    return True
