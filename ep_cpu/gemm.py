"""Blocked GEMM for the CPU provider, in the manner of MLAS.

`Y = act(alpha * A @ B + beta * bias + residual)`. float32 products run the compiled AVX-512
microkernel of `ep_cpu.gemm_compiled` where the CPU has it (`COMPILED`); otherwise, and for other
dtypes, the product is computed tile by tile with numpy's `matmul` (BLAS) as the micro-kernel:

* `pack_b(b)` packs a constant right-hand side once at session build: contiguous column panels
  in the compute dtype (float16 weights become float32 once, not per call). Kernels pack the
  session's constants in `__init__` (`pack_constant(ctx.constant_input(k))`); any other B is
  used as it comes, every call (a caller may refill its buffers between runs).
* `gemm(a, b, ...)` walks the output in tiles of at most `TILE_BYTES` (L2-sized). Each tile is
  one BLAS call writing straight into the output (`out=`: no temporary), and the epilogue (alpha,
  bias, residual, activation) runs on that tile right after, while it is still in cache, in
  place. Only tile-sized scratch exists (Gelu's erf terms, the float16 staging tile).
* Tiles go to `num_threads` threads (onnxruntime's intra_op_num_threads) from a shared queue,
  so a thread that the OS deschedules does not hold the others up. numpy releases the GIL
  inside BLAS and the ufuncs; while our threads run, BLAS is held to one thread per call
  (threadpoolctl) so the two levels of threading do not oversubscribe the cores.
* Tiles are as large as the cache allows, rows first: every BLAS call packs its own blocks of A
  and B, so thin calls spend their time packing (128 x 400 tiles ran at half the speed of
  whole-matrix calls on the benchmark machine). Products whose output is one tile anyway, thin
  (GEMV-like) ones and tiny ones take a single BLAS call per B panel with BLAS's own threads,
  whose pthread pool wakes faster than Python threads.
* K is blocked too when it is very large (`KC`): partial products of later K blocks are added
  into the tile through a tile-sized scratch buffer before the epilogue.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import gemm_compiled, jit_tier, microkernel, vector_math
from .blas_threads import single_threaded_blas

_blas_single = single_threaded_blas()   # (shared with the kernels that hold BLAS to one thread)
from .epilogue_jit import clamp_bounds
from .gemm_epilogue import (ACTIVATIONS, _PARAM_ORDER, _activation_params,  # noqa: F401
                            _as_2d_operand, _Epilogue, fast_erf)

__all__ = ["PackedB", "pack_b", "gemm", "set_num_threads", "get_num_threads", "fast_erf",
           "pack_constant", "ACTIVATIONS"]

# --------------------------------------------------------------------------- tuning constants
# Bytes of one packed B panel (K x nc). BLAS blocks for L1/L2 inside each call, so panels only
# need to bound the slice of B one call streams: cache-sized (1 MB) panels made the calls too
# thin to reach full speed; 16 MB (an L3 share) keeps BERT/GPT-2 weights in one panel and cuts
# an LM head (154 MB) into ten.
PANEL_BYTES = 16 * 1024 * 1024
NC_MIN, NC_ALIGN = 64, 16         # panel width bounds (multiple of the SIMD-friendly 16)
MC_MIN = 64                       # fewest rows of A per tile (BLAS packing amortisation)
TILE_BYTES = 2 * 1024 * 1024      # output tile cap: ~the L2 of both cores, so the epilogue runs hot
KC = 8192                         # K beyond this is blocked (partial sums through a scratch tile)
PAR_MIN_MACS = 1 << 23            # below ~8M multiply-adds (~0.2 ms on one core) one BLAS call:
                                  # a Python thread hand-off costs 30-100 us
BLAS_THREADS = True               # one-tile products use BLAS's own threads (False: ours)
BLAS_MIN_K = 256                  # ... and from this K up (the GEMM outweighs the epilogue's
                                  # passes: 1024^3 with bias+Relu 6.0 ms vs 7.6 ms in our tiles)
BLAS_PAR_MIN_MACS = 1 << 20       # ... from ~1M multiply-adds up: MobileNetV2's 1x1 convs
                                  # (1-8M) ran 10-20% faster on two BLAS threads than on one
TINY_MACS = 1 << 16               # below this OpenBLAS is single-threaded by itself
THIN_M = 4                        # GEMV-like (decoder steps): one BLAS call streams B fastest;
                                  # tiling it only added per-call overhead (measured)


# --------------------------------------------------------------------------- threading
def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def set_num_threads(n: int | None) -> None:
    """Threads used by gemm (onnxruntime's intra_op_num_threads; 0/None = all cores)."""
    global _num_threads
    _num_threads = _default_threads() if not n or n <= 0 else int(n)


def get_num_threads() -> int:
    return _num_threads


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool (threads are reused across calls; creating them per call costs ~100us)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ep_cpu_gemm")
            _pool_size = workers
        return _pool


# Runs holding the BLAS library to their calling thread (`ep_cpu.provider`'s thread limits count
# them, under their lock): while any is, large products run on our pool's tiles.
blas_holds = 0


# --------------------------------------------------------------------------- packing
_CDT_CACHE: dict = {}


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """BLAS types stay; float16/bfloat16 compute in float32 (numpy has no half-precision BLAS)."""
    c = _CDT_CACHE.get(dtype)
    if c is None:
        c = _CDT_CACHE[dtype] = _compute_dtype_uncached(np.dtype(dtype))
    return c


def _compute_dtype_uncached(dtype: np.dtype) -> np.dtype:
    if dtype in (np.float32, np.float64, np.complex64, np.complex128):
        return dtype
    if dtype.kind == "f" or dtype.kind == "V" or "bfloat16" in dtype.name:
        return np.dtype(np.float32)
    return dtype  # integers: numpy's own (non-BLAS) loop, exact


def _panel_width(k: int, n: int, itemsize: int) -> int:
    if k * n * itemsize <= PANEL_BYTES or n <= NC_MIN:
        return n
    nc = PANEL_BYTES // max(1, min(k, KC) * itemsize)
    nc = max(NC_MIN, nc // NC_ALIGN * NC_ALIGN)
    # Even out the panels so the last one is not a sliver.
    count = -(-n // nc)
    nc = -(-n // count)
    return -(-nc // NC_ALIGN) * NC_ALIGN


@dataclass
class PackedB:
    """A constant B (K x N) packed into contiguous column panels in the compute dtype."""
    k: int
    n: int
    dtype: np.dtype                         # the original dtype (decides the output dtype)
    cdtype: np.dtype                        # the dtype the panels hold
    bounds: list[tuple[int, int]]           # [n0, n1) of each panel
    panels: list[np.ndarray] = field(repr=False)   # (K, n1 - n0), C-contiguous or views of B
    # float32 B in the compiled microkernel's column panels (`gemm_compiled.pack`), made by the
    # first product that takes the compiled path (a second copy of the weight in memory)
    micro: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.k, self.n)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.panels)

    def unpack(self) -> np.ndarray:
        """The K x N matrix again (for debugging and fallbacks)."""
        if len(self.panels) == 1:
            return self.panels[0]
        return np.concatenate(self.panels, axis=1)


def pack_b(b: np.ndarray, trans_b: bool = False, copy: bool = True) -> PackedB:
    """Pack a constant 2-D B (or B^T when `trans_b`) once, for repeated `gemm(a, packed)` calls.

    `copy=False`: a B already in the compute dtype and stored row- or column-major keeps its
    memory; the panels are views (BLAS reads a transposed or strided operand as it is, and
    packs its own blocks anyway), so packing a large weight costs no time and no memory."""
    b = np.asarray(b)
    if b.ndim != 2:
        raise ValueError(f"pack_b expects a 2-D matrix, got shape {b.shape}")
    bt = b.T if trans_b else b
    k, n = bt.shape
    cdt = _compute_dtype(b.dtype)
    nc = _panel_width(k, n, cdt.itemsize)
    bounds = [(j, min(n, j + nc)) for j in range(0, n, nc)] or [(0, 0)]
    if not copy and b.dtype == cdt and (bt.flags.c_contiguous or bt.flags.f_contiguous):
        panels = [bt[:, j0:j1] for j0, j1 in bounds]
    else:
        panels = [np.ascontiguousarray(bt[:, j0:j1], dtype=cdt) for j0, j1 in bounds]
    return PackedB(k, n, b.dtype, cdt, bounds, panels)


# Only constants known to the session may be packed ahead: a kernel packs its constant B once in
# __init__ (`ctx.constant_input(k)`). Nothing is cached by memory address: a caller's buffer,
# read-only or not, may be refilled between runs, and a packing keyed on its address would
# return the previous run's result.
PACK_MIN = 1 << 16   # elements; a smaller B in the compute dtype is used as it is


def pack_constant(b: Any, trans_b: bool = False) -> PackedB | None:
    """pack_b(b) for a constant B of a session where packing pays, else None (use B as it is).

    It pays for float16/bfloat16 weights (converted to float32 once, not per call) and for a
    large B that is transposed or spans several panels (its panels are views of B: no copy, see
    `pack_b(copy=False)`; copying a VGG-sized transposed weight dominated session creation); a B
    that already is one contiguous panel in the compute dtype is used as it is."""
    if b is None:
        return None
    b = np.asarray(b)
    if b.ndim != 2 or b.size == 0 or not (b.dtype.kind == "f" or "bfloat16" in b.dtype.name):
        return None
    cdt = _compute_dtype(b.dtype)
    if cdt != b.dtype:
        return pack_b(b, trans_b)
    bt = b.T if trans_b else b
    if (b.size >= PACK_MIN and cdt == np.float32 and COMPILED
            and (microkernel.beats_blas() or microkernel.convs_beat_blas(_num_threads))):
        return pack_b(b, trans_b, copy=False)   # the compiled path packs it on first use
    if b.size < PACK_MIN or (bt.flags.c_contiguous
                             and _panel_width(bt.shape[0], bt.shape[1], b.itemsize) == bt.shape[1]):
        return None
    return pack_b(b, trans_b, copy=False)


# A constant float32 B (a `PackedB`) multiplies through `ep_cpu.gemm_compiled`'s microkernel
# where the CPU has AVX-512 (`microkernel.beats_blas`): about twice OpenBLAS's SGEMM rate on the
# benchmark machine; with AVX2 OpenBLAS is the faster one.
COMPILED = True
COMPILED_MIN_MACS = 1 << 18   # a B that is not a constant: from ~0.26M multiply-adds up
# On Intel's AVX-512 OpenBLAS's own kernel (SkylakeX) is level with the tiles on products of a
# few hundred rows and faster from ~1000 (MatMul + Add + Relu sessions, 1 / 2 threads, our time
# over the BLAS path's: 128x768x3072 0.90 / 0.87, 512x768x768 1.05 / 0.93, 1024^3 1.05 / 1.05,
# 2048^3 1.27 / 1.24, 4096x768x768 1.39 / 1.28, 4096x3072x768 1.40 / 1.47: a large A's k blocks
# move the whole output through memory each time): from this many rows BLAS takes them there.
BLAS_MIN_ROWS_INTEL = 1024


def _tiles_take(m: int) -> bool:
    """Whether the compiled tiles take a product of `m` rows where they beat BLAS."""
    return microkernel.beats_blas() and (m < BLAS_MIN_ROWS_INTEL or microkernel.amd())


# A one-row product (a decoder step, a streaming RNN's step) is OpenBLAS's GEMV, which streams B
# faster than the tiles' one-row panels do (Intel AVX-512, 1 thread: 768 x 3072 from memory 15.3
# against 13.4 GB/s, 1280 x 1000 from L3 177 against 204 us; 128 x 512 from L2 9.5 against
# 18 us; GPT-2's step 43.5-43.9 -> 42.0-42.2 ms), except where the tiles split B between
# threads (BLAS is held to one thread in a session's run; 768 x 3072 from memory: 23.5 GB/s on
# two). On AMD Zen 4 the tiles stream a constant B from memory faster at one thread too, in
# either layout (OpenBLAS's GEMV 9-21 GB/s, the tiles 18-25; GPT-2's tied 768 x 50257 output
# head 10.3 -> 5.1 ms), but ran a B held in L3 ~15-30 % slower: only a B of 2 MB and more
# (twice a Zen 4 core's L2).
GEMV_TILES_MIN_BYTES_AMD = 2 << 20


def _gemv_on_blas(m: int, k: int, n: int, threads: int, constant_b: bool) -> bool:
    if m != 1:
        return False
    if constant_b and microkernel.amd() and 4 * k * n >= GEMV_TILES_MIN_BYTES_AMD:
        return False
    return threads == 1 or gemm_compiled.one_thread(m, k, n)


def _gemm_compiled(a2: np.ndarray, packed: PackedB | np.ndarray, m: int, n: int,
                   epi: _Epilogue | None, y: np.ndarray, threads: int) -> None:
    """y = epilogue(a2 @ B): bias per column, residual, a clamp and a `vector_math` activation
    (Sigmoid, Silu, Gelu, Tanh) inside the compiled tiles; any other epilogue (alpha, other bias
    shapes, LeakyRelu, ...) as the usual pass after. `packed`: a session constant's PackedB (its
    microkernel panels made on first use) or panels already packed for this call."""
    if isinstance(packed, PackedB):
        if packed.micro is None:
            packed.micro = gemm_compiled.pack(packed.unpack())
        panels = packed.micro
    else:
        panels = packed
    bias = residual = clamp = None
    activation = (0, 0)
    # (the tile activation runs when its callback is compiled: a first session takes the pass)
    on_tiles = (epi is not None and epi.tile_kind is not None
                and jit_tier.ready("gemm_activation", vector_math.tile_callback))
    fused = epi is None or ((epi.clamp is not None or on_tiles)
                            and (epi.bias is None or epi.bias.shape == (1, n))
                            and (epi.residual is None or epi.residual.shape == (m, n)))
    if epi is not None and fused:
        bias = None if epi.bias is None else epi.bias.reshape(n)
        residual, clamp = epi.residual, epi.clamp
        if on_tiles:
            activation = (vector_math.tile_callback().address, epi.tile_kind)
    gemm_compiled.matmul(a2, panels, n, bias, residual, clamp, y, threads, _get_pool, activation)
    if not fused:
        epi.apply(y, 0, m, 0, n)


# --------------------------------------------------------------------------- the GEMM
def gemm(a: np.ndarray, b: np.ndarray | PackedB, bias: np.ndarray | None = None,
         activation: str | None = None, *, activation_params: Sequence | dict | None = None,
         clip_min: float | None = None, clip_max: float | None = None,
         residual: np.ndarray | None = None, alpha: float = 1.0, beta: float = 1.0,
         trans_a: bool = False, trans_b: bool = False, out: np.ndarray | None = None,
         num_threads: int | None = None) -> np.ndarray:
    """Y = act(alpha * op(A) @ op(B) + beta * bias + residual).

    `a` is (M, K) or (..., K) (leading axes are flattened into M and restored on Y); `b` is a
    (K, N) array or a `PackedB` from `pack_b`. `bias` and `residual` broadcast to (M, N) as in
    ONNX Gemm's C. `activation` is one of `ACTIVATIONS`; its parameters come in
    `activation_params` (a dict, or onnxruntime's positional list, e.g. Clip (min, max)) or
    `clip_min`/`clip_max`. The result has A's and B's promoted dtype; float16 computes in float32.
    """
    if type(a) is not np.ndarray:
        a = np.asarray(a)
    if trans_a:
        if a.ndim != 2:
            raise ValueError(f"gemm trans_a needs a 2-D A, got shape {a.shape}")
        a = a.T
    if a.ndim == 0:
        raise ValueError("gemm A must have at least one axis")
    lead, k = a.shape[:-1], a.shape[-1]
    a2 = a if a.ndim == 2 else a.reshape(-1, k)
    m = a2.shape[0]

    if type(b) is PackedB:
        if trans_b:
            raise ValueError("gemm: trans_b is decided at pack time (pack_b(b, trans_b=True))")
        packed, kb, n, bdtype = b, b.k, b.n, b.dtype
    else:
        if type(b) is not np.ndarray:
            b = np.asarray(b)
        if b.ndim != 2:
            raise ValueError(f"gemm B must be 2-D, got shape {b.shape}")
        packed = None
        bt = b.T if trans_b else b
        kb, n = bt.shape
        bdtype = b.dtype
    if kb != k:
        raise ValueError(f"gemm shapes do not match: A {a.shape} (K={k}) and B (K={kb}, N={n})")
    out_dtype = a2.dtype if a2.dtype == bdtype else np.result_type(a2.dtype, bdtype)
    cdt = _compute_dtype(out_dtype)

    if activation is None and bias is None and residual is None and alpha == 1:
        epi = None
    else:
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown gemm activation {activation!r}; known: {sorted(ACTIVATIONS)}")
        params = _activation_params(activation, activation_params, clip_min, clip_max)
        plain = alpha == 1 and beta == 1
        clamp = clamp_bounds(activation, params) if plain else None
        epi = _Epilogue(alpha, beta, _as_2d_operand(bias, m, n, "bias"),
                        _as_2d_operand(residual, m, n, "residual"),
                        ACTIVATIONS[activation] if activation is not None else None, params, clamp,
                        vector_math.KINDS.get(activation)
                        if plain and clamp is None and params.get("approximate", "none") == "none" else None)
    if out is not None:
        if out.dtype != out_dtype or out.size != m * n:
            raise ValueError(f"gemm out has dtype {out.dtype} / shape {out.shape}; need "
                             f"{out_dtype} with {m}x{n} elements")
        y = out.reshape(m, n)
    else:
        y = np.empty((m, n), dtype=out_dtype)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)

    macs = m * n * k
    if cdt.kind not in "fc" or k == 0:
        # Integer GEMM (numpy's exact non-BLAS loop) or an empty reduction: whole-array path.
        bfull = packed.unpack() if packed is not None else bt
        y[...] = np.matmul(a2, bfull.astype(out_dtype, copy=False)) if k else 0
        if epi is not None:
            epi.apply(y, 0, m, 0, n)
        return y.reshape(*lead, n)

    staged = out_dtype != cdt   # float16 output: compute in a float32 scratch, cast on store
    threads = num_threads or _num_threads
    # The tiles take the products where they beat BLAS; with AVX2 from two threads, where BLAS is
    # held to one thread (`ep_cpu.provider`), the GEMV-like ones with a constant B too (GPT-2's
    # decoder step: 42 -> 33 ms a step against a one-thread BLAS).
    if (COMPILED and cdt == np.float32 and not staged and y.flags.c_contiguous
            and (packed is not None or macs >= COMPILED_MIN_MACS)
            and not _gemv_on_blas(m, k, n, threads, packed is not None)
            and (_tiles_take(m) or (m < THIN_M and packed is not None and threads > 1
                                    and microkernel.convs_beat_blas(threads)))
            and jit_tier.ready("gemm", gemm_compiled.compile_kernels)):
        # a B that is not a session constant is packed for this call (K x N: small next to the
        # product from COMPILED_MIN_MACS up)
        bp = packed if packed is not None else gemm_compiled.pack(bt)
        _gemm_compiled(a2 if a2.dtype == cdt else a2.astype(cdt), bp, m, n, epi, y, threads)
        return y if a.ndim == 2 else y.reshape(*lead, n)
    # BLAS held to one thread by a session's run (`blas_holds`; with AVX2 from two threads the
    # convs run on numba's threads): a large product runs on our tiles, one one-thread BLAS call
    # each, instead of one BLAS call. Not by raising BLAS's threads for the call: under
    # concurrent runs of a session the count then differed from call to call, and so did the
    # last bits of the sums; and OpenBLAS's workers busy-wait after a threaded call, starving
    # the next conv.
    blas_held = threads > 1 and blas_holds > 0
    if (macs < PAR_MIN_MACS or m < THIN_M
            or (BLAS_THREADS and not blas_held
                and (m * n * cdt.itemsize <= TILE_BYTES or (epi is None and not staged)
                     or k >= BLAS_MIN_K))):
        # A single BLAS call per B panel with BLAS's own threads (its pthread pool wakes far
        # faster than Python threads: 0.20 ms vs 0.33 ms for 256^3 on 2 cores, and it shares
        # packed panels between its threads: ~10% faster on BERT/ResNet shapes when the cores
        # are free). Taken when the output is one tile anyway (the epilogue then finds it in
        # L2), for GEMV-like thin products (decoder steps: one call streams B fastest), for
        # plain products with no epilogue to fuse, and from K = BLAS_MIN_K up. Our own tiles
        # pay off where a short-K product has an epilogue on a large output: it runs per tile,
        # hot and in parallel.
        a_c = a2 if a2.dtype == cdt else a2.astype(cdt)
        if packed is not None:
            panels, bounds = packed.panels, packed.bounds
        else:
            panels, bounds = [bt if bt.dtype == cdt else bt.astype(cdt)], [(0, n)]
        # One BLAS thread for small products (below BLAS_PAR_MIN_MACS threaded OpenBLAS gains
        # nothing and stalls when another process holds a core); tiny ones OpenBLAS runs on one
        # thread anyway, so the switch (~1 us) is skipped. Thin (GEMV-like) products keep BLAS's
        # threads: two cores stream the weights ~15% faster.
        single = macs >= TINY_MACS and (threads == 1 or not BLAS_THREADS
                                        or (macs < BLAS_PAR_MIN_MACS and m >= THIN_M))
        if single:
            _blas_single.__enter__()
        try:
            for (n0, n1), panel in zip(bounds, panels):
                if staged:
                    t = np.matmul(a_c, panel)
                elif len(panels) == 1:
                    t = np.matmul(a_c, panel, out=y)
                else:
                    t = np.matmul(a_c, panel, out=y[:, n0:n1])
                if epi is not None:
                    epi.apply(t, 0, m, n0, n1)
                if staged:
                    y[:, n0:n1] = t
        finally:
            if single:
                _blas_single.__exit__()
        return y if a.ndim == 2 else y.reshape(*lead, n)

    # Tiles: as few and as large as the threads and the cache allow. Each tile is one BLAS call,
    # and every BLAS call packs its own blocks of A and B, so small calls spend their time
    # packing (measured: 128-row x 400-column tiles ran at half the speed of whole-matrix
    # calls). Rows are split first (all threads share B); the output tile is capped near the
    # L2 size so the epilogue finds it in cache; columns are split only when there are too few
    # rows to give every thread a tile.
    rows_per_thread = -(-m // threads)
    split_cols = threads > 1 and rows_per_thread < MC_MIN
    if packed is not None:
        panels, bounds = packed.panels, packed.bounds
    else:
        bc = bt if bt.dtype == cdt else bt.astype(cdt)
        nc = -(-n // threads) if split_cols else n
        nc = -(-nc // NC_ALIGN) * NC_ALIGN if nc < n else n
        bounds = [(j, min(n, j + nc)) for j in range(0, n, nc)]
        panels = [bc[:, j0:j1] for j0, j1 in bounds]
    npan = len(panels)
    ncmax = max(j1 - j0 for j0, j1 in bounds)
    mc = max(MC_MIN, TILE_BYTES // max(1, ncmax * cdt.itemsize))
    if threads > 1 and not split_cols:
        mc = min(mc, rows_per_thread)
    mc = min(-(-mc // 8) * 8, m)
    mstarts = list(range(0, m, mc))
    ntiles = len(mstarts) * npan
    kblocks = [(k0, min(k, k0 + KC)) for k0 in range(0, k, KC)]
    if threads > ntiles:
        threads = ntiles

    counter = iter(range(ntiles))   # shared work queue; next() on it is atomic under the GIL

    def worker() -> None:
        scratch = None
        kscratch = None
        a_key, a_blk = -1, None
        for idx in counter:
            mi, pj = divmod(idx, npan)
            m0 = mstarts[mi]
            m1 = min(m, m0 + mc)
            n0, n1 = bounds[pj]
            if a_key != mi:      # convert/slice the A row block once per row block
                a_blk = a2[m0:m1]
                if a_blk.dtype != cdt:
                    a_blk = a_blk.astype(cdt)
                a_key = mi
            if staged:
                if scratch is None:
                    scratch = np.empty((mc, ncmax), dtype=cdt)
                t = scratch[:m1 - m0, :n1 - n0]
            else:
                t = y[m0:m1, n0:n1]
            panel = panels[pj]
            if len(kblocks) == 1:
                np.matmul(a_blk, panel, out=t)
            else:
                if kscratch is None:
                    kscratch = np.empty((mc, ncmax), dtype=cdt)
                ks = kscratch[:m1 - m0, :n1 - n0]
                for i, (k0, k1) in enumerate(kblocks):
                    if i == 0:
                        np.matmul(a_blk[:, k0:k1], panel[k0:k1], out=t)
                    else:
                        np.matmul(a_blk[:, k0:k1], panel[k0:k1], out=ks)
                        t += ks
            if epi is not None:
                epi.apply(t, m0, m1, n0, n1)   # while the tile is still in cache
            if staged:
                y[m0:m1, n0:n1] = t

    with _blas_single:   # BLAS threads would fight ours (and spin badly on a busy machine)
        if threads <= 1:
            worker()
            return y if a.ndim == 2 else y.reshape(*lead, n)
        pool = _get_pool(threads - 1)
        futures = [pool.submit(worker) for _ in range(threads - 1)]
        try:
            worker()   # the calling thread takes tiles too
        finally:
            for f in futures:
                # A helper that never started (pool busy with a concurrent gemm) is not needed
                # any more: the queue is empty.
                if not f.cancel():
                    f.result()
    return y if a.ndim == 2 else y.reshape(*lead, n)
