"""The common GEMM/convolution epilogue in one compiled pass: y = clamp(y + bias + residual).

numpy applies bias, residual and Relu/Clip as three passes over the output, each streaming it
through memory once the output outgrows the cache (a 3.2 MB conv output: 319 us for bias +
residual + Relu, this pass 61 us; bias + Relu 177 us against 42 us). Relu and Clip are the
clamp; "no activation" is the clamp to (-inf, inf). NaN passes the clamp, as in numpy's clip.

numba is imported the first time an epilogue of `FAST_MIN` elements or more runs (small models
never import it); its one signature (float32) is compiled once and cached on disk.
Without numba, `apply` answers False and the caller runs its numpy passes.
"""
from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np

from ep_cpu import jit_tier

FAST_MIN = 1 << 14   # elements: smaller outputs stay in cache between numpy's passes
FLOATS = (np.dtype(np.float32),)

_lock = threading.Lock()
_kernel: Callable | None = None
_unavailable = False

# bias modes
NO_BIAS, PER_ROW, PER_COLUMN, SCALAR = 0, 1, 2, 3


def _build() -> Callable | None:
    try:
        import numba
    except ImportError:
        return None
    from numba import types as nt
    # C-contiguous arrays only (unit strides let LLVM vectorize the rows: with layout "A" the
    # pass ran slower than numpy's three); bias and residual read-only (session constants are,
    # and a writable array converts); float32 only: one signature, so the first session on a
    # machine compiles once (~0.7 s) - float64 models keep numpy's passes.
    f = nt.float32
    sigs = [nt.void(nt.Array(f, 2, "C"), nt.Array(f, 1, "C", readonly=True), nt.int64,
                    nt.Array(f, 2, "C", readonly=True), nt.boolean, f, f)]

    @numba.njit(sigs, nogil=True, cache=True, boundscheck=False)
    def epilogue(t, bias, mode, res, has_res, lo, hi):  # pragma: no cover - compiled
        # Same order of additions as numpy's passes ((t + bias) + res); `lo if v < lo` keeps NaN.
        m, n = t.shape
        for i in range(m):
            row = t[i]
            b = bias[i] if mode == 1 else bias[0]
            if mode == 2:
                if has_res:
                    r = res[i]
                    for j in range(n):
                        v = (row[j] + bias[j]) + r[j]
                        v = lo if v < lo else v
                        row[j] = hi if v > hi else v
                else:
                    for j in range(n):
                        v = row[j] + bias[j]
                        v = lo if v < lo else v
                        row[j] = hi if v > hi else v
            elif mode != 0:
                if has_res:
                    r = res[i]
                    for j in range(n):
                        v = (row[j] + b) + r[j]
                        v = lo if v < lo else v
                        row[j] = hi if v > hi else v
                else:
                    for j in range(n):
                        v = row[j] + b
                        v = lo if v < lo else v
                        row[j] = hi if v > hi else v
            elif has_res:
                r = res[i]
                for j in range(n):
                    v = row[j] + r[j]
                    v = lo if v < lo else v
                    row[j] = hi if v > hi else v
            else:
                for j in range(n):
                    v = row[j]
                    v = lo if v < lo else v
                    row[j] = hi if v > hi else v

    return epilogue


def _compiled() -> Callable | None:
    global _kernel, _unavailable
    if _kernel is None and not _unavailable:
        with _lock:
            if _kernel is None and not _unavailable:
                _kernel = _build()
                _unavailable = _kernel is None
    return _kernel


def clamp_bounds(activation: str | None, params: dict) -> tuple[float, float] | None:
    """(lo, hi) when the activation is a clamp (none, Relu, Clip), else None."""
    if activation is None:
        return -math.inf, math.inf
    if activation == "Relu":
        return 0.0, math.inf
    if activation == "Clip":
        lo, hi = params.get("min"), params.get("max")
        return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))
    return None


def apply(t: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
          clamp: tuple[float, float]) -> bool:
    """In place on the 2-D tile `t`: t + bias + residual, clamped; `bias` broadcasts as (rows, 1),
    (1, cols) or (1, 1), `residual` is t's shape. False (nothing done) where the compiled pass
    does not apply: small or strided tiles, other dtypes or shapes, numba missing."""
    if t.ndim != 2 or t.size < FAST_MIN or t.dtype not in FLOATS or not t.flags.c_contiguous:
        return False
    m, n = t.shape
    mode, vec = NO_BIAS, None
    if bias is not None:
        if bias.dtype != t.dtype or bias.ndim != 2:
            return False
        if bias.shape == (m, n) and residual is None:   # a full C: it is the residual
            residual, bias = bias, None
        elif bias.shape == (1, 1):
            mode, vec = SCALAR, bias[0]
        elif bias.shape == (m, 1):
            mode, vec = PER_ROW, np.ascontiguousarray(bias[:, 0])
        elif bias.shape == (1, n):
            mode, vec = PER_COLUMN, np.ascontiguousarray(bias[0])
        else:
            return False
    if residual is not None and (residual.shape != (m, n) or residual.dtype != t.dtype
                                 or not residual.flags.c_contiguous):
        return False
    if not jit_tier.ready("epilogue", _compiled):
        return False
    fn = _compiled()
    if fn is None:
        return False
    typ = t.dtype.type
    fn(t, vec if vec is not None else np.zeros(1, t.dtype), mode,
       residual if residual is not None else np.zeros((1, 1), t.dtype), residual is not None,
       typ(clamp[0]), typ(clamp[1]))
    return True
