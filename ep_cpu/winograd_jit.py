"""The Winograd F(4x4,3x3) input and output transforms of `ep_cpu.winograd`, compiled with numba.

numpy ran each transform as two BLAS products with a 6-row matrix and a transposing gather or
scatter around them: at 64 channels on 56x56 the transforms took ~6 of the conv's ~7 ms, and the
product of the transformed operands (the real work) ~1 ms. Here a transform is one pass:

* `input_tiles`: per channel, each tile's 36 inputs are gathered into 36 rows along the band's
  tiles (from zero-padded copies of the input rows), then B^T and B combine them in loops along
  all the band's tiles (the loops along one row of tiles, 14 on a 56x56 map, were mostly
  remainders: 64 channels on 56x56, 1 thread, 554 -> 448 us a conv on an Intel Xeon).
* `output_tiles`: per output channel and row of tiles, A^T combines the six rows of 36 values,
  A each tile's columns, and bias + residual + clamp (Relu, Clip or none) are applied on the
  store into the NCHW output.

Both take a range of channels and a range of tile rows, so a conv can run as bands of tile rows
(one per thread, each with its own V and product). float32, one image per call; compiled once
and cached on disk.
"""
from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None


# The F(4x4,3x3) matrices of `ep_cpu.winograd` (points 0, +-1, +-2, infinity), float32.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float32)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], dtype=np.float32)

if numba is not None:
    from numba import types as nt

    _F32 = nt.float32
    _IN = nt.Array(_F32, 3, "C", readonly=True)     # a writable array converts
    _OUT = nt.Array(_F32, 3, "C")
    _I64 = nt.int64
    # explicit signatures: one compilation each (a readonly and a writable x would be two)
    _INPUT_SIG = nt.void(_IN, _I64, _I64, _I64, _I64, _I64, _OUT, _I64, _I64)
    _OUTPUT_SIG = nt.void(_IN, _I64, _I64, _I64, nt.Array(_F32, 1, "C", readonly=True), _IN,
                          nt.boolean, _F32, _F32, _OUT, _I64, _I64)

    # Every inner loop writes one array along unit stride (or a whole interleaved group) and
    # reads a few, indexing flat arrays with unsigned integers: LLVM then vectorizes it (numba
    # checks signed indices for wraparound, and that and six arrays written in one loop kept
    # the transforms scalar, 4-10x slower).

    @numba.njit(_INPUT_SIG, nogil=True, cache=True, boundscheck=False)
    def input_tiles(x, top, left, ty0, ty1, tw, v, c0, c1):  # pragma: no cover - compiled
        # x (C, H, W) one image; tile (ty, tx) reads padded rows 4*ty .. 4*ty+5 and padded
        # columns 4*tx .. 4*tx+5, padded (r, s) being input (r - top, s - left). v (36, C, P)
        # gets tile (ty, tx) at p = (ty - ty0) * tw + tx, for channels [c0, c1).
        # Per channel, every loop but the gather runs along all P tiles of the band (v's rows
        # are P long): d[i, j, p] = tile p's value (i, j); then B^T along i, B along j.
        u = np.uint64
        cn, h, wd = x.shape
        pn = v.shape[2]
        xf, vf, bt = x.reshape(-1), v.reshape(-1), _BT
        w4 = 4 * (tw + 1)                        # padded columns, whole groups of four
        row = np.zeros(w4, dtype=np.float32)     # one zero-padded input row
        d = np.empty(36 * pn, dtype=np.float32)  # (i, j) x tiles
        t = np.empty(36 * pn, dtype=np.float32)  # B^T d: (k, j) x tiles
        s0 = min(w4, max(0, left))               # padded columns [s0, s1) hold input
        s1 = max(s0, min(w4, wd + left))
        for c in range(c0, c1):
            for ty in range(ty0, ty1):
                pb = (ty - ty0) * tw
                for i in range(6):
                    iy = 4 * ty + i - top
                    if iy < 0 or iy >= h:
                        for s in range(w4):
                            row[u(s)] = 0
                    else:
                        src = (c * h + iy) * wd - left
                        for s in range(s0):
                            row[u(s)] = 0
                        for s in range(s0, s1):
                            row[u(s)] = xf[u(src + s)]
                        for s in range(s1, w4):
                            row[u(s)] = 0
                    # columns 4tx + j: the four phases, then j = 4, 5 as phases 0, 1 of tx + 1
                    o = 6 * i * pn + pb
                    for tx in range(tw):
                        d[u(o + tx)] = row[u(4 * tx)]
                        d[u(o + pn + tx)] = row[u(4 * tx + 1)]
                        d[u(o + 2 * pn + tx)] = row[u(4 * tx + 2)]
                        d[u(o + 3 * pn + tx)] = row[u(4 * tx + 3)]
                    for tx in range(tw):
                        d[u(o + 4 * pn + tx)] = row[u(4 * tx + 4)]
                        d[u(o + 5 * pn + tx)] = row[u(4 * tx + 5)]
            for k in range(6):                   # B^T d along the rows
                b0, b1, b2, b3, b4, b5 = bt[k, 0], bt[k, 1], bt[k, 2], bt[k, 3], bt[k, 4], bt[k, 5]
                for j in range(6):
                    o, q = (6 * k + j) * pn, j * pn
                    for p in range(pn):
                        t[u(o + p)] = (b0 * d[u(q + p)] + b1 * d[u(q + 6 * pn + p)]
                                       + b2 * d[u(q + 12 * pn + p)] + b3 * d[u(q + 18 * pn + p)]
                                       + b4 * d[u(q + 24 * pn + p)] + b5 * d[u(q + 30 * pn + p)])
            for k in range(6):                   # (B^T d) B along the columns
                q = 6 * k * pn
                for col in range(6):
                    b0, b1, b2 = bt[col, 0], bt[col, 1], bt[col, 2]
                    b3, b4, b5 = bt[col, 3], bt[col, 4], bt[col, 5]
                    dst = ((6 * k + col) * cn + c) * pn
                    for p in range(pn):
                        vf[u(dst + p)] = (b0 * t[u(q + p)] + b1 * t[u(q + pn + p)]
                                          + b2 * t[u(q + 2 * pn + p)] + b3 * t[u(q + 3 * pn + p)]
                                          + b4 * t[u(q + 4 * pn + p)] + b5 * t[u(q + 5 * pn + p)])

    @numba.njit(_OUTPUT_SIG, nogil=True, cache=True, boundscheck=False)
    def output_tiles(mt, ty0, ty1, tw, bias, res, has_res, lo, hi, y, m0, m1):  # pragma: no cover
        # mt (36, M, P) the transformed products of tiles (ty0 .. ty1) x tw; y (M, OH, OW) one
        # image: y = clamp(A^T m A + bias + res) for output channels [m0, m1); res is y's
        # shape (y itself when not has_res). The additions run in numpy's order:
        # (conv + bias) + res.
        u = np.uint64
        mn, oh, ow = y.shape
        pn = mt.shape[2]
        mf, yf, rf, at = mt.reshape(-1), y.reshape(-1), res.reshape(-1), _AT
        p_all = (ty1 - ty0) * tw
        s = np.empty(24 * p_all, dtype=np.float32)   # A^T m: (output row r, column j) x tile
        o = np.empty(16 * p_all, dtype=np.float32)   # A^T m A: (row r, column q) x tile
        plane = mn * pn
        for mo in range(m0, m1):
            b = bias[mo]
            src = mo * pn
            for r in range(4):
                a0, a1, a2, a3, a4, a5 = at[r, 0], at[r, 1], at[r, 2], at[r, 3], at[r, 4], at[r, 5]
                for j in range(6):
                    dst = (6 * r + j) * p_all
                    q0 = j * plane + src
                    for p in range(p_all):
                        s[u(dst + p)] = (a0 * mf[u(q0 + p)] + a1 * mf[u(q0 + 6 * plane + p)]
                                         + a2 * mf[u(q0 + 12 * plane + p)] + a3 * mf[u(q0 + 18 * plane + p)]
                                         + a4 * mf[u(q0 + 24 * plane + p)] + a5 * mf[u(q0 + 30 * plane + p)])
            for r in range(4):
                sr = 6 * r * p_all
                for q in range(4):
                    a0, a1, a2, a3, a4, a5 = at[q, 0], at[q, 1], at[q, 2], at[q, 3], at[q, 4], at[q, 5]
                    dst = (4 * r + q) * p_all
                    for p in range(p_all):
                        o[u(dst + p)] = (a0 * s[u(sr + p)] + a1 * s[u(sr + p_all + p)]
                                         + a2 * s[u(sr + 2 * p_all + p)] + a3 * s[u(sr + 3 * p_all + p)]
                                         + a4 * s[u(sr + 4 * p_all + p)] + a5 * s[u(sr + 5 * p_all + p)])
            for ty in range(ty0, ty1):
                pb = (ty - ty0) * tw
                for r in range(4):
                    oy = 4 * ty + r
                    if oy >= oh:
                        break
                    yrow = (mo * oh + oy) * ow
                    orow = 4 * r * p_all + pb
                    for ox in range(ow):
                        val = o[u(orow + (ox & 3) * p_all + (ox >> 2))] + b
                        if has_res:
                            val = val + rf[u(yrow + ox)]
                        val = lo if val < lo else val
                        yf[u(yrow + ox)] = hi if val > hi else val
