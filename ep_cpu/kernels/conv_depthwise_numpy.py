"""Depthwise convolutions in numpy, for what the compiled kernels (`ep_cpu.conv_depthwise`) do not
take: any rank (`depthwise_nd`), and 2-D where numba is missing or switched off
(`depthwise_2d`, `ep_cpu.kernels.conv.DW_COMPILED`). `ep_cpu.kernels.conv.conv_nd` calls them."""
from __future__ import annotations

import itertools

import numpy as np

from ep_cpu.gemm import ACTIVATIONS, _get_pool, get_num_threads
from ep_cpu.kernels.conv_geometry import pad_spatial, window_view


def depthwise_nd(x, w, group, strides, dilations, begin, end, out_shape):
    """Groups of one input channel, any rank: accumulate one strided window per kernel offset.

    Fallback for 3-D and up; 1-D/2-D use `depthwise_2d`."""
    n, c = x.shape[:2]
    m = w.shape[0]
    mult = m // group
    ks = list(w.shape[2:])
    xp = pad_spatial(x, begin, end)
    view = window_view(xp, ks, strides, dilations, out_shape)  # (N, C, *O, *K)
    y = np.zeros((n, c, mult) + tuple(out_shape), dtype=x.dtype)
    wr = w.reshape(c, mult, -1)
    bshape = (1, c, mult) + (1,) * len(ks)
    for k, idx in enumerate(itertools.product(*[range(kk) for kk in ks])):
        win = view[(Ellipsis,) + idx][:, :, None]  # (N, C, 1, *O)
        y += wr[:, :, k].reshape(bshape) * win
    return y.reshape(n, m, *out_shape)


# Channels per block: a block's padded input, accumulator and scratch stay in cache across the
# taps. Measured on MobileNetV2's shapes: 2 MB blocks beat 64 KB-1 MB ones (ufunc call overhead
# per block) and one whole-tensor block (memory traffic) alike.
DW_BLOCK_BYTES = 2 * 1024 * 1024
DW_PAR_MIN = 1 << 21   # fewer output elements x taps than this: one thread (hand-off ~50 us)
# Output row length (oh x padded width) below which the taps run channels-last. Measured on
# MobileNetV2's depthwise layers: rows of 56-840 values run 18-30% faster channels-last
# (14x14 and 7x7 maps: 11.5 vs 14.1 ms summed), rows of 3K+ values 20-80% slower.
DW_CHANNELS_LAST_MAX_ROW = 1024


def _phase_range(a: int, s: int, pb: int, size: int, length: int) -> tuple[int, int, int]:
    """Rows t in [t0, t1) of polyphase a (padded index a + t*s) that hold input data; input
    starts at row a + t0*s - pb."""
    t0 = max(0, -((a - pb) // s))          # ceil((pb - a) / s)
    t1 = min(length, -((a - pb - size) // s))  # ceil((size + pb - a) / s)
    return t0, max(t0, t1), a + t0 * s - pb


def depthwise_2d(x, w, strides, dilations, begin, end, out_shape, bias=None, residual=None,
                 activation=None, activation_params=None) -> np.ndarray:
    """Depthwise 2-D conv (N, C, H, W) with w (C, 1, kh, kw) and fused epilogue.

    Flat offsets: each channel's (polyphase component of the) padded image is one contiguous
    row of hq*wq values, and kernel tap (i, j) is the constant shift ri*wq + rj along it, so every
    tap is one multiply-add ufunc over long contiguous rows instead of a strided 2-D window.
    Stride s splits the padded image into s*s polyphase components (padded row a + t*s is row t
    of phase a), which turns the strided conv into stride-1 shifts. Columns past the output
    width are computed and dropped. Channels go in cache-sized blocks, spread over threads
    (numpy's ufuncs release the GIL). Small images run each block channels-last, so a tap is
    one long run of channels instead of many short image rows."""
    n, c, hin, win_ = x.shape
    kh, kw = w.shape[2:]
    sh, sw = strides
    dh, dw = dilations
    oh, ow = out_shape
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    # Per tap: its phase and its shift inside the phase.
    rows = {i: divmod(i * dh, sh) for i in range(kh)}   # i -> (ri, a)
    cols = {j: divmod(j * dw, sw) for j in range(kw)}   # j -> (rj, b)
    hq = oh + max(r for r, _ in rows.values())
    wq = ow + max(r for r, _ in cols.values())
    spare = 1 if wq > ow else 0            # one extra row absorbs the last shifted row's overrun
    plen = (hq + spare) * wq
    phases = sorted({(rows[i][1], cols[j][1]) for i, j in taps})
    pidx = {p: k for k, p in enumerate(phases)}
    length = oh * wq
    dt = x.dtype
    wr = w.reshape(c, kh * kw)
    y = np.empty((n, c, oh, ow), dtype=dt)
    b1 = None if bias is None else bias.astype(dt, copy=False).reshape(1, c, 1, 1)
    res = None if residual is None else np.broadcast_to(residual.astype(dt, copy=False), y.shape)
    isz = dt.itemsize
    per_ch = n * (len(phases) * plen + 2 * length) * isz
    nblk = -(-c * per_ch // DW_BLOCK_BYTES)
    threads = get_num_threads() if n * c * length * len(taps) >= DW_PAR_MIN else 1
    nblk = min(c, -(-nblk // threads) * threads)  # whole rounds: no thread idles on the last block
    blk = -(-c // nblk)
    blocks = [(c0, min(c, c0 + blk)) for c0 in range(0, c, blk)]
    ranges = {}
    for a, b in phases:
        ranges[a, b] = (_phase_range(a, sh, begin[0], hin, hq), _phase_range(b, sw, begin[1], win_, wq))

    # Short rows (small images) make numpy's per-row loop overhead dominate the NCHW taps;
    # channels-last keeps each tap one long contiguous run of a block's channels.
    channels_last = length < DW_CHANNELS_LAST_MAX_ROW

    def run(c0: int, c1: int) -> None:
        cc = c1 - c0
        if channels_last:
            ph2d = np.zeros((len(phases), n, hq + spare, wq, cc), dtype=dt)
        else:
            ph2d = np.zeros((len(phases), n, cc, hq + spare, wq), dtype=dt)
        for (a, b), k in pidx.items():
            (t0, t1, r0), (u0, u1, q0) = ranges[a, b]
            if t1 > t0 and u1 > u0:
                src = x[:, c0:c1, r0:r0 + (t1 - t0 - 1) * sh + 1:sh, q0:q0 + (u1 - u0 - 1) * sw + 1:sw]
                if channels_last:
                    ph2d[k, :, t0:t1, u0:u1] = src.transpose(0, 2, 3, 1)
                else:
                    ph2d[k, :, :, t0:t1, u0:u1] = src
        if channels_last:
            ph = ph2d.reshape(len(phases), n, plen, cc)
            acc = np.empty((n, length, cc), dtype=dt)
            wts = np.ascontiguousarray(wr[c0:c1].T)   # (taps, cc)
        else:
            ph = ph2d.reshape(len(phases), n, cc, plen)  # contiguous: a view
            acc = np.empty((n, cc, length), dtype=dt)
            wts = wr[c0:c1].T.reshape(len(taps), 1, cc, 1)
        tmp = np.empty_like(acc)
        for k, (i, j) in enumerate(taps):
            (ri, a), (rj, b) = rows[i], cols[j]
            off = ri * wq + rj
            if channels_last:
                src = ph[pidx[a, b], :, off:off + length]
            else:
                src = ph[pidx[a, b], :, :, off:off + length]
            if k == 0:
                np.multiply(src, wts[k], out=acc)
            else:
                np.multiply(src, wts[k], out=tmp)
                acc += tmp
        out = y[:, c0:c1]
        if channels_last:
            np.copyto(out, acc.reshape(n, oh, wq, cc)[:, :, :ow].transpose(0, 3, 1, 2))
        else:
            np.copyto(out, acc.reshape(n, cc, oh, wq)[:, :, :, :ow])
        if b1 is not None:
            out += b1[:, c0:c1]
        if res is not None:
            out += res[:, c0:c1]
        if activation is not None:
            ACTIVATIONS[activation](out, activation_params or {})

    threads = min(threads, len(blocks))
    if threads > 1:
        queue = iter(blocks)   # shared; next() on it is atomic under the GIL

        def drain() -> None:
            for c0, c1 in queue:
                run(c0, c1)
        futs = [_get_pool(threads - 1).submit(drain) for _ in range(threads - 1)]
        try:
            drain()   # the calling thread takes blocks too
        finally:
            for f in futs:
                f.result()
    else:
        for c0, c1 in blocks:
            run(c0, c1)
    return y
