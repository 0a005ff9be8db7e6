"""Compiled row passes of the linear ML ops (numba, cached on disk): Scaler, LinearClassifier's
scores with their arg-max and softmax, Normalizer.

A scikit-learn pipeline exported by skl2onnx (scaler -> linear model -> normalizer) is three
small nodes; in numpy each is 5-15 ufunc calls over a (rows, few) array, and numpy reduces a
short last axis slowly: 8 + 30 + 11 us for 512 rows of 20 features and 3 classes on the 2-core
EPYC of benchmarks/README.md, where the whole model ran 38 us in onnxruntime. Compiled, each is
one pass over the rows. The arithmetic is the numpy path's: float64 scores and norms, float32
results (a softmax's exponentials in float32, of the max-subtracted float64 scores); the arg-max
takes the first NaN as np.argmax does. `available()` is False without numba; callers keep the
numpy code.
"""
from __future__ import annotations

import importlib.util
import math
import threading
from typing import Callable

import numpy as np

_lock = threading.Lock()
_compiled: dict[str, Callable] = {}
MAX, L1, L2 = 0, 1, 2
NORMS = {"MAX": MAX, "L1": L1, "L2": L2}


def available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _scaler(x, offset, scale, y):  # pragma: no cover - compiled
    n, f = x.shape
    per_feature = offset.shape[0] > 1
    per_scale = scale.shape[0] > 1
    for i in range(n):
        for j in range(f):
            o = offset[j] if per_feature else offset[0]
            s = scale[j] if per_scale else scale[0]
            y[i, j] = np.float32(np.float32(x[i, j]) - o) * s


def _linear_scores(rows, coef, intercepts, softmax, best, scores):  # pragma: no cover - compiled
    # scores = rows @ coef^T + intercepts (float64), best = arg-max per row; with softmax the
    # row's max is subtracted (numpy's exp then runs vectorized over the whole array)
    n, f = rows.shape
    classes = coef.shape[0]
    for i in range(n):
        top = 0
        for c in range(classes):
            acc = 0.0
            for j in range(f):
                acc += coef[c, j] * np.float64(rows[i, j])
            acc += intercepts[c]
            scores[i, c] = acc
            if c > 0:
                cur = scores[i, top]
                if cur == cur and (acc > cur or acc != acc):   # first NaN wins, then the largest
                    top = c
        best[i] = top
        if softmax:
            m = scores[i, top]
            for c in range(classes):
                scores[i, c] -= m


def _rows_over_sum(scores, out):  # pragma: no cover - compiled
    n, classes = scores.shape
    for i in range(n):
        total = 0.0
        for c in range(classes):
            total += scores[i, c]
        for c in range(classes):
            out[i, c] = np.float32(scores[i, c] / total)


def _normalize(rows, kind, y):  # pragma: no cover - compiled
    n, f = rows.shape
    for i in range(n):
        if kind == 0:
            div = np.float64(rows[i, 0])
            for j in range(1, f):
                v = np.float64(rows[i, j])
                div = v if (v > div or v != v) and div == div else div
        else:
            div = 0.0
            for j in range(f):
                v = np.float64(rows[i, j])
                div += abs(v) if kind == 1 else v * v
            if kind == 2:
                div = math.sqrt(div)
        for j in range(f):
            v = np.float64(rows[i, j])
            y[i, j] = np.float32(v / div) if div != 0 else np.float32(v)


def _kernel(name: str) -> Callable:
    fn = _compiled.get(name)
    if fn is None:
        with _lock:
            fn = _compiled.get(name)
            if fn is None:
                import numba
                # the dot products may be reassociated (vectorized); NaN/inf rules stay IEEE
                flags = {"reassoc", "contract"} if name == "_linear_scores" else False
                fn = _compiled[name] = numba.njit(nogil=True, cache=True, boundscheck=False,
                                                  fastmath=flags)(globals()[name])
    return fn


def scaler(x: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 (x - offset) * scale of a 2-D float32 x; offset, scale float32 of length 1 or F."""
    y = np.empty(x.shape, dtype=np.float32)
    _kernel("_scaler")(x, offset, scale, y)
    return y


def linear_scores(rows: np.ndarray, coef: np.ndarray, intercepts: np.ndarray,
                  softmax: bool) -> tuple[np.ndarray, np.ndarray]:
    """(arg-max class per row, float32 scores (N, classes)) of rows @ coef^T + intercepts in
    float64, the scores softmax-ed where asked."""
    best = np.empty(rows.shape[0], dtype=np.int64)
    scores = np.empty((rows.shape[0], coef.shape[0]), dtype=np.float64)
    _kernel("_linear_scores")(rows, coef, intercepts, softmax, best, scores)
    if not softmax:
        return best, scores.astype(np.float32)
    # exp in float32 of the max-subtracted scores (<= 0): numpy's float64 exp has no AVX2 loop
    # (~6 ns a value, 9 us of a 512 x 3 softmax); the sums stay float64
    e = scores.astype(np.float32)
    np.exp(e, out=e)
    out = np.empty(scores.shape, dtype=np.float32)
    _kernel("_rows_over_sum")(e, out)
    return best, out


def normalize(rows: np.ndarray, kind: int) -> np.ndarray:
    """float32 rows divided by their MAX / L1 / L2 norm in float64 (a zero norm: unchanged)."""
    y = np.empty(rows.shape, dtype=np.float32)
    _kernel("_normalize")(rows, kind, y)
    return y
