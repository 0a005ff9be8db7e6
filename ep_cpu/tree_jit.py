"""Compiled walk of a tree ensemble with summed leaf tables (a numba C callback, cached on disk).

The numpy walk in `ep_cpu.kernels.ml_tree` takes every (row, tree) pair one level down per step
with whole-array gathers: `depth` x ~6 passes over N x trees temporaries, then a gather and a
reduction of the leaves' tables. Compiled, each (row, tree) walks to its leaf in registers and
adds the leaf's row of the table into the row's output at once: no temporaries. Rows are
independent, so ranges of rows go to the intra-op threads through `native_call.run_ranges` (the
spinning workers of `ep_cpu.spin_pool`: a Python pool's sleeping thread woke too slowly on a
virtual machine whose idle vCPU halts; a 512-row, 50-tree forest ran 0.63-0.76 ms for the first
~75 runs after an idle gap on two threads, 0.57 ms on one). The sums are added tree by tree in
tree order, as the numpy path adds them: results are identical. `AVAILABLE` is False without
numba; callers keep the numpy walk.
"""
from __future__ import annotations

import importlib.util

import numpy as np

AVAILABLE = importlib.util.find_spec("numba") is not None
PAR_MIN_VISITS = 1 << 13   # (row, tree) walks below which one thread does it all (~18 ns a
                           # walk: ~150 us of work)
BLOCK = 32                 # rows walking a tree together

OPS = {np.less_equal: 0, np.less: 1, np.greater_equal: 2, np.greater: 3}

# packed arguments (`native_call.pack`) of the walk's callback, in this order: x (N, F) and
# threshold (nodes,) float32 or float64, roots (trees,) int64, feature (nodes,) int64, child (2 nodes,)
# int64, missing (nodes,) float64 (1: NaN goes the true way), table (nodes, W) float64,
# out (N, W) float64, single: 1 where x and threshold are float32
WALK_ARGS = ("x", "n", "nf", "roots", "trees", "feature", "threshold", "child", "nodes", "missing",
             "has_missing", "op", "depth", "table", "width", "out", "single")

if AVAILABLE:
    import numba

    from ep_cpu import native_call
    from ep_cpu.native_call import f32_at, f64_at, i64_at

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _walk_sum(x, roots, feature, threshold, child, missing, has_missing, op, depth, table, out,
                  r0, r1):  # pragma: no cover - compiled
        # Rows [r0, r1): out[i] += table[leaf(i, t)] for every tree t, in tree order. A block of
        # rows walks one tree level by level: the block's walks are independent chains of loads
        # the CPU overlaps (one walk alone is a chain of dependent loads, latency-bound).
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
                        if has_missing and v != v and missing[node] != 0:
                            went = True
                        nodes[b] = child[2 * node + np.int64(went)]
                for b in range(nb):
                    leaf = table[nodes[b]]
                    o = out[i0 + b]
                    for j in range(width):
                        o[j] += leaf[j]

    def _walk_range(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """_walk_sum over rows [i0, i1); WALK_ARGS packed (x and the thresholds float32 where
        `single`, else float64)."""
        a = numba.carray(f64_at(args_at), (17,))
        n, nf, trees, nodes, width = (np.int64(a[1]), np.int64(a[2]), np.int64(a[4]),
                                      np.int64(a[8]), np.int64(a[14]))
        roots = numba.carray(i64_at(np.int64(a[3])), (trees,))
        feature = numba.carray(i64_at(np.int64(a[5])), (nodes,))
        child = numba.carray(i64_at(np.int64(a[7])), (2 * nodes,))
        missing = numba.carray(f64_at(np.int64(a[9])), (nodes,))
        table = numba.carray(f64_at(np.int64(a[13])), (nodes, width))
        out = numba.carray(f64_at(np.int64(a[15])), (n, width))
        has_missing, op, depth = a[10] != 0, np.int64(a[11]), np.int64(a[12])
        if a[16] != 0:
            _walk_sum(numba.carray(f32_at(np.int64(a[0])), (n, nf)), roots, feature,
                      numba.carray(f32_at(np.int64(a[6])), (nodes,)), child, missing, has_missing,
                      op, depth, table, out, i0, i1)
        else:
            _walk_sum(numba.carray(f64_at(np.int64(a[0])), (n, nf)), roots, feature,
                      numba.carray(f64_at(np.int64(a[6])), (nodes,)), child, missing, has_missing,
                      op, depth, table, out, i0, i1)


def walk_range():
    """C callback (native_call.RANGE_SIG): the walk over rows [i0, i1), its arguments packed in
    WALK_ARGS order; compiled, or loaded from the disk cache, on first use."""
    return native_call.callback(_walk_range, len(WALK_ARGS))


class Walk:
    """One ensemble's tables in the compiled walk's types (made once, at the first large batch):
    thresholds float32 or float64, missing flags and leaf tables float64, node tables int64, all
    C-contiguous."""

    def __init__(self, roots: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
                 child: np.ndarray, missing: np.ndarray | None, op: int, depth: int,
                 table: np.ndarray, threshold_dtype: np.dtype) -> None:
        self.roots = np.ascontiguousarray(roots, dtype=np.int64)
        self.feature = np.ascontiguousarray(feature, dtype=np.int64)
        # compared at the thresholds' precision: float32 (the input rounded to it), else float64
        self.dtype = np.dtype(np.float32 if np.dtype(threshold_dtype) == np.float32 else np.float64)
        self.threshold = np.ascontiguousarray(threshold.astype(threshold_dtype), dtype=self.dtype)
        self.child = np.ascontiguousarray(child, dtype=np.int64)
        self.missing = (np.ascontiguousarray(missing, dtype=np.float64) if missing is not None
                        else np.zeros(len(self.feature), np.float64))
        self.table = np.ascontiguousarray(table, dtype=np.float64)
        self.threshold_dtype = np.dtype(threshold_dtype)
        # WALK_ARGS with the tables' addresses; a call fills in x, n, nf and out
        self.template = native_call.pack(
            0, 0, 0, self.roots.ctypes.data, len(self.roots), self.feature.ctypes.data,
            self.threshold.ctypes.data, self.child.ctypes.data, len(self.feature),
            self.missing.ctypes.data, missing is not None, op, depth, self.table.ctypes.data,
            self.table.shape[1], 0, self.dtype == np.float32)
        self.callback = walk_range()

    def walk_sum(self, x: np.ndarray, threads: int, pool) -> np.ndarray:
        """(N, W) sums over trees of `table[leaf]` for the rows of x (N, F), compared at the
        thresholds' precision; rows split between `threads` (`pool(workers)`: the executor where
        the spinning workers are unavailable)."""
        n, nf = x.shape
        width = self.table.shape[1]
        out = np.zeros((n, width), dtype=np.float64)
        if n == 0:
            return out
        xw = np.ascontiguousarray(x.astype(self.threshold_dtype, copy=False), dtype=self.dtype)
        args = self.template.copy()
        # arrays by address (C-contiguous, alive in this frame and in self)
        args[0], args[1], args[2], args[15] = native_call.address(xw), n, nf, native_call.address(out)
        workers = max(1, min(threads, n * len(self.roots) // PAR_MIN_VISITS, n))
        native_call.run_ranges(self.callback, args, 1, n, workers, False, pool)
        return out
