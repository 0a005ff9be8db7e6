"""2-D convolution as an implicit GEMM over the compiled microkernel of `ep_cpu.microkernel`.

OpenBLAS's SGEMM reaches about half of this CPU's peak (Zen 5, AVX-512: ~120 GFLOP/s a core,
where onnxruntime's MLAS reaches ~230), and im2col writes a matrix nine times the input before
the GEMM reads it. Here a convolution's weights (M, C*KH*KW) are packed once into row panels,
and the microkernel reads B straight from the zero-padded image: output (oy, ox) is position
oy*wq + ox of the image's grid and its input under tap k is at that position plus a fixed
offset rows[k], so NR consecutive positions are NR consecutive floats (no im2col, no packing).
Strided convs first split the image into stride-phase planes, in which every tap is again such
a shift. The wq - ow positions past each output row are computed and dropped in one copy.
Whole tiles store straight into the output with bias, residual and a clamp (Relu, Clip).

Threads split the column tiles, or the row panels when there are few positions (7x7 maps), on
`ep_cpu.gemm`'s pool (the kernels are compiled `nogil`). Compiled code is cached on disk.
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu.microkernel import NR, available, choose_mr  # noqa: F401 - available: re-exported


if mk.numba is not None:
    conv_in_place = mk.conv_in_place

def pack_weight(w: np.ndarray) -> np.ndarray:
    """(M, C, KH, KW) float32 weights -> row panels (ceil(M/mr), C*KH*KW, mr)."""
    m = w.shape[0]
    return mk.pack_rows(w.reshape(m, math.prod(w.shape[1:])), choose_mr(m))


# Panels per thread hand-off: fewer and one thread runs all (a hand-off costs ~20-60 us).
PAR_MIN_PANELS = 4


def _split_by_columns(tiles: int, row_panels: int) -> bool:
    """Threads take ranges of column tiles, or of row panels when the map has few positions."""
    return tiles >= 2 * PAR_MIN_PANELS or tiles >= row_panels


def _ranges(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // parts)
    return [(i, min(total, i + step)) for i in range(0, total, step)]


def conv2d(x: np.ndarray, packed_w: np.ndarray, m: int, kernel_shape, strides, dilations,
           begin, end, out_shape, bias: np.ndarray | None, residual: np.ndarray | None,
           clamp: tuple[float, float] | None, threads: int, pool) -> np.ndarray:
    """2-D convolution (group 1) of float32 x (N, C, H, W) with weights packed by `pack_weight`;
    returns (N, M, OH, OW) = clamp(conv + bias + residual). `pool(workers)` gives an executor."""
    n = x.shape[0]
    kh, kw = kernel_shape
    oh, ow = out_shape
    sh, sw = int(strides[0]), int(strides[1])
    dh, dw = int(dilations[0]), int(dilations[1])
    if kh == kw == 1 and not any(begin) and not any(end) and (sh > 1 or sw > 1):
        x, sh, sw = x[:, :, ::sh, ::sw][:, :, :oh, :ow], 1, 1   # a strided 1x1 conv reads a subsample
    c, h, w = x.shape[1:]
    hp, wp = h + begin[0] + end[0], w + begin[1] + end[1]
    # Strides: the padded image as sh*sw phase planes (row a + t*sh of the image is row t of
    # phase a): in its phase, a tap is again a shift by a whole row/column, so every conv is a
    # stride-1 product over "channels" (channel, phase).
    hq, wq = -(-hp // sh), -(-wp // sw)
    plane = hq * wq
    taps_y, taps_x = np.arange(kh) * dh, np.arange(kw) * dw
    rows = ((np.arange(c)[:, None, None] * (sh * sw) + (taps_y % sh)[None, :, None] * sw
             + (taps_x % sw)[None, None, :]) * plane
            + (taps_y // sh)[None, :, None] * wq + (taps_x // sw)[None, None, :]).reshape(-1)
    rows = rows.astype(np.int64)
    # the output and residual live in the phase grid (row stride wq, ldc positions); the image
    # is long enough for the last tile's reads past the last position
    tiles = -(-(oh * wq) // NR)
    ldc = tiles * NR
    xq = np.zeros((n, max(c * sh * sw * plane, ldc + int(rows.max()))), dtype=np.float32)
    if sh == sw == 1:
        xq[:, :c * plane].reshape(n, c, hq, wq)[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x
    else:
        xp = np.zeros((n, c, hq * sh, wq * sw), dtype=np.float32)
        xp[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x
        phases = xq[:, :c * sh * sw * plane].reshape(n, c, sh, sw, hq, wq)
        for a in range(sh):
            for b_ in range(sw):
                phases[:, :, a, b_] = xp[:, :, a::sh, b_::sw]
    has_bias, has_res = bias is not None, residual is not None
    b = (np.ascontiguousarray(bias, dtype=np.float32).reshape(m) if has_bias
         else np.zeros(1, dtype=np.float32))
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    mode = mk.store_mode(1 if has_bias else 0, has_res)
    wide = ldc != oh * ow
    y = np.empty((n, m * ldc), dtype=np.float32)
    if has_res:
        res = np.zeros((n, m, ldc), dtype=np.float32)
        res[:, :, :oh * wq].reshape(n, m, oh, wq)[..., :ow] = residual
        res = res.reshape(n, m * ldc)
    row_panels = packed_w.shape[0]
    by_columns = _split_by_columns(tiles, row_panels)
    workers = max(1, min(threads, (tiles if by_columns else row_panels) // PAR_MIN_PANELS))
    for i in range(n):
        r = res[i] if has_res else y[i]
        args = (xq[i], rows, packed_w, m, ldc, b, has_bias, r, has_res, np.float32(lo),
                np.float32(hi), mode, y[i])
        if workers <= 1:
            conv_in_place(*args, 0, tiles, 0, row_panels)
            continue
        if by_columns:
            parts = [(j0, j1, 0, row_panels) for j0, j1 in _ranges(tiles, workers)]
        else:
            parts = [(0, tiles, i0, i1) for i0, i1 in _ranges(row_panels, workers)]
        # the calling thread takes the first part: one hand-off fewer
        futs = [pool(workers - 1).submit(conv_in_place, *args, *p) for p in parts[1:]]
        try:
            conv_in_place(*args, *parts[0])
        finally:
            for f in futs:
                f.result()
    if wide:
        return np.ascontiguousarray(y.reshape(n, m, ldc)[:, :, :oh * wq].reshape(n, m, oh, wq)[..., :ow])
    return y.reshape(n, m, oh, ow)
