"""Compiled depthwise 2-D convolution (numba, cached on disk) with a fused bias/Relu/Clip.

numpy needs one array pass per kernel tap (17+ passes per output of a 3x3 depthwise conv) at
ufunc-call/memory speed. The two kernels here keep each channel's work in L1/L2:

* `_dw2d_planes` (large maps): per image and channel, the zero-padded input is split into
  polyphase planes and each tap is one flat, vectorized multiply-add over the whole output plane.
* `_dw2d_nhwc` (small maps): channels-last, a tap is one multiply-add over a run of C channels,
  so 7x7 and 14x14 maps still vectorize.

They are compiled with `nogil=True` and no numba threading: channel/row blocks go to
`ep_cpu.gemm`'s thread pool like every other kernel (numba's workqueue threading layer is not
safe under concurrent sessions). `cache=True` stores the machine code in `__pycache__` beside
this file (or numba's user cache directory when that is read-only), so only the first session on
a machine pays the compile (~3-5 s for both kernels; benchmarks/README.md).

`AVAILABLE` is False when numba is not importable; callers then keep the numpy path.
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import (depthwise_direct, depthwise_flat, depthwise_padded, depthwise_tiles, microkernel,
                    native_call)

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the numpy path stays usable
    numba = None

AVAILABLE = numba is not None

# Work per thread hand-off: below this many multiply-adds one thread runs everything (~50 us).
PAR_MIN_MACS = 1 << 20


def _dw2d_nhwc(x, w, bias, y, r0, r1, sh, sw, dh, dw, ph, pw, lo, hi, clamp):  # pragma: no cover
    # Channels-last body compiled by numba: x (N, H, W, C), w (KH, KW, C), bias (C,),
    # y (N, OH, OW, C); output rows [r0, r1) of the N*OH. A tap is one multiply-add over a
    # contiguous run of C channels, so small maps (short rows) still vectorize.
    h, wid, c = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = y.shape[1], y.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    for r in range(r0, r1):
        n = r // oh
        oy = r - n * oh
        for ox in range(ow):
            acc = y[n, oy, ox]
            for ci in range(c):
                acc[ci] = bias[ci]
            for ki in range(kh):
                iy = oy * sh - ph + ki * dh
                if iy < 0 or iy >= h:
                    continue
                for kj in range(kw):
                    ix = ox * sw - pw + kj * dw
                    if ix < 0 or ix >= wid:
                        continue
                    src = x[n, iy, ix]
                    wk = w[ki, kj]
                    for ci in range(c):
                        acc[ci] += wk[ci] * src[ci]
            if clamp:   # an unconditional store: a conditional one became a masked store,
                for ci in range(c):   # microcoded on AMD's AVX2 CPUs
                    v = acc[ci]
                    acc[ci] = lo if v < lo else (hi if v > hi else v)


def _dw2d_planes(x, w, bias, y, c0, c1, sh, sw, dh, dw, ph, pw, lo, hi, clamp):  # pragma: no cover
    # Plane body compiled by numba: x (N, C, H, W), w (C, KH, KW), y (N, C, OH, OW), channels
    # [c0, c1). Per image and channel the zero-padded input is split into sh*sw polyphase
    # planes (padded row a + t*sh is row t of phase a), each a flat scratch row of
    # (hq + 1) * wq values; kernel tap (i, j) then is one flat multiply-add over oh*wq values
    # of its phase shifted by ri*wq + rj (columns past ow are computed and dropped), all in L1/L2.
    n_, _, h, wid = x.shape
    oh, ow = y.shape[2], y.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    hq = oh + ((kh - 1) * dh) // sh
    wq = ow + ((kw - 1) * dw) // sw
    plen = (hq + 1) * wq
    length = oh * wq
    planes = np.zeros((sh * sw, plen), dtype=x.dtype)
    acc = np.empty(length, dtype=x.dtype)
    for n in range(n_):
        for c in range(c0, c1):
            img = x[n, c]
            for a in range(sh):
                for b in range(sw):
                    pl = planes[a * sw + b]
                    for t in range(hq):
                        iy = a + t * sh - ph
                        prow = pl[t * wq:(t + 1) * wq]
                        if iy < 0 or iy >= h:
                            for u in range(wq):
                                prow[u] = 0
                            continue
                        xr = img[iy]
                        for u in range(wq):
                            ix = b + u * sw - pw
                            prow[u] = xr[ix] if 0 <= ix < wid else 0
            bv = bias[c]
            for i in range(length):
                acc[i] = bv
            for ki in range(kh):
                ri, a = divmod(ki * dh, sh)
                for kj in range(kw):
                    rj, b = divmod(kj * dw, sw)
                    off = ri * wq + rj
                    src = planes[a * sw + b, off:off + length]
                    wv = w[c, ki, kj]
                    for i in range(length):
                        acc[i] += wv * src[i]
            out = y[n, c]
            for oy in range(oh):
                orow = out[oy]
                arow = acc[oy * wq:oy * wq + ow]
                if clamp:
                    for ox in range(ow):
                        v = arow[ox]
                        if v < lo:
                            v = lo
                        elif v > hi:
                            v = hi
                        orow[ox] = v
                else:
                    for ox in range(ow):
                        orow[ox] = arow[ox]


# Output maps at least this large (oh*ow) run the polyphase-plane kernel, smaller ones the
# channels-last one. Measured on MobileNetV2's layers (2 threads): planes 2-3x faster from
# 28x28 (stride 1) / 56x56 (stride 2) up, channels-last 1.5-2x faster at 14x14 and below
# and for the 56->28 stride-2 layer.
PLANES_MIN_STRIDE1 = 700
PLANES_MIN_STRIDED = 2000

_compiled: dict[str, object] = {}


def _kernel(name: str):
    fn = _compiled.get(name)
    if fn is None:
        fn = numba.njit(nogil=True, cache=True, fastmath=False)(globals()[name])
        _compiled[name] = fn
    return fn


# float32 maps of at least this many output positions run `depthwise_tiles.depthwise_planes`
# (vector tiles, accumulators in registers; measured 1.2-1.6x faster than the kernels below
# from 32x112x112 down to 384x14x14, slower at 7x7 where the channels-last kernel wins).
TILES_MIN_POSITIONS = 150


def _depthwise_tiles(x, w, strides, dilations, begin, out_shape, bias, clamp, threads, pool):
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh, ow = out_shape
    sh, sw, dh, dw = (int(v) for v in (*strides, *dilations))
    hq, wq = oh + ((kh - 1) * dh) // sh, ow + ((kw - 1) * dw) // sw
    ty, tx = np.arange(kh) * dh, np.arange(kw) * dw
    offs = ((((ty % sh)[:, None] * sw + (tx % sw)[None, :]) * (hq * wq) + (ty // sh)[:, None] * wq
             + (tx // sw)[None, :]).reshape(-1).astype(np.int64))
    w2 = np.ascontiguousarray(w.reshape(c, kh * kw), dtype=np.float32)
    b = np.zeros(c, dtype=np.float32) if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(c)
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    xc = np.ascontiguousarray(x)
    y = np.empty((n, c, oh, ow), dtype=np.float32)
    threads = native_call.workers_for(threads, c, n * c * oh * ow * kh * kw)
    for i in range(n):
        args = (xc[i], w2, offs, b, np.float32(lo), np.float32(hi), y[i], sh, sw, int(begin[0]),
                int(begin[1]), hq, wq)
        if threads > 1 and native_call.parallel_ok():
            native_call.set_threads(threads)
            depthwise_tiles.depthwise_planes_parallel(*args, threads)
        else:
            native_call.run_blocks(depthwise_tiles.depthwise_planes, c, threads, args, (), pool)
    return y


# Stride 1 with the output as wide as the input: `depthwise_flat` (whole planes as flat masked
# vectors), measured faster than every kernel below on MobileNetV2's shapes (1 thread, 3x3:
# 960x7x7 27 vs 84 us, 384x14x14 37 vs 62, 192x28x28 59 vs 106, 144x56x56 149 vs 203,
# 32x112x112 137 vs 175). Stride 2 too (each channel split into phase planes first, vectorized:
# 96x112x112 266 vs 391 us, 576x14x14 39 vs 65, 192x28x28 43 vs 71, 960x14x14 56 vs 138).
FLAT = True

# Strides 1 and 2 without dilation on AVX2 CPUs (no `depthwise_flat` there): `depthwise_padded`
# (each channel copied into a zero-padded plane, every tap one unmasked flat shift), measured
# faster than every kernel below on MobileNetV2's shapes (Zen 3, 1 thread, 3x3: 960x7x7 78 vs
# 111 us, 384x14x14 79 vs 110, 192x28x28 118 vs 138, 144x56x56 305 vs 322, 32x112x112 256 vs
# 271; stride 2: 576x14x14 65 vs 118, 192x28x28 55 vs 132, 144x56x56 138 vs 270, 96x112x112 319
# vs 530). AVX-512 CPUs keep the masked kernels (not measured against it there).
PADDED = not microkernel.wide()

# `depthwise_direct` (masked vectors read from the input, no planes) where it measured faster
# than the kernels below (1 thread, 3x3, MobileNetV2's shapes): every stride-2 map with rows of
# 9+ outputs (96x112x112: 277 vs 548 us; 576x14x14: 70 vs 73), stride-1 maps of 9-32 columns
# (384x14x14: 64 vs 107 us; 192x28x28: 111 vs 122); not 56x56 and up at stride 1 (258 vs 208 us)
# nor 7x7 (83 vs 74).
DIRECT_MIN_COLUMNS = 9
DIRECT_MAX_COLUMNS_STRIDE1 = 32


def _direct(strides, out_shape) -> bool:
    ow = int(out_shape[1])
    if not depthwise_direct.applies(strides, out_shape) or ow < DIRECT_MIN_COLUMNS:
        return False
    return int(strides[1]) == 2 or ow <= DIRECT_MAX_COLUMNS_STRIDE1


def compile_kernels() -> None:
    """Compile (or load from the disk cache) the float32 kernels `depthwise_2d` picks on this
    CPU, one and two threads, on small maps (an `ep_cpu.jit_tier` build)."""
    from ep_cpu.gemm import _get_pool
    rng = np.random.default_rng(0)
    for c, hw, s in ((32, 32, 1), (32, 32, 2), (8, 5, 1)):   # tiles / flat / direct; channels-last
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        out = (-(-hw // s),) * 2
        for threads in (1, 2):
            depthwise_2d(x, w, (s, s), (1, 1), (1, 1), out, None, (0.0, 6.0), threads, _get_pool)


def depthwise_2d(x: np.ndarray, w: np.ndarray, strides, dilations, begin, out_shape,
                 bias: np.ndarray | None, clamp: tuple[float, float] | None,
                 threads: int, pool) -> np.ndarray:
    """Depthwise conv of x (N, C, H, W) with w (C, 1, KH, KW) (float32/float64, same dtype),
    plus bias and an optional clamp (Relu = (0, inf), Clip = (min, max)); NaN passes the clamp.
    Returns a new (N, C, OH, OW) array. `pool(workers)` gives a ThreadPoolExecutor."""
    n, c = x.shape[:2]
    kh, kw = w.shape[2:]
    oh, ow = out_shape
    dt = x.dtype
    if (dt == np.float32 and FLAT and depthwise_flat.applies(x.shape, (kh, kw), strides, dilations,
                                                             begin, out_shape)
            and depthwise_flat.available()):
        return depthwise_flat.depthwise_2d(x, w, strides, dilations, begin, out_shape, bias, clamp,
                                           threads, pool)
    if (dt == np.float32 and PADDED and depthwise_padded.available()
            and depthwise_padded.applies((kh, kw), strides, dilations, begin, out_shape)):
        return depthwise_padded.depthwise_2d(x, w, strides, begin, out_shape, bias, clamp, threads,
                                             pool)
    if dt == np.float32 and _direct(strides, out_shape) and depthwise_direct.available():
        return depthwise_direct.depthwise_2d(x, w, strides, dilations, begin, out_shape, bias, clamp,
                                             threads, pool)
    if dt == np.float32 and oh * ow >= TILES_MIN_POSITIONS and microkernel.available():
        return _depthwise_tiles(x, w, strides, dilations, begin, out_shape, bias, clamp, threads, pool)
    b = np.zeros(c, dtype=dt) if bias is None else np.ascontiguousarray(bias, dtype=dt).reshape(c)
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    args = (int(strides[0]), int(strides[1]), int(dilations[0]), int(dilations[1]),
            int(begin[0]), int(begin[1]), dt.type(lo), dt.type(hi), clamp is not None)
    macs = n * c * oh * ow * kh * kw
    threads = max(1, min(threads, macs // PAR_MIN_MACS))
    strided = strides[0] > 1 or strides[1] > 1
    if oh * ow >= (PLANES_MIN_STRIDED if strided else PLANES_MIN_STRIDE1):
        y = np.empty((n, c, oh, ow), dtype=dt)
        w3 = np.ascontiguousarray(w.reshape(c, kh, kw), dtype=dt)
        native_call.run_blocks(_kernel("_dw2d_planes"), c, min(threads, c), (np.ascontiguousarray(x), w3, b, y),
                    args, pool)
        return y
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    wt = np.ascontiguousarray(w.reshape(c, kh * kw).T.reshape(kh, kw, c), dtype=dt)
    yt = np.empty((n, oh, ow, c), dtype=dt)
    native_call.run_blocks(_kernel("_dw2d_nhwc"), n * oh, min(threads, n * oh), (xt, wt, b, yt), args, pool)
    return np.ascontiguousarray(yt.transpose(0, 3, 1, 2))
