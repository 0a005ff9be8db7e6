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
    tile_product, store_tile = mk.tile_product, mk.store_tile
    tile_product_in_place = mk.tile_product_in_place

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def conv_in_place(xf, rows, ap, m, oh, ow, wp, bias, has_bias, res, has_res, lo, hi, y,
                      j0, j1, i0, i1):  # pragma: no cover - compiled
        # Stride 1, dilation d: output (oy, ox) is position p = oy*wp + ox of the padded
        # image's grid, and its input for row k = (channel, tap) of the weights is
        # xf[p + rows[k]]: the microkernel reads B straight from the image, NR positions at a
        # time (the wp - ow positions of a row past the output are computed and dropped).
        # xf has NR + wp zeros past the image; y, res: (M * oh*ow) flat; tiles [j0, j1) of
        # positions, row panels [i0, i1).
        u64 = np.uint64
        kdim = rows.shape[0]
        n = oh * ow
        mr = ap.shape[2]
        tile = np.empty((MR_MAX, NR), dtype=np.float32)
        tf = tile.reshape(MR_MAX * NR)
        seg_t = np.empty(NR, dtype=np.int64)
        seg_len = np.empty(NR, dtype=np.int64)
        seg_dst = np.empty(NR, dtype=np.int64)
        npos = (oh - 1) * wp + ow
        block = max(1, BLOCK_POSITIONS // NR)
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for ib in range(i0, i1):
                r0 = ib * mr
                nrows = min(mr, m - r0)
                for jb in range(jb0, jb1):
                    p0 = jb * NR
                    tile_product_in_place(ap, ib * kdim * mr, mr, xf, p0, rows, kdim, tile)
                    # runs of the tile's positions that are outputs (ox < ow)
                    nseg = 0
                    t = 0
                    last = min(NR, npos - p0)
                    while t < last:
                        oy = (p0 + t) // wp
                        ox = (p0 + t) - oy * wp
                        if ox >= ow:
                            t += wp - ox
                            continue
                        run = min(last - t, ow - ox)
                        seg_t[nseg] = t
                        seg_len[nseg] = run
                        seg_dst[nseg] = oy * ow + ox
                        nseg += 1
                        t += run
                    for r in range(nrows):
                        b = bias[r0 + r] if has_bias else np.float32(0.0)
                        for s in range(nseg):
                            tr = u64(r * NR + seg_t[s])
                            yo = u64((r0 + r) * n + seg_dst[s])
                            for u in range(seg_len[s]):
                                v = tf[tr + u64(u)] + b
                                if has_res:
                                    v += res[yo + u64(u)]
                                v = lo if v < lo else v
                                y[yo + u64(u)] = hi if v > hi else v

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def conv_panels(xf, c, hp, wp, ap, m, kh, kw, sh, sw, dh, dw, oh, ow, bias, has_bias, res,
                    has_res, lo, hi, y, j0, j1, i0, i1):  # pragma: no cover - compiled
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
        base = np.empty(NR, dtype=np.uint64)
        seg_t = np.empty(NR, dtype=np.uint64)
        seg_len = np.empty(NR, dtype=np.uint64)
        seg_src = np.empty(NR, dtype=np.uint64)
        plane = hp * wp
        runs = sw == 1 and ow >= 16
        no_rows = np.zeros(1, dtype=np.int64)
        for jb0 in range(j0, j1, block):
            jb1 = min(j1, jb0 + block)
            for jb in range(jb0, jb1):
                pf = panels[jb - jb0]
                n0 = jb * NR
                nn = min(NR, n - n0)
                # the panel's output positions as runs along output rows
                nseg = 0
                t = 0
                while t < nn:
                    oy = (n0 + t) // ow
                    ox = (n0 + t) - oy * ow
                    run = min(nn - t, ow - ox)
                    seg_t[nseg] = t
                    seg_len[nseg] = run
                    seg_src[nseg] = oy * sh * wp + ox * sw
                    for u in range(run):
                        base[t + u] = u64(oy * sh * wp + (ox + u) * sw)
                    nseg += 1
                    t += run
                # panel row (channel, tap): the input values under the panel's positions
                kidx = 0
                for ci in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            off = u64(ci * plane + i * dh * wp + j * dw)
                            row = u64(kidx * NR)
                            if runs:
                                for s in range(nseg):
                                    d = row + seg_t[s]
                                    src = seg_src[s] + off
                                    for u in range(seg_len[s]):
                                        pf[d + u] = xf[src + u]
                            else:
                                for t in range(nn):
                                    pf[row + u64(t)] = xf[base[t] + off]
                            for t in range(nn, NR):
                                pf[row + u64(t)] = 0.0
                            kidx += 1
            for ib in range(i0, i1):
                for jb in range(jb0, jb1):
                    n0 = jb * NR
                    tile_product(ap, ib * kdim * mr, mr, panels[jb - jb0], kdim, tile, no_rows)
                    store_tile(tile, min(mr, m - ib * mr), min(NR, n - n0), ib * mr, n0, y, n,
                               bias, True, has_bias, res, has_res, lo, hi)


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
    in_place = sh == 1 and sw == 1
    if in_place:
        # the padded image, flat, then NR + wp zeros for the last tile's dropped positions
        c, h, w = x.shape[1:]
        hp, wp = h + begin[0] + end[0], w + begin[1] + end[1]
        xp = np.zeros((n, c * hp * wp + NR + wp), dtype=np.float32)
        xp[:, :c * hp * wp].reshape(n, c, hp, wp)[:, :, begin[0]:begin[0] + h, begin[1]:begin[1] + w] = x
        rows = (np.arange(c)[:, None, None] * (hp * wp) + np.arange(kh)[None, :, None] * (dh * wp)
                + np.arange(kw)[None, None, :] * dw).reshape(-1).astype(np.int64)
        tiles = -(-((oh - 1) * wp + ow) // NR)
    elif any(begin) or any(end):
        xp = np.pad(x, ((0, 0), (0, 0), (begin[0], end[0]), (begin[1], end[1])))
        tiles = -(-(oh * ow) // NR)
    else:
        xp = np.ascontiguousarray(x)
        tiles = -(-(oh * ow) // NR)
    y = np.empty((n, m * oh * ow), dtype=np.float32)
    has_bias = bias is not None
    b = (np.ascontiguousarray(bias, dtype=np.float32).reshape(m) if has_bias
         else np.zeros(1, dtype=np.float32))
    has_res = residual is not None
    lo, hi = (-math.inf, math.inf) if clamp is None else clamp
    row_panels = packed_w.shape[0]
    by_columns = _split_by_columns(tiles, row_panels)
    workers = max(1, min(threads, (tiles if by_columns else row_panels) // PAR_MIN_PANELS))
    for i in range(n):
        r = (np.ascontiguousarray(np.broadcast_to(residual, (n, m, oh, ow))[i], dtype=np.float32)
             .reshape(-1) if has_res else y[i])
        clamp_args = (np.float32(lo), np.float32(hi), y[i])
        if in_place:
            fn = conv_in_place
            args = (xp[i], rows, packed_w, m, oh, ow, wp, b, has_bias, r, has_res, *clamp_args)
        else:
            fn = conv_panels
            args = (xp[i].reshape(-1), xp.shape[1], xp.shape[2], xp.shape[3], packed_w, m, kh, kw,
                    sh, sw, dh, dw, oh, ow, b, has_bias, r, has_res, *clamp_args)
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
    return y.reshape(n, m, oh, ow)
