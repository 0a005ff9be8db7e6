"""2-D MaxPool compiled with numba over the stride-phase planes of `ep_cpu.conv_implicit`.

numpy's path reduces one strided window view per kernel offset (25 `maximum` calls for YOLO's
5x5 SPPF pools, plus a -inf padded copy): on small maps the calls dominate (0.3 ms against
onnxruntime's 0.015 ms for 128x10x10). Here the image is laid out as conv_implicit lays it out
for a convolution (-inf in the padding): output (oy, ox) is position oy*wq + ox of a channel's
grid and tap t reads that position plus a fixed offset, so each tap is one long vectorized
maximum over a block of positions (of every row at once; the wq - ow positions past a row are
dropped in one copy). NaN propagates, as in np.maximum. float32; compiled once, cached on disk.
"""
from __future__ import annotations

import numpy as np

from ep_cpu import conv_implicit, jit_tier

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

BLOCK = 2048                  # positions per block: the block of outputs stays in L1
PAR_MIN_ELEMENTS = 1 << 19    # output values x taps per thread hand-off


if numba is not None:
    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def max_over_taps(xq, chan, offs, y, c0, c1):  # pragma: no cover - compiled
        # xq: channel c's planes at c*chan; y (C, L): y[c, p] = max_t xq[c*chan + p + offs[t]].
        # Each tap's maximum goes to the other of two buffers (the last tap's to y): kept in
        # place (keep m, else store v), LLVM made it a masked store, which AMD's AVX2 CPUs
        # microcode (Zen 3: 0.86 ns a value against 0.12 here).
        taps = offs.shape[0]
        length = y.shape[1]
        bufs = np.empty((2, BLOCK), dtype=np.float32)
        for c in range(c0, c1):
            yr = y[c]
            base = c * chan
            for p0 in range(0, length, BLOCK):
                n = min(length, p0 + BLOCK) - p0
                s = base + offs[0] + p0
                cur = xq[s:s + n]
                if taps == 1:
                    yr[p0:p0 + n] = cur
                for t in range(1, taps):
                    s = base + offs[t] + p0
                    src = xq[s:s + n]
                    dst = yr[p0:p0 + n] if t == taps - 1 else bufs[t % 2, :n]
                    for p in range(n):
                        m = cur[p]
                        v = src[p]
                        # NaN stays (from m) or enters (from v), as in np.maximum
                        dst[p] = m if ((m != m) | (m >= v)) else v
                    cur = dst


def _compile_kernels() -> None:
    """Compile (or load) the plane fill and the tap maximum: an `ep_cpu.jit_tier` build."""
    _max_pool_2d(np.zeros((1, 1, 6, 6), np.float32), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1),
                 (3, 3), 1, None)


def max_pool_2d(x: np.ndarray, kernel_shape, strides, dilations, begin, end, out_shape,
                threads: int, pool) -> np.ndarray | None:
    """MaxPool of float32 x (N, C, H, W) -> (N, C, OH, OW), `end` padding including ceil_mode's
    extra; None where numba is missing or its kernels are still compiling (`ep_cpu.jit_tier`)."""
    if numba is None or not jit_tier.ready("max_pool", _compile_kernels):
        return None
    return _max_pool_2d(x, kernel_shape, strides, dilations, begin, end, out_shape, threads, pool)


def _max_pool_2d(x, kernel_shape, strides, dilations, begin, end, out_shape, threads,
                 pool) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = out_shape
    kh, kw = (int(k) for k in kernel_shape)
    sh, sw = int(strides[0]), int(strides[1])
    lay = conv_implicit.phase_layout(1, h, w, kh, kw, sh, sw, int(dilations[0]), int(dilations[1]),
                                int(begin[0]), int(begin[1]), int(end[0]), int(end[1]), oh, ow)
    planes = conv_implicit.fill_planes(x.reshape(n * c, 1, h, w), lay, sh, sw, -np.inf)
    grid = oh * lay.wq
    y = np.empty((n * c, grid), dtype=np.float32)
    args = (planes.reshape(-1), lay.length, lay.rows, y)
    count = n * c
    workers = max(1, min(threads, count, count * grid * kh * kw // PAR_MIN_ELEMENTS))
    if workers <= 1:
        max_over_taps(*args, 0, count)
    else:
        step = -(-count // workers)
        parts = [(i, min(count, i + step)) for i in range(0, count, step)]
        futs = [pool(workers - 1).submit(max_over_taps, *args, *p) for p in parts[1:]]
        try:
            max_over_taps(*args, *parts[0])
        finally:
            for f in futs:
                f.result()
    return np.ascontiguousarray(y.reshape(n, c, oh, lay.wq)[..., :ow])
