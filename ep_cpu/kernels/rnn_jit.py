"""The recurrent product H @ R^T of RNN/GRU/LSTM time steps, compiled with numba.

A step multiplies a few rows of H (the batch, per direction) by the whole R^T (1 MB for an LSTM of
hidden 256). OpenBLAS's sgemm packs R^T on every call and needs ~60 us for 4 rows where one pass
over R^T that updates all rows at once needs ~35 us (measured on the 2-core EPYC of
benchmarks/README.md). The compiled code is cached on disk (`cache=True`): the first session on a
machine pays the compile once.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from ep_cpu import gemm_compiled, microkernel, native_call, tile_shapes, vector_math
from ep_cpu.gemm import _get_pool

SMALL_BATCH = 16   # rows per direction up to which the compiled pass beats BLAS (measured 4-8)
# multiply-adds of a step from which two threads split a one-direction layer's steps
SPLIT_MIN_MACS = 1 << 18

_lock = threading.Lock()
_compiled: Callable | None = None
_unavailable = False


def _build() -> Callable | None:
    try:
        import numba
    except ImportError:   # numba is a dependency; without it BLAS does the product
        return None

    @numba.njit(fastmath=True, cache=True, nogil=True, boundscheck=False)
    def rows_times_rt(h, rt, out):  # pragma: no cover - compiled
        # out[d, b, :] = h[d, b, :] @ rt[d]; eight rows of rt per pass keep out[d, b] in L1
        # and give eight multiply-adds per load and store of it.
        ndir, rows, hid = h.shape
        n = rt.shape[2]
        for d in range(ndir):
            r = rt[d]
            for b in range(rows):
                o = out[d, b]
                for j in range(n):
                    o[j] = 0.0
            k = 0
            while k + 8 <= hid:
                r0, r1, r2, r3 = r[k], r[k + 1], r[k + 2], r[k + 3]
                r4, r5, r6, r7 = r[k + 4], r[k + 5], r[k + 6], r[k + 7]
                for b in range(rows):
                    hb = h[d, b]
                    h0, h1, h2, h3 = hb[k], hb[k + 1], hb[k + 2], hb[k + 3]
                    h4, h5, h6, h7 = hb[k + 4], hb[k + 5], hb[k + 6], hb[k + 7]
                    o = out[d, b]
                    for j in range(n):
                        o[j] += ((h0 * r0[j] + h1 * r1[j]) + (h2 * r2[j] + h3 * r3[j])) + \
                                ((h4 * r4[j] + h5 * r5[j]) + (h6 * r6[j] + h7 * r7[j]))
                k += 8
            while k < hid:
                rk = r[k]
                for b in range(rows):
                    hk = h[d, b, k]
                    o = out[d, b]
                    for j in range(n):
                        o[j] += hk * rk[j]
                k += 1

    return rows_times_rt


def recurrent_matmul(dtype: np.dtype) -> Callable | None:
    """`f(h, rt, out)`: out = h @ rt for C-contiguous (D, B, H), (D, H, N), (D, B, N) arrays of
    `dtype` (float32/float64), compiled for it now (so the first run does not pay); None where
    numba is missing."""
    global _compiled, _unavailable
    with _lock:
        if _compiled is None and not _unavailable:
            _compiled = _build()
            _unavailable = _compiled is None
        fn = _compiled
    if fn is None:
        return None
    dt = np.dtype(dtype)
    fn(np.zeros((1, 1, 1), dt), np.zeros((1, 1, 1), dt), np.zeros((1, 1, 1), dt))   # compile/load
    return fn


class PackedRecurrent:
    """`f(h, rt, out, add=None)`: out[d] = h[d] @ R^T[d] (+ add[d]) for every direction through
    the compiled microkernel of `ep_cpu.gemm_compiled`, R^T packed once here (the `rt` argument
    is the same matrix and is not read). float32, C-contiguous (D, B, H), (D, B, N) arrays.
    An LSTM step of hidden 256 and batch 4: ~15 us where the numba pass above takes ~45."""

    def __init__(self, rt_all: np.ndarray) -> None:
        self._gemm = microkernel.gemm_range()
        self._range = self._gemm.ctypes
        self.packs = [gemm_compiled.pack(rt_all[d]) for d in range(rt_all.shape[0])]
        self.pack_addrs = np.array([p.ctypes.data for p in self.packs], dtype=np.int64)
        self.n = rt_all.shape[2]
        self._none = np.zeros(max(self.n, 1), dtype=np.float32)   # no bias (and no residual)
        self._modes = (microkernel.EPILOGUE, microkernel.EPILOGUE_RES)
        self._mr = tile_shapes.choose_gemm_mr
        self._no_bias: dict[int, np.ndarray] = {}   # zeros per direction count

    def run_sequence(self, cell_kind: str, proj: np.ndarray, h0: np.ndarray, c: np.ndarray,
                     hist: np.ndarray, bias: np.ndarray | None, threads: int = 1) -> bool:
        """Every time step in one compiled loop: hist[t] (seq, D, B, H) from proj (D, seq, B,
        G*H: the input projection with the additive biases in, each direction's in the order
        of its steps), the initial h0 (D, B, H) and c (D, B, H, the LSTM's cell state, updated
        in place). `bias` (D, G*H) is added to the product (the GRU's candidate bias, inside
        the reset gate); None for the LSTM, whose projection is added in the product's tile
        store instead. False (nothing done) where the compiled cell does not apply: hidden size
        not a multiple of 16, other layouts. `threads` > 1 runs the directions of a
        bidirectional layer side by side, and splits each step of a one-direction layer between
        two threads (`_half_steps`; hidden size a multiple of 64, from SPLIT_MIN_MACS)."""
        hid = h0.shape[-1]
        f32 = np.float32
        if (hid % 16 or not vector_math.available() or proj.dtype != f32 or h0.dtype != f32
                or c.dtype != f32 or hist.dtype != f32 or not (proj.flags.c_contiguous
                and h0.flags.c_contiguous and c.flags.c_contiguous and hist.flags.c_contiguous)):
            return False
        ndir, seq, rows, n = proj.shape
        gates = np.empty((ndir, rows, n), dtype=np.float32)
        bias, use_res = self._step_bias(bias, ndir)
        cell, nb, mr = vector_math.cell_callback(cell_kind).address, self.packs[0].shape[0], self._mr(rows)
        halves = threads > 1 and ndir == 1 and hid % 64 == 0 and rows * hid * n >= SPLIT_MIN_MACS and seq > 1
        if halves or (threads > 1 and ndir > 1):
            # two parts on the intra-op threads (`native_call.run_ranges`: the spinning workers,
            # which move off their caller's CPU where the kernel woke them onto it; numba's TBB
            # worker, woken there, left a one-direction layer's split steps taking turns on one
            # core in some processes: 4.7 against 3.6 ms): the halves of every step, or one
            # direction each (no hand-off between them until the end)
            claims, done = np.zeros(2 * seq, np.int64), np.zeros(seq, np.int64)
            addr = native_call.address
            packed = native_call.pack(
                self._gemm.address, cell, addr(proj), ndir, seq, rows, n, addr(h0), hid, addr(c),
                addr(hist), addr(gates), addr(self.pack_addrs), nb, mr, addr(bias), use_res,
                addr(claims), addr(done), native_call.yield_address(), halves)
            # (arrays by address: all alive in this frame)
            native_call.run_ranges(steps_parts(), packed, 2 if halves else ndir, 1,
                                   2 if halves else min(threads, ndir), True, _get_pool)
        else:
            _run_steps(self._gemm.address, cell, proj, h0, c, hist, gates, self.pack_addrs, nb, mr,
                       bias, use_res)
        return True

    def _step_bias(self, bias: np.ndarray | None, ndir: int) -> tuple[np.ndarray, bool]:
        """(the bias (D, G*H) the compiled steps add to the product, whether the projection is
        added in the product's tile store instead): no bias is a zeros constant of this shape,
        kept (only read)."""
        if bias is not None:
            return np.ascontiguousarray(bias, dtype=np.float32), False
        zeros = self._no_bias.get(ndir)
        if zeros is None:
            zeros = self._no_bias[ndir] = np.zeros((ndir, self.n), dtype=np.float32)
        return zeros, True

    def stream_step(self, cell_kind: str, w_args: np.ndarray, seq: int, batch: int,
                    bias: np.ndarray | None) -> Callable | None:
        """`step(x2, h0, c0) -> (Y, Y_h, Y_c)` of a forward layer, in one compiled call: the input
        projection of x2 (seq * batch, in) through `w_args` (`projection_args`), then every
        step (as `run_sequence`). Everything but the arrays is bound here, once per shape: a
        streaming model's step spent ~1.5 us in the Python that worked it out on every call.
        float32 C-contiguous arrays; h0, c0 (1, batch, H); c0 is not written. None where the
        compiled cell does not apply (as `run_sequence`)."""
        hid = self.n // {"LSTM": 4, "GRU": 3}[cell_kind]
        if hid % 16 or not vector_math.available():
            return None
        bias, use_res = self._step_bias(bias, 1)
        m = seq * batch
        gemm, cell = self._gemm.address, vector_math.cell_callback(cell_kind).address
        n, packs_at, nb, mr_in, mr = self.n, self.pack_addrs, self.packs[0].shape[0], self._mr(m), self._mr(batch)

        def step(x2: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> tuple:
            return _project_and_run(gemm, cell, x2, w_args, m, mr_in, seq, batch, n, h0, c0,
                                    packs_at, nb, mr, bias, use_res)
        return step

    @staticmethod
    def projection_args(w_t: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, tuple]:
        """(microkernel.GEMM_ARGS of x @ W^T + bias for `forward`, the arrays whose addresses
        they hold: keep them as long as the arguments): W^T (in, G*H) float32 packed into
        column panels here."""
        panels = gemm_compiled.pack(w_t)
        b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
        args = native_call.pack(0, 0, w_t.shape[0], panels.ctypes.data, panels.shape[0], w_t.shape[1], 0,
                                b.ctypes.data, 1, b.ctypes.data, 0, -np.inf, np.inf,
                                microkernel.EPILOGUE, 0, 0, 0, 0, 0)
        native_call.check_args(microkernel.gemm_range(), args)
        return args, (panels, b)

    def __call__(self, h: np.ndarray, rt: np.ndarray, out: np.ndarray,
                 add: np.ndarray | None = None) -> None:
        from ep_cpu.native_call import pack
        rows = h.shape[1]
        mr = self._mr(rows)
        inf = np.inf
        for d, bp in enumerate(self.packs):
            hd, yd = h[d], out[d]
            res = self._none if add is None else add[d]
            # arrays by address (C-contiguous, alive here), in microkernel.GEMM_ARGS order
            args = pack(hd.ctypes.data, rows, hd.shape[1], bp.ctypes.data, bp.shape[0], self.n, mr,
                        self._none.ctypes.data, 0, res.ctypes.data, add is not None, -inf, inf,
                        self._modes[add is not None], yd.ctypes.data, 0, 0, 0, 0)
            self._range(args.ctypes.data, 0, bp.shape[0], 0, -(-rows // mr))


try:
    import numba

    from ep_cpu.native_call import atomic_add, call_void, claim, f32_at, f64_at, i64_at, read_count
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

if numba is not None:
    # module-level functions: numba's disk cache keeps them across processes (functions defined
    # inside a function were recompiled by every process: ~2 s for the first recurrent session)
    @numba.njit(nogil=True, cache=True, inline="always")
    def _step_args(proj, h0, gates, packs_at, nb, mr, bias, use_res, d):  # pragma: no cover
        # The step product's packed arguments (microkernel.GEMM_ARGS: A row-major, y = gates[d]
        # not transposed, bias[d], the projection as the residual where use_res); per step the
        # caller fills A (args[0]) and the residual (args[9]).
        ndir, seq, rows, n = proj.shape
        args = np.zeros(19, dtype=np.float64)   # (act, act_kind: 0, none)
        args[1], args[2], args[3], args[4], args[5], args[6] = rows, h0.shape[2], packs_at[d], nb, n, mr
        args[7], args[8], args[10] = bias[d].ctypes.data, 1, use_res
        args[11], args[12] = -np.inf, np.inf
        args[13], args[14] = 2 if use_res else 1, gates[d].ctypes.data   # EPILOGUE_RES / EPILOGUE
        return args

    @numba.njit(nogil=True, cache=True, inline="always")
    def _one_direction(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias, use_res,
                       d):  # pragma: no cover - compiled
        # Per step: gates = h R^T (+ bias, + proj[d, t] where use_res) through the microkernel's
        # `gemm`, then `cell` turns them into hist[t]. gemm and cell are the addresses of C
        # callbacks (`ep_cpu.native_call`). A whole direction at a time: its R^T stays in this
        # core's L2.
        ndir, seq, rows, n = proj.shape
        hid = h0.shape[2]
        panels = (rows + mr - 1) // mr
        args = _step_args(proj, h0, gates, packs_at, nb, mr, bias, use_res, d)
        # addresses as the C callbacks take them
        args_at, g, b = np.int64(args.ctypes.data), np.int64(args[14]), np.int64(args[7])
        cd = np.int64(c[d].ctypes.data)
        for t in range(seq):
            hp = np.int64(h0[d].ctypes.data if t == 0 else hist[t - 1, d].ctypes.data)
            xp = np.int64(proj[d, t].ctypes.data)
            args[0] = hp
            args[9] = xp if use_res else b
            call_void(gemm, (args_at, np.int64(0), nb, np.int64(0), panels))
            call_void(cell, (g, xp, cd, hp, np.int64(hist[t, d].ctypes.data), rows, hid,
                             np.int64(0), hid))
        if args.size == 0:   # args went to the callback by address: alive until here
            return

    @numba.njit(nogil=True, cache=True, inline="always")
    def _pack_panels(h, mr, out):  # pragma: no cover - compiled
        # h (rows, K), rows a multiple of mr, as the microkernel's row panels (rows / mr,
        # K * mr): panel row k holds h[r0 : r0 + mr, k] (`microkernel.pack_row_panels`, which
        # allocates its result; and calling it would embed microkernel's code in this file's
        # disk-cached machine code, which numba does not invalidate when microkernel changes)
        rows, kdim = h.shape
        for ib in range(rows // mr):
            for k in range(kdim):
                for r in range(mr):
                    out[(ib * kdim + k) * mr + r] = h[ib * mr + r, k]

    @numba.njit(nogil=True, cache=True)
    def _half_steps(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias, use_res,
                    claims, done, me, sched_yield):  # pragma: no cover - compiled
        # One of two threads running a one-direction layer's steps together: step t's hidden
        # units split in halves (the GEMM's columns of those units in every gate, then the cell
        # over them), each half claimed through claims[2 t + half] (this thread tries half `me`
        # first: with both threads there, each keeps its half of R^T in its own L2), done[t]
        # counting the halves finished; no thread starts step t + 1 before both are. A thread
        # that finds no partner claims both halves: the steps never wait on a thread that
        # has not started.
        ndir, seq, rows, n = proj.shape
        hid = h0.shape[2]
        gate_panels = nb // (n // hid)      # column panels of one gate
        half_panels, half_units = gate_panels // 2, hid // 2
        panels = (rows + mr - 1) // mr
        args = _step_args(proj, h0, gates, packs_at, nb, mr, bias, use_res, 0)
        args_at, g, b = np.int64(args.ctypes.data), np.int64(args[14]), np.int64(args[7])
        cd = np.int64(c[0].ctypes.data)
        # h's row panels packed once a step for the gates' products (each product packed them
        # again: three or four packings a step on each thread; hidden 256, batch 4, 100 steps
        # 1.76 -> 1.70 ms), where the rows fill whole panels
        packed = rows % mr == 0
        ap = np.empty(rows * hid if packed else 1, dtype=np.float32)
        if packed:
            args[15] = 1
        for t in range(seq):
            hsrc = h0[0] if t == 0 else hist[t - 1, 0]
            hp = np.int64(hsrc.ctypes.data)
            xp = np.int64(proj[0, t].ctypes.data)
            if packed:
                _pack_panels(hsrc, mr, ap)
                args[0] = np.int64(ap.ctypes.data)
            else:
                args[0] = hp
            args[9] = xp if use_res else b
            for k in range(2):
                half = (me + k) % 2
                if claim(claims, 2 * t + half):
                    for j0 in range(half * half_panels, nb, gate_panels):
                        call_void(gemm, (args_at, j0, j0 + half_panels, np.int64(0), panels))
                    call_void(cell, (g, xp, cd, hp, np.int64(hist[t, 0].ctypes.data), rows, hid,
                                     half * half_units, (half + 1) * half_units))
                    atomic_add(done, t, 1)
            spins = 0
            while read_count(done, t) < 2:
                spins += 1
                if spins > 4096:
                    call_void(sched_yield, ())
        if args.size + ap.size == 0:   # args and ap went to the callback by address: alive until here
            return

    def _steps_parts(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """Parts [j0, j1) of a layer's steps on two threads: with `halves` part j is the half j
        of every step of one direction (`_half_steps`), else direction j (`_one_direction`).
        STEPS_ARGS packed."""
        a = numba.carray(f64_at(args_at), (21,))
        ndir, seq, rows, n, hid = (np.int64(a[3]), np.int64(a[4]), np.int64(a[5]), np.int64(a[6]),
                                   np.int64(a[8]))
        gemm, cell = np.int64(a[0]), np.int64(a[1])
        proj = numba.carray(f32_at(np.int64(a[2])), (ndir, seq, rows, n))
        h0 = numba.carray(f32_at(np.int64(a[7])), (ndir, rows, hid))
        c = numba.carray(f32_at(np.int64(a[9])), (ndir, rows, hid))
        hist = numba.carray(f32_at(np.int64(a[10])), (seq, ndir, rows, hid))
        gates = numba.carray(f32_at(np.int64(a[11])), (ndir, rows, n))
        packs_at = numba.carray(i64_at(np.int64(a[12])), (ndir,))
        nb, mr, use_res = np.int64(a[13]), np.int64(a[14]), a[16] != 0
        bias = numba.carray(f32_at(np.int64(a[15])), (ndir, n))
        for j in range(j0, j1):
            if a[20] != 0:
                _half_steps(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias, use_res,
                            numba.carray(i64_at(np.int64(a[17])), (2 * seq,)),
                            numba.carray(i64_at(np.int64(a[18])), (seq,)), j, np.int64(a[19]))
            else:
                _one_direction(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias,
                               use_res, j)

    @numba.njit(nogil=True, cache=True)
    def _run_steps(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias,
                   use_res):  # pragma: no cover - compiled
        for d in range(proj.shape[0]):
            _one_direction(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias, use_res, d)

    @numba.njit(nogil=True, cache=True)
    def _project_and_run(gemm, cell, x2, proj_args, m, mr_in, seq, batch, n, h0, c0, packs_at, nb,
                         mr, bias, use_res):  # pragma: no cover - compiled
        # One forward direction from its input in one dispatch from Python: proj = x2 @ W^T +
        # b through the microkernel (proj_args: microkernel.GEMM_ARGS of W^T's panels and the
        # bias, A and y filled in here), then every time step. Returns (Y, Y_h, Y_c).
        hid = h0.shape[2]
        proj = np.empty((1, seq, batch, n), dtype=np.float32)
        args = proj_args.copy()
        args[0], args[1], args[6], args[14] = x2.ctypes.data, m, mr_in, proj.ctypes.data
        call_void(gemm, (np.int64(args.ctypes.data), np.int64(0), np.int64(args[4]), np.int64(0),
                         (m + mr_in - 1) // mr_in))
        hist = np.empty((seq, 1, batch, hid), dtype=np.float32)
        c = c0.copy()   # updated in place: the caller's initial state stays as it was
        gates = np.empty((1, batch, n), dtype=np.float32)
        _one_direction(gemm, cell, proj, h0, c, hist, gates, packs_at, nb, mr, bias, use_res, 0)
        # args, proj and gates went to the callbacks by address: numba frees an array after its
        # last use in this function, so they are used again here, after the calls
        if args.size + proj.size + gates.size == 0:
            return hist, hist[-1].copy(), c
        return hist, hist[-1].copy(), c


# packed arguments of `steps_parts`, in this order (arrays by address, C-contiguous float32 but
# packs_at, claims, done: int64): halves 1 for `_half_steps`' split of one direction, 0 for one
# direction a part
STEPS_ARGS = ("gemm", "cell", "proj", "ndir", "seq", "rows", "n", "h0", "hid", "c", "hist", "gates",
              "packs_at", "nb", "mr", "bias", "use_res", "claims", "done", "sched_yield", "halves")


def steps_parts():
    """C callback (native_call.RANGE_SIG): a layer's steps split in two parts (see
    `_steps_parts`), run by `native_call.run_ranges`; compiled, or loaded from the disk cache,
    on first use."""
    return native_call.callback(_steps_parts, len(STEPS_ARGS))


def with_add(matmul: Callable) -> Callable:
    """`f(h, rt, out, add=None)` from a product `matmul(h, rt, out)`."""
    def run(h, rt, out, add=None):
        matmul(h, rt, out)
        if add is not None:
            out += add
    return run
