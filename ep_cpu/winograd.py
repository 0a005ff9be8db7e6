"""Winograd F(2x2,3x3) and F(4x4,3x3) for 3x3, stride-1, dilation-1, ungrouped float convs.

An m x m output tile needs m+2 x m+2 inputs (a = m + 2); in the transformed domain the conv is
a*a independent (M x C) @ (C x tiles) GEMMs, a*a/(9*m*m) of im2col's multiplies (0.44 for m=2,
0.25 for m=4). The steps (numpy/BLAS here; for F(4x4,3x3) in float32 the two transforms are
compiled, `ep_cpu.winograd_jit`, around the same batched BLAS product):

    U = G w G^T        (a, a, M, C)   once per constant weight (`transform_weight`)
    V = B^T d B        (a, a, C, P)   every tile d of the zero-padded input (two small GEMMs)
    Mt = U @ V         (a*a batched BLAS GEMMs)
    Y = A^T Mt A       (m, m, M, P)   then scattered to NCHW with bias/residual/activation

The transform matrices are the standard ones of Lavin & Gray ("Fast Algorithms for
Convolutional Neural Networks", 2015), points 0, +-1, +-2 (and infinity) for m=4.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ep_cpu import epilogue_jit, jit_tier
from ep_cpu.blas_threads import single_threaded_blas
from ep_cpu.gemm import ACTIVATIONS
from ep_cpu.native_call import run_blocks

_F2 = (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
       np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64),
       np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64))
_F4 = (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64),
       np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64),
       np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64))
MATRICES = {2: _F2, 4: _F4}


def transform_weight(w: np.ndarray, m: int) -> np.ndarray:
    """U = G w G^T for w (M, C, 3, 3): (a*a, M, C) in w's dtype (computed in float64)."""
    g = MATRICES[m][1]
    a = m + 2
    mo, c = w.shape[:2]
    # U[i, j] = sum_kl G[i, k] G[j, l] w[k, l]: one GEMM of kron(G, G) (a*a x 9) with the 9 taps
    # of every (M, C) pair, already in U's layout (einsum's batched path took ~45 ms per
    # 512x512 weight, and every Winograd conv of a model pays this at session build).
    taps = w.astype(np.float64).reshape(mo * c, 9).T
    u = np.kron(g, g) @ taps
    return np.ascontiguousarray(u.reshape(a * a, mo, c), dtype=w.dtype)


def conv3x3(x: np.ndarray, u: np.ndarray, m: int, begin, out_shape,
            bias: np.ndarray | None = None, residual: np.ndarray | None = None,
            activation: str | None = None, activation_params: dict | None = None,
            threads: int = 1, pool: Callable | None = None) -> np.ndarray:
    """act(conv(x, w) + bias + residual) for x (N, C, H, W), u = transform_weight(w, m).

    begin: (top, left) padding; out_shape: (oh, ow) (the end padding follows from it).
    F(4x4,3x3) in float32 runs the compiled transforms (`ep_cpu.winograd_jit`), their channels
    split between up to `threads` threads (`pool(workers)`: an executor) where that pays; other
    tiles and dtypes, or no numba: the numpy steps below."""
    if m == 4 and x.dtype == np.float32 and COMPILED and _jit() is not None:
        return _conv3x3_compiled(x, u, begin, out_shape, bias, residual, activation,
                                 activation_params or {}, threads, pool)
    bt, _, at = (t.astype(x.dtype) for t in MATRICES[m])
    a = m + 2
    n, c, h, wd = x.shape
    mo = u.shape[1]
    oh, ow = out_shape
    th, tw = -(-oh // m), -(-ow // m)
    p = n * th * tw
    # Zero-padded input covering every tile (th*m + 2 rows), input placed at (top, left).
    hp, wp = th * m + 2, tw * m + 2
    xp = np.zeros((n, c, hp, wp), dtype=x.dtype)
    r0, c0 = max(0, -begin[0]), max(0, -begin[1])   # negative pads crop the input
    r1, c1 = min(h, hp - begin[0]), min(wd, wp - begin[1])
    if r1 > r0 and c1 > c0:
        xp[:, :, begin[0] + r0:begin[0] + r1, begin[1] + c0:begin[1] + c1] = x[:, :, r0:r1, c0:c1]
    s = xp.strides
    tiles = as_strided(xp, shape=(n, c, th, tw, a, a),
                       strides=(s[0], s[1], s[2] * m, s[3] * m, s[2], s[3]), writeable=False)
    d = np.ascontiguousarray(tiles.transpose(4, 5, 1, 0, 2, 3)).reshape(a, a * c * p)
    v = (bt @ d).reshape(a, a, c * p)          # rows of each tile
    v = np.matmul(bt, v)                        # columns: (a, a, C*P)
    mt = np.matmul(u, v.reshape(a * a, c, p))   # (a*a, M, P): the BLAS work
    o = (at @ mt.reshape(a, a * mo * p)).reshape(m, a, mo * p)
    o = np.matmul(at, o).reshape(m, m, mo, n, th, tw)
    full = o.transpose(3, 2, 4, 0, 5, 1).reshape(n, mo, th * m, tw * m)[:, :, :oh, :ow]
    y = np.empty((n, mo, oh, ow), dtype=x.dtype)
    clamp = epilogue_jit.clamp_bounds(activation, activation_params or {})
    if n == 1 and clamp is not None and y.size >= epilogue_jit.FAST_MIN:
        # Channels are rows: bias, residual and Relu/Clip in one compiled pass after the scatter.
        np.copyto(y, full)
        b2 = None if bias is None else bias.astype(x.dtype, copy=False).reshape(mo, 1)
        r2 = None if residual is None else np.reshape(residual.astype(x.dtype, copy=False), (mo, -1))
        if epilogue_jit.apply(y.reshape(mo, oh * ow), b2, r2, clamp):
            return y
        full = y   # not applicable after all: the passes below, in place
    if bias is not None:
        np.add(full, bias.astype(x.dtype, copy=False).reshape(1, mo, 1, 1), out=y)
    else:
        np.copyto(y, full)
    if residual is not None:
        y += residual.astype(x.dtype, copy=False)
    if activation is not None:
        ACTIVATIONS[activation](y, activation_params or {})
    return y


COMPILED = True           # F(4x4,3x3) float32 through ep_cpu.winograd_jit
_jit_module: list = []


def _import_jit() -> None:
    from ep_cpu import winograd_jit
    _jit_module.append(winograd_jit if winograd_jit.numba is not None else None)


def _jit():
    """ep_cpu.winograd_jit once it is imported (its kernels compile, or load from numba's disk
    cache, on import: an `ep_cpu.jit_tier` build on the first Winograd conv, so models without
    one never pay for it); None before, or without numba."""
    return _jit_module[0] if jit_tier.ready("winograd", _import_jit) else None


BAND_BYTES = 1 << 20      # a band's transformed input V (36 x C x tiles floats) up to ~L2 size
BAND_MIN_TILES = 8        # ... but at least this many tiles per band: the product's N


def _conv3x3_compiled(x, u, begin, out_shape, bias, residual, activation, params, threads,
                      pool) -> np.ndarray:
    n, c = x.shape[:2]
    mo = u.shape[1]
    oh, ow = out_shape
    th, tw = -(-oh // 4), -(-ow // 4)
    clamp = epilogue_jit.clamp_bounds(activation, params)
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    x = np.ascontiguousarray(x)
    b = np.zeros(mo, np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(mo)
    y = np.empty((n, mo, oh, ow), dtype=np.float32)
    res = None
    if residual is not None:
        res = np.ascontiguousarray(np.broadcast_to(residual, y.shape), dtype=np.float32)
    # Bands of tile rows, V of a band near the L2 size: its product and the output transform
    # then read it from cache. With threads, each transform splits its channels between them
    # and the 36 products are shared out (`_product`): bands per thread instead (each streaming
    # all of U, 9 MB at 256 channels) measured 1.1-1.7x slower from 28x28 maps down.
    rows = max(1, min(th, BAND_BYTES // (36 * 4 * c * tw)), -(-BAND_MIN_TILES // tw))
    f32 = np.float32
    lo32, hi32 = f32(lo), f32(hi)
    jit = _jit()
    split = (threads > 1 and pool is not None and min(c, mo) <= SPLIT_MAX_CHANNELS
             and (c + mo) * th * tw * n >= SPLIT_MIN)
    for i in range(n):
        xi, yi = x[i], y[i]
        ri = yi if res is None else res[i]
        for t0 in range(0, th, rows):
            t1 = min(th, t0 + rows)
            p = (t1 - t0) * tw
            v = np.empty((36, c, p), dtype=np.float32)
            run_blocks(jit.input_tiles, c, threads if split else 1,
                       (xi, begin[0], begin[1], t0, t1, tw, v), (), pool)
            mt = np.empty((36, mo, p), dtype=np.float32)
            _product(u, v, mt, threads, pool)
            run_blocks(jit.output_tiles, mo, threads if split else 1,
                       (mt, t0, t1, tw, b, ri, res is not None, lo32, hi32, yi), (), pool)
    if clamp is None:
        ACTIVATIONS[activation](y, params)
    return y


# The transforms split their channels between the threads where they weigh against the product
# (their work grows with C + M, the product's with C x M): 64 channels on 56x56 0.53 -> 0.40 of
# numpy's 1-thread time, 128 on 20x20 0.90 -> 0.80; from 128 channels on 28x28 and 256 on 14x14
# the hand-offs cost what the split saved (2 threads, interleaved runs).
SPLIT_MAX_CHANNELS = 128
SPLIT_MIN = 1 << 15   # (C + M) x tiles
PRODUCT_SPLIT_MACS = 1 << 21   # the 36 products split between the threads from this size


def _product(u: np.ndarray, v: np.ndarray, mt: np.ndarray, threads: int, pool) -> None:
    """mt = u @ v (36 products): with threads, each takes a share of the 36 on a one-thread
    BLAS (the intra-op threads hold BLAS to one where the compiled kernels run in parallel,
    `ep_cpu.provider`; BLAS's own threads split these thin products poorly)."""
    macs = u.shape[0] * u.shape[1] * u.shape[2] * v.shape[2]
    if threads <= 1 or pool is None or macs < PRODUCT_SPLIT_MACS:
        np.matmul(u, v, out=mt)
        return
    with single_threaded_blas():
        run_blocks(lambda i0, i1: np.matmul(u[i0:i1], v[i0:i1], out=mt[i0:i1]), u.shape[0],
                   threads, (), (), pool)

