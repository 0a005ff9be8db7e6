"""Y = clamp(A @ B + bias + residual) for a constant float32 B through the compiled microkernel.

`ep_cpu.gemm.gemm` takes this path for a `PackedB` (a session constant: MatMul/Gemm weights) when
the CPU has AVX-512 (`ep_cpu.microkernel.beats_blas()`): OpenBLAS's SGEMM runs at about half of
this CPU's peak, the microkernel near it. B is packed once into column panels of NR columns
(`pack`); A's rows are packed per call into row panels (a transposing copy of M x K, small next
to the product). A block of B's panels sized to L2 meets every row panel before the next block,
so B streams from memory once per call. Bias (one per column), residual and a clamp run on each
tile while it is in L1; other activations are a pass after (the caller's epilogue).

Threads split B's panels (every thread packs all of A) or, where A has more row panels than B
has column panels, A's row panels; on numba's TBB threads or `ep_cpu.gemm`'s pool (the compiled
function releases the GIL).
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu import native_call
from ep_cpu.tile_shapes import choose_gemm_mr

PAR_MIN_PANELS = 2               # panels per thread hand-off (a hand-off costs ~20-60 us)
PAR_MIN_MACS = 1 << 22           # fewer multiply-adds (and a B under PAR_MIN_WEIGHTS): one thread
PAR_MIN_WEIGHTS = 1 << 18        # values of B


def compile_kernels() -> None:
    """Compile (or load) the GEMM driver and the parallel runner (an `ep_cpu.jit_tier` build)."""
    mk.gemm_range()
    native_call.compile_runner()


def one_thread(m: int, k: int, n: int) -> bool:
    """Whether `matmul` runs an (M x K) @ (K x N) product on one thread: a small one (a
    hand-off costs more), unless its B is large (a decoder step's B streams faster on every
    core)."""
    return m * k * n < PAR_MIN_MACS and k * n < PAR_MIN_WEIGHTS


def pack(bt: np.ndarray) -> np.ndarray:
    """(K, N) float32 B -> (ceil(N/NR), K, NR) column panels; padded columns are zero."""
    k, n = bt.shape
    nb = -(-n // mk.NR)
    padded = np.zeros((k, nb * mk.NR), dtype=np.float32)
    padded[:, :n] = bt
    return np.ascontiguousarray(padded.reshape(k, nb, mk.NR).transpose(1, 0, 2))


def matmul(a: np.ndarray, bp: np.ndarray, n: int, bias: np.ndarray | None,
           residual: np.ndarray | None, clamp: tuple[float, float] | None, y: np.ndarray,
           threads: int, pool, activation: tuple[int, int] = (0, 0)) -> np.ndarray:
    """y (M, N) = act(clamp(a @ B + bias + residual)) for float32 a (M, K), B packed by `pack`;
    bias (N,) per column, residual (M, N). `pool(workers)` gives an executor. `activation`:
    (`vector_math.tile_callback` address, kind) run on each tile as it is finished, or (0, 0)."""
    m = a.shape[0]
    a = np.ascontiguousarray(a, dtype=np.float32)
    mr = choose_gemm_mr(m)
    row_panels, col_panels = -(-m // mr), bp.shape[0]
    has_bias, has_res = bias is not None, residual is not None
    # the microkernel always adds a bias in its epilogue: zeros when there is none
    b = np.ascontiguousarray(bias, dtype=np.float32).reshape(n) if has_bias else np.zeros(n, np.float32)
    yf = y.reshape(-1)
    r = np.ascontiguousarray(residual, dtype=np.float32).reshape(-1) if has_res else yf
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    mode = mk.EPILOGUE_RES if has_res else mk.EPILOGUE
    # threads split B's column panels (each packs all of A) where there are as many of them as
    # row panels, else A's row panels (each packs only its own): Intel AVX-512, 2 threads, the
    # row split against the column split: 256^3 139 / 161 us, 512^3 958 / 1655, 256 x 1024 x 256
    # 669 / 896, 384 x 768 x 768 1587 / 1746; BERT's 128-row products 7-10% slower by rows
    by_columns = col_panels >= row_panels
    workers = max(1, min(threads, (col_panels if by_columns else row_panels) // PAR_MIN_PANELS))
    if one_thread(m, a.shape[1], n):
        workers = 1
    # arrays by address (all C-contiguous and alive in this frame): see microkernel.GEMM_ARGS
    args = native_call.pack(a.ctypes.data, m, a.shape[1], bp.ctypes.data, bp.shape[0], n, mr,
                            b.ctypes.data, has_bias, r.ctypes.data, has_res, lo, hi, mode,
                            yf.ctypes.data, 0, 0, activation[0], activation[1])
    native_call.run_ranges(mk.gemm_range(), args, col_panels, row_panels, workers, by_columns, pool)
    return y
