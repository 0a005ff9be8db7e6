"""SkipLayerNormalization of a few rows in one compiled call (numba, cached on disk).

The numpy path is a dozen ufunc calls; on a decoder step's one row of 768 values each call's
overhead is the whole cost: 19 us a node alone, 46 us inside a GPT-2 step (whose 500 MB of
weights have just streamed through the caches), 25 such nodes a step. Compiled: one call.
The arithmetic is the numpy path's, in float32 (the mean, then the mean square of the
deviations, their inverse square root scaling each value), with the sums in order, one value at a
time (~1 us a row of 768) where numpy sums pairwise: onnxruntime's results come out as close as
the numpy path's (float64 sums moved a dynamically quantized BERT's outputs by up to 4e-3
against onnxruntime's, and squared a mutated model's 1e35 values without the overflow to an
inverse of 0 that onnxruntime and numpy give). Larger inputs (BERT's 128 rows) keep numpy's
vectorized passes: `MAX_ROWS`. Built through `ep_cpu.jit_tier` ("norm"): until then callers keep
their numpy path.
"""
from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

MAX_ROWS = 16

if numba is not None:
    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _skip_layer_norm(x, skip, gamma, beta, bias, has_beta, has_bias, eps, simplified, y,
                         total, keep_total, mean_out, inv_out):  # pragma: no cover - compiled
        # x, y, total (rows, H); skip (rows or skip_rows, H): row r reads skip row r % skip_rows
        rows, hid = x.shape
        skip_rows = skip.shape[0]
        n = np.float32(hid)
        for r in range(rows):
            sr = r % skip_rows
            acc = np.float32(0.0)
            for j in range(hid):
                v = x[r, j] + skip[sr, j]
                if has_bias:
                    v += bias[j]
                y[r, j] = v
                if keep_total:
                    total[r, j] = v
                acc += v
            mean = np.float32(0.0) if simplified else acc / n
            acc = np.float32(0.0)
            for j in range(hid):
                d = y[r, j] - mean
                y[r, j] = d
                acc += d * d
            inv = np.float32(1.0) / np.float32(math.sqrt(acc / n + eps))
            mean_out[r] = mean
            inv_out[r] = inv
            for j in range(hid):
                v = y[r, j] * inv * gamma[j]
                if has_beta:
                    v += beta[j]
                y[r, j] = v


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
