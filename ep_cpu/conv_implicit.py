"""2-D convolution as an implicit GEMM over the compiled microkernel of `ep_cpu.microkernel`.

OpenBLAS's SGEMM reaches about half of this CPU's peak (Zen 5, AVX-512: ~120 GFLOP/s a core,
where onnxruntime's MLAS reaches ~230), and im2col writes a matrix nine times the input before
the GEMM reads it. Here a convolution's weights (M, C*KH*KW) are packed once into row panels;
the input's windows are copied straight into a column panel of NR output positions (stride 1:
contiguous runs; otherwise a gather), each tile of the output is one microkernel product, and
bias, residual and a clamp (Relu, Clip) are applied to the tile while it is in L1.

Threads split the column panels, or the row panels when there are few columns (7x7 maps), on
`ep_cpu.gemm`'s pool (the kernels are compiled `nogil`). Compiled code is cached on disk.
"""
from __future__ import annotations

import math

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu.microkernel import MR_MAX, NR, available, choose_mr  # noqa: F401 - re-exported

PANEL_BLOCK_BYTES = 512 * 1024   # column panels packed at a time: half of a Zen 5 core's L2
BLOCK_POSITIONS = 2048           # in-place convolution: positions per block of tiles

if mk.numba is not None:
    numba = mk.numba
    tile_product, store_tile, RAW = mk.tile_product, mk.store_tile, mk.RAW

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def conv_in_place(xf, rows, ap, m, ldc, bias, has_bias, res, has_res, lo, hi, mode, y,
                      j0, j1, i0, i1):  # pragma: no cover - compiled
        # Stride 1: output (oy, ox) is position p = oy*wp + ox of the padded image's grid, and
        # its input for row k = (channel, tap) of the weights is xf[p + rows[k]]: the
        # microkernel reads B straight from the image, NR positions at a time. y and res are
        # (M, ldc) flat in that grid (the wp - ow positions of each row past the output are
        # computed and dropped by the caller); tiles [j0, j1) of positions, row panels [i0, i1).
        kdim = rows.shape[0]
        mr = ap.shape[2]
        tile = np.empty((MR_MAX, NR), dtype=np.float32)
        block = max(1, BLOCK_POSITIONS // NR)
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for ib in range(i0, i1):
                r0 = ib * mr
                nrows = min(mr, m - r0)
                for jb in range(jb0, jb1):
                    p0 = jb * NR
                    if nrows == mr:
                        tile_product(ap, ib * kdim * mr, mr, xf, p0, rows, True, kdim, y,
                                     r0 * ldc + p0, ldc, bias, r0, res, r0 * ldc + p0, lo, hi, mode)
                    else:
                        tile_product(ap, ib * kdim * mr, mr, xf, p0, rows, True, kdim, tile, 0,
                                     NR, bias, 0, res, 0, lo, hi, RAW)
                        store_tile(tile, nrows, NR, r0, p0, y, ldc, bias, True, has_bias, res,
                                   has_res, lo, hi)

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def conv_panels(xf, c, hp, wp, ap, m, kh, kw, sh, sw, dh, dw, oh, ow, bias, has_bias, res,
                    has_res, lo, hi, mode, y, j0, j1, i0, i1):  # pragma: no cover - compiled
        # xf: one image's zero-padded input (C, hp, wp) flattened; ap (MB, K, mr) packed weights,
        # K = C*kh*kw; y, res: (M * oh*ow) flat; column panels [j0, j1), row panels [i0, i1).
        u64 = np.uint64
        kdim = c * kh * kw
        n = oh * ow
        mr = ap.shape[2]
        # a block of column panels (up to ~PANEL_BLOCK_BYTES, L2) is packed, then every row
        # panel of the weights meets each of them: the weights stream once per block
        block = max(1, min(j1 - j0, PANEL_BLOCK_BYTES // (kdim * NR * 4)))
        panels = np.empty((block, kdim * NR), dtype=np.float32)
        tile = np.empty((MR_MAX, NR), dtype=np.float32)
        no_rows = np.zeros(1, dtype=np.int64)
        base = np.empty(NR, dtype=np.uint64)
        plane = hp * wp
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for jb in range(jb0, jb1):
                pf = panels[jb - jb0]
                n0 = jb * NR
                nn = min(NR, n - n0)
                for t in range(nn):
                    oy = (n0 + t) // ow
                    base[t] = u64(oy * sh * wp + ((n0 + t) - oy * ow) * sw)
                # panel row (channel, tap): a gather of the input values under the positions
                kidx = 0
                for ci in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            off = u64(ci * plane + i * dh * wp + j * dw)
                            row = u64(kidx * NR)
                            for t in range(nn):
                                pf[row + u64(t)] = xf[base[t] + off]
                            for t in range(nn, NR):
                                pf[row + u64(t)] = 0.0
                            kidx += 1
            for ib in range(i0, i1):
                r0 = ib * mr
                nrows = min(mr, m - r0)
                for jb in range(jb0, jb1):
                    n0 = jb * NR
                    ncols = min(NR, n - n0)
                    if nrows == mr and ncols == NR:
                        tile_product(ap, ib * kdim * mr, mr, panels, (jb - jb0) * kdim * NR, no_rows,
                                     False, kdim, y, r0 * n + n0, n, bias, r0, res, r0 * n + n0,
                                     lo, hi, mode)
                    else:
                        tile_product(ap, ib * kdim * mr, mr, panels, (jb - jb0) * kdim * NR, no_rows,
                                     False, kdim, tile, 0, NR, bias, 0, res, 0, lo, hi, RAW)
                        store_tile(tile, nrows, ncols, r0, n0, y, n, bias, True, has_bias, res,
                                   has_res, lo, hi)


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
    c, h, w = x.shape[1:]
    hp, wp = h + begin[0] + end[0], w + begin[1] + end[1]
    has_bias, has_res = bias is not None, residual is not None
    b = (np.ascontiguousarray(bias, dtype=np.float32).reshape(m) if has_bias
         else np.zeros(1, dtype=np.float32))
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    mode = mk.store_mode(1 if has_bias else 0, has_res)
    in_place = sh == 1 and sw == 1
    if in_place:
        # the padded image flat, long enough for the last tile's reads past the last position;
        # the output and residual live in the padded grid (row stride wp, ldc positions)
        tiles = -(-(oh * wp) // NR)
        ldc = tiles * NR
        rows = (np.arange(c)[:, None, None] * (hp * wp) + np.arange(kh)[None, :, None] * (dh * wp)
                + np.arange(kw)[None, None, :] * dw).reshape(-1).astype(np.int64)
        xp = np.zeros((n, max(c * hp * wp, ldc + int(rows[-1]))), dtype=np.float32)
        xp[:, :c * hp * wp].reshape(n, c, hp, wp)[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x
        wide = ldc != oh * ow
        y = np.empty((n, m * ldc), dtype=np.float32)
        if has_res:
            res = np.zeros((n, m, ldc), dtype=np.float32)
            res[:, :, :oh * wp].reshape(n, m, oh, wp)[..., :ow] = residual
            res = res.reshape(n, m * ldc)
    else:
        tiles = -(-(oh * ow) // NR)
        xp = (np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
              if any(begin) or any(end) else np.ascontiguousarray(x))
        y = np.empty((n, m * oh * ow), dtype=np.float32)
        if has_res:
            res = np.ascontiguousarray(np.broadcast_to(residual, (n, m, oh, ow)),
                                       dtype=np.float32).reshape(n, -1)
    row_panels = packed_w.shape[0]
    by_columns = _split_by_columns(tiles, row_panels)
    workers = max(1, min(threads, (tiles if by_columns else row_panels) // PAR_MIN_PANELS))
    for i in range(n):
        r = res[i] if has_res else y[i]
        epilogue = (b, has_bias, r, has_res, np.float32(lo), np.float32(hi), mode, y[i])
        if in_place:
            fn, args = conv_in_place, (xp[i], rows, packed_w, m, ldc, *epilogue)
        else:
            fn = conv_panels
            args = (xp[i].reshape(-1), c, xp.shape[2], xp.shape[3], packed_w, m, kh, kw, sh, sw,
                    dh, dw, oh, ow, *epilogue)
        if workers <= 1:
            fn(*args, 0, tiles, 0, row_panels)
            continue
        if by_columns:
            parts = [(j0, j1, 0, row_panels) for j0, j1 in _ranges(tiles, workers)]
        else:
            parts = [(0, tiles, i0, i1) for i0, i1 in _ranges(row_panels, workers)]
        # the calling thread takes the first part: one hand-off fewer
        futs = [pool(workers - 1).submit(fn, *args, *p) for p in parts[1:]]
        try:
            fn(*args, *parts[0])
        finally:
            for f in futs:
                f.result()
    if in_place and wide:
        return np.ascontiguousarray(y.reshape(n, m, ldc)[:, :, :oh * wp].reshape(n, m, oh, wp)[..., :ow])
    return y.reshape(n, m, oh, ow)
