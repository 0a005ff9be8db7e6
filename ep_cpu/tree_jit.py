"""Compiled walk of a tree ensemble with summed leaf tables (numba, cached on disk).

The numpy walk in `ep_cpu.kernels.ml_tree` takes every (row, tree) pair one level down per step
with whole-array gathers: `depth` x ~6 passes over N x trees temporaries, then a gather and a
reduction of the leaves' tables. Compiled, each (row, tree) walks to its leaf in registers and
adds the leaf's row of the table into the row's output at once: no temporaries. Rows are
independent, so blocks of rows go to `ep_cpu.gemm`'s thread pool (the compiled code releases the
GIL). The sums are added tree by tree in tree order, as the numpy path adds them: results are
identical. `AVAILABLE` is False without numba; callers keep the numpy walk.
"""
from __future__ import annotations

import importlib.util
import threading
from typing import Callable

import numpy as np

# numba is imported when the first large ensemble runs, not with the kernels.
AVAILABLE = importlib.util.find_spec("numba") is not None
PAR_MIN_VISITS = 1 << 13   # (row, tree) walks below which one thread does it all (~18 ns a
                           # walk here: ~150 us of work, several thread hand-offs)
BLOCK = 32                 # rows walking a tree together

_lock = threading.Lock()
_compiled: Callable | None = None


def _walk_sum(x, roots, feature, threshold, child, missing, has_missing, op, depth, table, out,
              r0, r1):  # pragma: no cover - compiled
    # Rows [r0, r1): out[i] += table[leaf(i, t)] for every tree t, in tree order. A block of
    # rows walks one tree level by level: the block's walks are independent chains of loads the
    # CPU overlaps (one walk alone is a chain of dependent loads, latency-bound).
    width = table.shape[1]
    nodes = np.empty(BLOCK, dtype=np.int64)
    for t in range(roots.shape[0]):
        root = roots[t]
        for i0 in range(r0, r1, BLOCK):
            nb = min(BLOCK, r1 - i0)
            for b in range(nb):
                nodes[b] = root
            for _ in range(depth):
                for b in range(nb):
                    node = nodes[b]
                    v = x[i0 + b, feature[node]]
                    th = threshold[node]
                    if op == 0:
                        went = v <= th
                    elif op == 1:
                        went = v < th
                    elif op == 2:
                        went = v >= th
                    else:
                        went = v > th
                    if has_missing and v != v and missing[node]:
                        went = True
                    nodes[b] = child[2 * node + np.int64(went)]
            for b in range(nb):
                leaf = table[nodes[b]]
                o = out[i0 + b]
                for j in range(width):
                    o[j] += leaf[j]


def _kernel() -> Callable:
    global _compiled
    with _lock:
        if _compiled is None:
            import numba
            _compiled = numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)(_walk_sum)
        return _compiled


OPS = {np.less_equal: 0, np.less: 1, np.greater_equal: 2, np.greater: 3}


def walk_sum(x: np.ndarray, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
             child: np.ndarray, missing: np.ndarray | None, op: int, depth: int,
             table: np.ndarray, threads: int, pool) -> np.ndarray:
    """(N, W) sums over trees of `table[leaf]` for the rows of x (N, F) in the thresholds'
    dtype; `child[2 * node + went_true]`, leaves loop to themselves. `pool(workers)` gives a
    ThreadPoolExecutor."""
    n = x.shape[0]
    out = np.zeros((n, table.shape[1]), dtype=np.float64)
    if n == 0:
        return out
    fn = _kernel()
    miss = missing if missing is not None else np.zeros(1, dtype=bool)
    args = (np.ascontiguousarray(x), roots, feature, threshold, child, miss, missing is not None,
            op, depth, table, out)
    threads = max(1, min(threads, n * len(roots) // PAR_MIN_VISITS, n))
    if threads <= 1:
        fn(*args, 0, n)
        return out
    step = -(-n // threads)
    futures = [pool(threads - 1).submit(fn, *args, r, min(n, r + step)) for r in range(step, n, step)]
    fn(*args, 0, min(n, step))
    for f in futures:
        f.result()
    return out
