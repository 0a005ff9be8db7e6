"""SkipLayerNormalization of a few rows in one compiled call (numba, cached on disk).

The numpy path is a dozen ufunc calls; on a decoder step's one row of 768 values each call's
overhead is the whole cost: 19 us a node alone, 46 us inside a GPT-2 step (whose 500 MB of
weights have just streamed through the caches), 25 such nodes a step. Compiled: one call.
The arithmetic is the numpy path's, in float32 (the mean, then the mean square of the
deviations, their inverse square root scaling each value), each sum in 16 lanes added in pairs
at the end, close to numpy's pairwise sums and onnxruntime's lane sums (float64 sums moved a
dynamically quantized BERT's outputs by up to 4e-3 against onnxruntime's, and squared a mutated
model's 1e35 values without the overflow to an inverse of 0 that onnxruntime and numpy give).
BERT-base's 128 rows of 768: 198 us a node through numpy's passes, 131 compiled (onnxruntime
267, one thread). Built through `ep_cpu.jit_tier` ("norm"): until then callers keep their numpy
path.
"""
from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

MAX_ROWS = 1 << 16   # rows a call takes (larger: numpy's passes)

if numba is not None:
    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _skip_layer_norm(x, skip, gamma, beta, bias, has_beta, has_bias, eps, simplified, y,
                         total, keep_total, mean_out, inv_out):  # pragma: no cover - compiled
        # x, y, total (rows, H); skip (rows or skip_rows, H): row r reads skip row r % skip_rows
        u = np.uint64   # unsigned indices: no wraparound checks, so the loops vectorize
        rows, hid = x.shape
        skip_rows = skip.shape[0]
        n = np.float32(hid)
        full = hid - hid % 16
        lanes = np.empty(16, dtype=np.float32)
        for r in range(rows):
            sr = r % skip_rows
            for j in range(hid):
                v = x[r, u(j)] + skip[sr, u(j)]
                if has_bias:
                    v += bias[u(j)]
                y[r, u(j)] = v
                if keep_total:
                    total[r, u(j)] = v
            mean = np.float32(0.0) if simplified else _lane_sum(y, r, hid, full, lanes, False) / n
            for j in range(hid):
                y[r, u(j)] = y[r, u(j)] - mean
            acc = _lane_sum(y, r, hid, full, lanes, True)
            inv = np.float32(1.0) / np.float32(math.sqrt(acc / n + eps))
            mean_out[r] = mean
            inv_out[r] = inv
            for j in range(hid):
                v = y[r, u(j)] * inv * gamma[u(j)]
                if has_beta:
                    v += beta[u(j)]
                y[r, u(j)] = v

    @numba.njit(nogil=True, cache=True, boundscheck=False, inline="always")
    def _lane_sum(y, r, hid, full, lanes, square):  # pragma: no cover - compiled
        # sum of row r's values (square: of their squares) in 16 lanes, the lanes then added
        # in pairs: a vector loop, close to the pairwise sums of numpy and the lane sums of
        # onnxruntime's kernels
        u = np.uint64
        for lane in range(16):
            lanes[lane] = 0.0
        for j in range(0, full, 16):
            for lane in range(16):
                v = y[r, u(j + lane)]
                lanes[lane] += v * v if square else v
        for j in range(full, hid):
            v = y[r, u(j)]
            lanes[j - full] += v * v if square else v
        width = 8
        while width:
            for lane in range(width):
                lanes[lane] += lanes[lane + width]
            width //= 2
        return lanes[0]


def compile_kernels() -> None:
    """Compile (or load) the kernel: a `jit_tier` build."""
    one = np.ones((1, 16), np.float32)
    skip_layer_norm(one, one, one[0], None, None, 1e-5, False, True)


def skip_layer_norm(x: np.ndarray, skip: np.ndarray, gamma: np.ndarray, beta: np.ndarray | None,
                    bias: np.ndarray | None, eps: float, simplified: bool,
                    keep_total: bool) -> tuple:
    """(y, mean (rows, 1), inv_std (rows, 1), x + skip + bias or None) of float32 C-contiguous x
    (rows, H), skip (rows or k, H) with rows a multiple of k, gamma/beta/bias (H,)."""
    rows, hid = x.shape
    y = np.empty((rows, hid), np.float32)
    total = np.empty((rows, hid), np.float32) if keep_total else y
    mean, inv = np.empty((rows, 1), np.float32), np.empty((rows, 1), np.float32)
    _skip_layer_norm(x, skip, gamma, gamma if beta is None else beta, gamma if bias is None else bias,
                     beta is not None, bias is not None, np.float32(eps), simplified, y, total,
                     keep_total, mean.reshape(-1), inv.reshape(-1))
    return y, mean, inv, (total if keep_total else None)
