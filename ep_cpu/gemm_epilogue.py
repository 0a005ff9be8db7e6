"""GEMM epilogues: activations applied in place to an output tile, plus a fast float32 erf.

Used by `ep_cpu.gemm.gemm` (per tile, while hot in cache) and by fused kernels (FusedConv,
FusedAdd, ...) through `ACTIVATIONS`. Each activation is `fn(tile, params) -> None` and writes
into `tile`; only tile-sized scratch is allocated.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from . import epilogue_jit, vector_math

try:  # ufuncs with out= for the Sigmoid / exact-erf paths; scipy is a runtime dependency
    from scipy.special import erf as _erf, expit as _expit
except ImportError:  # pragma: no cover - scipy is in the project's dependencies
    _erf = np.vectorize(math.erf, otypes=[np.float64])
    _expit = None

# Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): p and a5 .. a1 (Horner order).
_ERF_P = 0.3275911
_ERF_A = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def fast_erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """erf for float32 with |error| < 1e-6, ~5x faster than scipy.special.erf.

    Abramowitz & Stegun 7.1.26: erf(|x|) = 1 - t (a1 + t (a2 + ...)) exp(-x^2), t = 1/(1 + p|x|),
    evaluated with in-place ufuncs (two scratch arrays of x's size). float64 input goes to scipy
    (the approximation is float32-grade).
    """
    if x.dtype != np.float32:
        return _erf(x, out=out) if out is not None else _erf(x)
    f = np.float32
    e = np.abs(x)
    t = e * f(_ERF_P)
    t += f(1)
    np.reciprocal(t, out=t)
    np.square(e, out=e)
    np.negative(e, out=e)
    np.exp(e, out=e)
    poly = t * f(_ERF_A[0])
    for c in _ERF_A[1:]:
        poly += f(c)
        poly *= t
    poly *= e
    np.subtract(f(1), poly, out=poly)
    return np.copysign(poly, x, out=poly if out is None else out)


def _gelu(t: np.ndarray, p: dict) -> None:
    if p.get("approximate", "none") == "tanh":
        _gelu_tanh(t, p)
        return
    if t.dtype != np.float32:
        s = t * np.asarray(1.0 / math.sqrt(2.0), t.dtype)   # tile-sized scratch only
        fast_erf(s, out=s)
        s += 1
        t *= s
        t *= 0.5
        return
    # fast_erf's formula inlined with the Gelu arithmetic folded into it (21 passes, not 23):
    # with u = |t|/sqrt(2) and q = (1 - erf(u)) / 2 (halved polynomial coefficients),
    # Phi(t) = 1/2 + sign(t) (1/2 - q).
    f = np.float32
    a = np.abs(t)
    r = a * f(_ERF_P / math.sqrt(2.0))
    r += f(1)
    np.reciprocal(r, out=r)
    np.square(a, out=a)
    a *= f(-0.5)
    np.exp(a, out=a)
    q = r * f(_ERF_A[0] / 2)
    for c in _ERF_A[1:]:
        q += f(c / 2)
        q *= r
    q *= a
    np.subtract(f(0.5), q, out=q)
    np.copysign(q, t, out=q)
    q += f(0.5)
    t *= q


def _gelu_tanh(t: np.ndarray, p: dict) -> None:
    s = t * t
    s *= 0.044715
    s += 1
    s *= t
    s *= math.sqrt(2.0 / math.pi)
    np.tanh(s, out=s)
    s += 1
    t *= s
    t *= 0.5


SMALL_EXPIT = 768   # below this many values scipy's expit (one ufunc call) is the fastest:
                    # 0.3 us for 16 values where the four-call numpy path took 2.5


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic sigmoid of a float array into `out` (new array if None; may be x itself).

    float32 goes through numpy's exp, about twice as fast as scipy's expit (measured 21 vs 50 us
    on 6K values, 3.1 vs 6.1 ms on 1M); exp(-x) overflowing for x < -88 gives the exact limit 0.
    """
    if _expit is not None and (x.dtype != np.float32 or x.size < SMALL_EXPIT):
        return _expit(x) if out is None else _expit(x, out=out)
    if x.size >= vector_math.FAST_MIN and (out is None or out.flags.c_contiguous) and vector_math.available():
        if out is None:
            out = np.array(x, dtype=np.float32, order="C")
        elif out is not x:
            np.copyto(out, x)
        if vector_math.apply(out, "Sigmoid"):   # one compiled pass
            return out
        x = out
    with np.errstate(over="ignore"):
        out = np.negative(x, out=out)
        np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def _sigmoid(t: np.ndarray, p: dict) -> None:
    sigmoid(t, out=t)


def _leaky(t: np.ndarray, p: dict) -> None:
    np.multiply(t, p.get("alpha", 0.01), out=t, where=t < 0)


# numpy's clip loop is ~3x faster than maximum/minimum for float32 (numpy 2.4, AVX2); the raw
# ufunc skips np.clip's Python wrapper (~4 us per tile).
try:
    _clip_ufunc = np._core.umath.clip
except AttributeError:  # pragma: no cover - other numpy layouts
    _clip_ufunc = np.clip


def _clip(t: np.ndarray, p: dict) -> None:
    lo, hi = p.get("min"), p.get("max")
    if t.dtype.kind != "f":
        np.clip(t, lo, hi, out=t)
        return
    typ = t.dtype.type
    _clip_ufunc(t, typ(-np.inf if lo is None else lo), typ(np.inf if hi is None else hi), out=t)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """max(x, 0) into `out` (a new array if None; may be x itself). NaN stays NaN, as in the
    spec's max(0, x) and onnxruntime (a `where(x > 0, x, 0)` would turn it into 0)."""
    if x.dtype.kind == "f":
        typ = x.dtype.type
        return _clip_ufunc(x, typ(0), typ(np.inf), out=out)   # clip propagates NaN
    return np.maximum(x, x.dtype.type(0), out=out)


def _relu(t: np.ndarray, p: dict) -> None:
    relu(t, out=t)


def _hard_sigmoid(t: np.ndarray, p: dict) -> None:
    t *= p.get("alpha", 0.2)
    t += p.get("beta", 0.5)
    _clip(t, {"min": 0.0, "max": 1.0})


def _hard_swish(t: np.ndarray, p: dict) -> None:
    s = t * (1.0 / 6.0)
    s += 0.5
    _clip(s, {"min": 0.0, "max": 1.0})
    t *= s


def _elu(t: np.ndarray, p: dict) -> None:
    neg = t < 0
    s = np.expm1(t)
    s *= p.get("alpha", 1.0)
    np.copyto(t, s, where=neg)


def _silu(t: np.ndarray, p: dict) -> None:
    # x / (1 + exp(-x)): four passes (x * sigmoid(x) took six); the same limits at +-inf and
    # for exp overflow (x / inf = -0.0 where sigmoid underflows to 0).
    with np.errstate(over="ignore"):
        s = np.negative(t)
        np.exp(s, out=s)
    s += 1
    np.divide(t, s, out=t)


CHUNK = 16 * 1024   # elements (64 KB of float32): every pass of a multi-pass activation in L1/L2


def _chunked(fn: Callable[[np.ndarray, dict], None]) -> Callable[[np.ndarray, dict], None]:
    """Run a multi-pass activation chunk by chunk, so its ~10-20 passes (and scratch arrays)
    stay in cache instead of streaming the whole array from memory each time (Gelu over a
    BERT FFN output: ~2.5x faster)."""
    def run(t: np.ndarray, p: dict) -> None:
        if t.size <= 2 * CHUNK or t.ndim == 0:
            fn(t, p)
        elif t.flags.c_contiguous:
            flat = t.reshape(-1)
            for i in range(0, flat.size, CHUNK):
                fn(flat[i:i + CHUNK], p)
        elif t.ndim == 2:   # a strided GEMM tile: blocks of whole rows (views, written in place)
            step = max(1, CHUNK // max(1, t.shape[1]))
            for i in range(0, t.shape[0], step):
                fn(t[i:i + step], p)
        else:
            fn(t, p)
    run.__name__ = run.__qualname__ = f"chunked_{fn.__name__}"
    return run


def _compiled_first(name: str, fn: Callable[[np.ndarray, dict], None]) -> Callable[[np.ndarray, dict], None]:
    """`vector_math`'s one compiled pass where it applies (float32, contiguous, large), else fn."""
    def run(t: np.ndarray, p: dict) -> None:
        if p.get("approximate", "none") == "none" and vector_math.apply(t, name):
            return
        fn(t, p)
    run.__name__ = run.__qualname__ = f"compiled_or_{fn.__name__}"
    return run


ACTIVATIONS: dict[str, Callable[[np.ndarray, dict], None]] = {
    "Relu": _relu,
    "Clip": _clip,
    "Sigmoid": _compiled_first("Sigmoid", _sigmoid),
    "Tanh": lambda t, p: np.tanh(t, out=t),
    "LeakyRelu": _leaky,
    "Gelu": _compiled_first("Gelu", _chunked(_gelu)),
    "FastGelu": _chunked(_gelu_tanh),
    "HardSigmoid": _chunked(_hard_sigmoid),
    "HardSwish": _chunked(_hard_swish),
    "Elu": _chunked(_elu),
    "Silu": _compiled_first("Silu", _chunked(_silu)),
}
# Positional parameter names, in the order onnxruntime's FusedConv `activation_params` uses.
_PARAM_ORDER = {"Clip": ("min", "max"), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
                "Elu": ("alpha",), "Gelu": ("approximate",)}


def _activation_params(activation: str | None, params: Any, clip_min: Any, clip_max: Any) -> dict:
    if activation is None or (params is None and clip_min is None and clip_max is None):
        return {}
    if params is None:
        out: dict = {}
    elif isinstance(params, dict):
        out = dict(params)
    else:
        out = dict(zip(_PARAM_ORDER.get(activation, ()), params))
    if clip_min is not None:
        out["min"] = clip_min
    if clip_max is not None:
        out["max"] = clip_max
    for key in ("min", "max"):  # 0-d arrays from Clip inputs -> Python scalars (no promotion)
        if isinstance(out.get(key), np.ndarray):
            out[key] = out[key].item()
    return out


def _as_2d_operand(x: np.ndarray | None, m: int, n: int, what: str) -> np.ndarray | None:
    """Bias/residual as a 2-D array broadcastable to (M, N), sliceable per tile."""
    if x is None:
        return None
    if type(x) is not np.ndarray:
        x = np.asarray(x)
    if x.ndim == 1 and x.shape[0] == n:
        return x.reshape(1, n)
    if x.ndim == 0:
        return x.reshape(1, 1)
    if x.ndim == 1:
        if x.shape[0] not in (1, n):
            raise ValueError(f"gemm {what} of shape {x.shape} does not broadcast to ({m}, {n})")
        return x.reshape(1, -1)
    if x.ndim > 2:
        if x.size == m * n:
            return x.reshape(m, n)
        # leading dims that broadcast (e.g. (1, 1, N)) collapse onto the row axis
        if all(d == 1 for d in x.shape[:-2]):
            x = x.reshape(x.shape[-2:])
        else:
            raise ValueError(f"gemm {what} of shape {x.shape} does not broadcast to ({m}, {n})")
    if x.shape[0] not in (1, m) or x.shape[1] not in (1, n):
        raise ValueError(f"gemm {what} of shape {x.shape} does not broadcast to ({m}, {n})")
    return x


def _tile_of(x: np.ndarray, m0: int, m1: int, n0: int, n1: int) -> np.ndarray:
    rows = slice(m0, m1) if x.shape[0] > 1 else slice(None)
    cols = slice(n0, n1) if x.shape[1] > 1 else slice(None)
    return x[rows, cols]


def bias_residual_activation(t: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
                             activation: str | None, params: dict | None) -> None:
    """act(t + bias + residual) in place on a 2-D output (bias (rows, 1) or (1, cols)): one
    compiled pass where it applies (`epilogue_jit`), else numpy's passes."""
    params = params or {}
    clamp = epilogue_jit.clamp_bounds(activation, params)
    if clamp is not None and epilogue_jit.apply(t, bias, residual, clamp):
        return
    if bias is not None:
        t += bias
    if residual is not None:
        t += residual
    if activation is not None:
        ACTIVATIONS[activation](t, params)


class _Epilogue:
    """alpha, bias, residual and activation, applied in place to one output tile. `clamp`: the
    (lo, hi) of an epilogue that is only bias + residual + Relu/Clip/none (alpha = beta = 1),
    which `epilogue_jit` runs as one compiled pass over a large tile. `tile_kind`: the
    `vector_math` kind of an activation the compiled GEMM tiles may run on each tile after bias
    and residual (Sigmoid, Silu, exact Gelu, Tanh, with alpha = beta = 1), else None."""
    __slots__ = ("alpha", "beta", "bias", "residual", "act", "params", "clamp", "tile_kind")

    def __init__(self, alpha: float, beta: float, bias: np.ndarray | None,
                 residual: np.ndarray | None, act: Callable | None, params: dict,
                 clamp: tuple[float, float] | None = None, tile_kind: int | None = None) -> None:
        self.alpha, self.beta, self.bias, self.residual = alpha, beta, bias, residual
        self.act, self.params, self.clamp, self.tile_kind = act, params, clamp, tile_kind

    def apply(self, t: np.ndarray, m0: int, m1: int, n0: int, n1: int) -> None:
        """In place on the output tile t = Y[m0:m1, n0:n1]."""
        if self.clamp is not None and t.size >= epilogue_jit.FAST_MIN:
            bias = None if self.bias is None else _tile_of(self.bias, m0, m1, n0, n1)
            res = None if self.residual is None else _tile_of(self.residual, m0, m1, n0, n1)
            if epilogue_jit.apply(t, bias, res, self.clamp):
                return
        if self.alpha != 1:
            t *= self.alpha
        bias = self.bias
        if bias is not None:
            bt = bias if bias.shape == (1, n1 - n0) and n0 == 0 else _tile_of(bias, m0, m1, n0, n1)
            if self.beta == 1:
                np.add(t, bt, out=t)
            elif self.beta != 0:
                t += self.beta * bt
        if self.residual is not None:
            t += _tile_of(self.residual, m0, m1, n0, n1)
        if self.act is not None:
            self.act(t, self.params)


