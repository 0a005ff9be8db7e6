"""2-D convolution as an implicit GEMM over the compiled microkernel of `ep_cpu.microkernel`.

OpenBLAS's SGEMM reaches about half of this CPU's peak (Zen 5, AVX-512: ~120 GFLOP/s a core,
where onnxruntime's MLAS reaches ~230), and im2col writes a matrix nine times the input before
the GEMM reads it. Here a convolution's weights (M, C*KH*KW) are packed once into row panels,
and the microkernel reads B straight from the zero-padded image: output (oy, ox) is position
oy*wq + ox of the image's grid and its input under tap k is at that position plus a fixed
offset rows[k], so NR consecutive positions are NR consecutive floats (no im2col, no packing).
Strided convs first split the image into stride-phase planes, in which every tap is again such
a shift. The wq - ow positions past each output row are computed and dropped in the callback,
block by block, while they are in cache.
Whole tiles store straight into the output with bias, residual and a clamp (Relu, Clip).

Threads split the column tiles, or the row panels when there are few positions (7x7 maps), on
numba's TBB threads, or on `ep_cpu.gemm`'s pool where TBB is not loadable
(`native_call.run_ranges`). Compiled code is cached on disk.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ep_cpu import microkernel as mk
from ep_cpu import native_call
from ep_cpu.microkernel import NR, tail_rows
from ep_cpu.tile_shapes import block_tiles, panel_rows

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None


def available(threads: int = 1) -> bool:
    """Where the tiles beat im2col + BLAS at `threads` intra-op threads
    (`microkernel.convs_beat_blas`)."""
    return mk.convs_beat_blas(threads)


def compile_kernels() -> None:
    """Compile (or load from the disk cache) what an implicit conv runs: the microkernel's conv
    driver, the stride-phase plane fill and the parallel runner (an `ep_cpu.jit_tier` build)."""
    mk.conv_range()
    _fill_range()
    native_call.compile_runner()
    x = np.zeros((1, 2, 6, 6), np.float32)
    for s in (1, 2):
        out = (-(-6 // s),) * 2
        conv2d(x, pack_weight(np.ones((4, 2, 3, 3), np.float32)), 4, (3, 3), (s, s), (1, 1),
               (1, 1), (1, 1), out, None, None, None, 1, None)


def pack_weight(w: np.ndarray) -> np.ndarray:
    """(M, C, KH, KW) float32 weights -> row panels (ceil(M/mr), C*KH*KW, mr), mr =
    `tile_shapes.panel_rows`; the last panel's rows as (C*KH*KW, microkernel.tail_rows) at the
    start of its slot. Padded rows are zero."""
    m, k = w.shape[0], math.prod(w.shape[1:])
    mr = panel_rows(m)
    mb = -(-m // mr)
    wm = np.ascontiguousarray(w.reshape(m, k), dtype=np.float32)
    out = np.zeros((mb, k, mr), dtype=np.float32)
    full = m // mr
    out[:full] = wm[:full * mr].reshape(full, mr, k).transpose(0, 2, 1)
    if full < mb:
        left = m - full * mr
        mt = tail_rows(left, mr)
        tail = out[full].reshape(-1)[:k * mt].reshape(k, mt)
        tail[:, :left] = wm[full * mr:].T
    return out


# 1x1 convs over maps of up to this many positions (not a multiple of 16) copy their input to
# 64-byte aligned channel rows: 0-9% faster on MobileNetV2's 7x7 and 14x14 maps (1 thread)
ALIGN_MAX_POSITIONS = 1024

# Plane values per thread for the fill of a strided or padded conv's input: 16->32 3x3/2 on
# 160x160 684 -> 428 us at 2 threads (fill 131 -> 67 us, and each thread's planes then in its own
# cache), 64 channels on 56x56 1050 -> 978; YOLOv8n 2 threads 18.8 -> 18.2 ms, MobileNetV2 8.4 -> 8.2
FILL_SPLIT_MIN_FLOATS = 1 << 16

# Panels per thread hand-off: fewer and one thread runs all (a hand-off to the Python pool costs
# ~20-60 us; to numba's TBB threads ~2 us, so two panels a thread pay there: MobileNetV2's
# 384->64 1x1 conv on 14x14, 7 tiles, 174 -> 117 us at 2 threads)
PAR_MIN_PANELS = 4
PAR_MIN_PANELS_TBB = 2


def _min_panels() -> int:
    return min(PAR_MIN_PANELS, PAR_MIN_PANELS_TBB) if native_call.parallel_ok() else PAR_MIN_PANELS


def _split_by_columns(tiles: int, row_panels: int) -> bool:
    """Threads take ranges of column tiles, or of row panels when the map has few positions."""
    return tiles >= 2 * PAR_MIN_PANELS or tiles >= row_panels


class PhaseLayout(NamedTuple):
    hq: int                  # phase plane rows, columns
    wq: int
    tiles: int               # NR-position tiles of the output grid (oh rows of wq)
    ldc: int                 # output grid length per channel (tiles * NR)
    rows: np.ndarray         # (C*KH*KW,) offset of each weight row's input in the planes
    planes_size: int         # C * sh*sw * hq*wq
    length: int              # + room for the last tile's reads
    phases: tuple            # (a, b, t0, t1, u0, u1, r0, c0): phase (a, b) rows [t0, t1) and
                             # columns [u0, u1) hold input rows r0::sh, columns c0::sw


@functools.lru_cache(maxsize=1024)
def phase_layout(c: int, h: int, w: int, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int,
            b0: int, b1: int, e0: int, e1: int, oh: int, ow: int) -> PhaseLayout:
    """The stride-phase planes of a padded (C, H, W) image and the tap offsets into them
    (computed once per geometry)."""
    hp, wp = h + b0 + e0, w + b1 + e1
    # row a + t*sh of the padded image is row t of phase a: in its phase a tap is again a
    # shift by whole rows/columns, so every conv is a stride-1 product over (channel, phase)
    hq, wq = -(-hp // sh), -(-wp // sw)
    plane = hq * wq
    taps_y, taps_x = np.arange(kh) * dh, np.arange(kw) * dw
    rows = ((np.arange(c)[:, None, None] * (sh * sw) + (taps_y % sh)[None, :, None] * sw
             + (taps_x % sw)[None, None, :]) * plane
            + (taps_y // sh)[None, :, None] * wq + (taps_x // sw)[None, None, :]).reshape(-1)
    rows = rows.astype(np.int64)
    rows.flags.writeable = False
    tiles = -(-(oh * wq) // NR)
    ldc = tiles * NR
    phases = []
    for a in range(sh):
        t0, t1 = max(0, -(-(b0 - a) // sh)), min(hq, -(-(h + b0 - a) // sh))
        for b in range(sw):
            u0, u1 = max(0, -(-(b1 - b) // sw)), min(wq, -(-(w + b1 - b) // sw))
            t1_, u1_ = max(t0, t1), max(u0, u1)
            phases.append((a, b, t0, t1_, u0, u1_, a + t0 * sh - b0, b + u0 * sw - b1))
    planes_size = c * sh * sw * plane
    return PhaseLayout(hq, wq, tiles, ldc, rows, planes_size, max(planes_size, ldc + int(rows.max())),
                   tuple(phases))


@functools.lru_cache(maxsize=256)
def _tile_rows(c: int, stride: int = NR) -> np.ndarray:
    """Row offsets of a (C, stride) buffer: one tile's columns, or a small map's channels."""
    rows = np.arange(c, dtype=np.int64) * stride
    rows.flags.writeable = False
    return rows


def fill_planes(x: np.ndarray, lay: PhaseLayout, sh: int, sw: int, pad_value: float,
                workers: int = 1, pool=None) -> np.ndarray:
    """(N, lay.length) float32: each image's stride-phase planes, `pad_value` in the padding,
    zeros past the planes (only dropped positions read there: no stray NaN or denormals).
    `workers` > 1: the channels split between threads (`native_call.run_ranges`)."""
    n, c = x.shape[:2]
    xq = np.empty((n, lay.length), dtype=np.float32)
    xq[:, lay.planes_size:] = 0
    if numba is not None and sw in (1, 2):
        _, _, t0, _, u0, _, r0, c0 = lay.phases[0]   # phase (0, 0): the leading pads from it
        x = np.ascontiguousarray(x, dtype=np.float32)
        b0, b1 = t0 * sh - r0, u0 * sw - c0
        if workers > 1:
            args = native_call.pack(native_call.address(x), native_call.address(xq), *x.shape,
                                    sh, sw, lay.hq, lay.wq, b0, b1, pad_value, lay.length)
            native_call.run_ranges(_fill_range(), args, c, 1, workers, True, pool)
        else:
            _fill_planes(x, xq.reshape(-1), sh, sw, lay.hq, lay.wq, b0, b1,
                         np.float32(pad_value), lay.length, 0, c)
        return xq
    planes = xq[:, :lay.planes_size].reshape(n, c, sh, sw, lay.hq, lay.wq)
    for a, b, t0, t1, u0, u1, r0, c0 in lay.phases:
        ph = planes[:, :, a, b]
        ph[:, :, :t0] = pad_value
        ph[:, :, t1:] = pad_value
        ph[:, :, t0:t1, :u0] = pad_value
        ph[:, :, t0:t1, u1:] = pad_value
        ph[:, :, t0:t1, u0:u1] = x[:, :, r0::sh, c0::sw][:, :, :t1 - t0, :u1 - u0]
    return xq


if numba is not None:
    from ep_cpu.native_call import f32_at, f64_at

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def _fill_planes(x, out, sh, sw, hq, wq, b0, b1, pad, length, c0, c1):  # pragma: no cover - compiled
        # x (N, C, H, W) -> out, channels [c0, c1): per image `length` values, per channel
        # sh*sw planes of hq x wq;
        # plane (a, b) row t, column u = padded row a + t*sh, column b + u*sw (b0, b1 leading
        # pads). Each input row is read once: with sw = 2 its even and odd columns go to the
        # two column phases in one loop, which LLVM vectorizes with shuffles (numpy's strided
        # copies: YOLOv8's 3x320x320 stem 91 -> 38 us).
        n, c, h, w = x.shape
        u64 = np.uint64
        plane = hq * wq
        chan = sh * sw * plane
        for i in range(n):
            for ch in range(c0, c1):
                base = i * length + ch * chan
                for q in range(chan):          # the padding first (memset speed)
                    out[u64(base + q)] = pad
                src = x[i, ch]
                for r in range(h):
                    rr = r + b0
                    a, t = rr % sh, rr // sh
                    if t >= hq:
                        continue
                    row = src[r]
                    if sw == 1:
                        d = base + a * plane + t * wq + b1
                        for j in range(min(w, wq - b1)):
                            out[u64(d + j)] = row[j]
                        continue
                    # column 2v + e -> phase (e + b1) % 2, column v + (e + b1) // 2
                    d0 = base + (a * 2 + b1 % 2) * plane + t * wq + b1 // 2
                    d1 = base + (a * 2 + (1 + b1) % 2) * plane + t * wq + (1 + b1) // 2
                    lim0, lim1 = wq - b1 // 2, wq - (1 + b1) // 2
                    both = min(w // 2, lim0, lim1)
                    for v in range(both):
                        out[u64(d0 + v)] = row[u64(2 * v)]
                        out[u64(d1 + v)] = row[u64(2 * v + 1)]
                    for v in range(both, min((w + 1) // 2, lim0)):
                        out[u64(d0 + v)] = row[u64(2 * v)]
                    for v in range(both, min(w // 2, lim1)):
                        out[u64(d1 + v)] = row[u64(2 * v + 1)]

    def _fill_channels(args_at, j0, j1, i0, i1):  # pragma: no cover - compiled
        """_fill_planes over channels [j0, j1); FILL_ARGS packed."""
        a = numba.carray(f64_at(args_at), (14,))
        n, c, h, w = np.int64(a[2]), np.int64(a[3]), np.int64(a[4]), np.int64(a[5])
        length = np.int64(a[13])
        _fill_planes(numba.carray(f32_at(np.int64(a[0])), (n, c, h, w)),
                     numba.carray(f32_at(np.int64(a[1])), (n * length,)), np.int64(a[6]),
                     np.int64(a[7]), np.int64(a[8]), np.int64(a[9]), np.int64(a[10]),
                     np.int64(a[11]), np.float32(a[12]), length, j0, j1)


# packed arguments of the plane fill's callback, in this order
FILL_ARGS = ("x", "out", "n", "c", "h", "w", "sh", "sw", "hq", "wq", "b0", "b1", "pad", "length")


def _fill_range():
    """C callback (native_call.RANGE_SIG): the plane fill of channels [j0, j1)."""
    return native_call.callback(_fill_channels, len(FILL_ARGS))


def conv2d(x: np.ndarray, packed_w: np.ndarray, m: int, kernel_shape, strides, dilations,
           begin, end, out_shape, bias: np.ndarray | None, residual: np.ndarray | None,
           clamp: tuple[float, float] | None, threads: int, pool,
           activation: tuple[int, int] = (0, 0)) -> np.ndarray:
    """2-D convolution (group 1) of float32 x (N, C, H, W) with weights packed by `pack_weight`;
    returns (N, M, OH, OW) = clamp(conv + bias + residual). `pool(workers)` gives an executor.
    `activation` (callback address, kind): run on each tile as it is finished
    (`vector_math.tile_callback`: SiLU, Sigmoid, Gelu, Tanh), not as a pass over the output.
    A caller that runs the same shapes again keeps an `ImplicitConv` instead."""
    plan = ImplicitConv(packed_w, m, x.shape, kernel_shape, strides, dilations, begin, end,
                        out_shape, bias, residual is not None, clamp, threads, activation)
    return plan(x, residual, pool)


class ImplicitConv:
    """One conv's call for one input shape, bias, thread count and epilogue: the layout, the
    input's treatment, the thread split and the packed arguments (CONV_ARGS) decided once, so
    a run allocates its outputs, prepares the input and writes five addresses (all of it per
    call took ~11-13 us, against a few us of Python now; MobileNetV2 runs 52 convs)."""

    def __init__(self, packed_w: np.ndarray, m: int, x_shape: tuple, kernel_shape, strides,
                 dilations, begin, end, out_shape, bias: np.ndarray | None, has_res: bool,
                 clamp: tuple[float, float] | None, threads: int,
                 activation: tuple[int, int] = (0, 0)) -> None:
        n, c, h, w = (int(v) for v in x_shape)
        kh, kw = (int(v) for v in kernel_shape)
        oh, ow = (int(v) for v in out_shape)
        sh, sw = int(strides[0]), int(strides[1])
        dh, dw = int(dilations[0]), int(dilations[1])
        pads = [int(v) for v in (begin[0], begin[1], end[0], end[1])]
        self.x_shape, self.bias, self.threads, self.has_res = tuple(x_shape), bias, threads, has_res
        self.activation, self.clamp = tuple(activation), clamp
        # a strided 1x1 conv without padding reads a subsample of x (into planes)
        self.subsample = kh == kw == 1 and not any(pads) and (sh > 1 or sw > 1)
        if self.subsample:
            self.steps, h, w, sh, sw = (sh, sw), oh, ow, 1, 1
        lay = phase_layout(c, h, w, kh, kw, sh, sw, dh, dw, *pads, oh, ow)
        self.lay, self.sh, self.sw = lay, sh, sw
        # A 1x1 stride-1 conv without padding reads x itself (its planes are x): no copy of the
        # input, except the last tile's columns where they would be read past the end of x
        in_place = kh == kw == 1 and sh == sw == 1 and not any(pads) and not self.subsample
        # rows of h*w floats start off a 64-byte line, and every B load of the microkernel
        # straddles two: channels copied to rows of ldc floats where each row is read by many
        # output rows (64->384 on 14x14 75 -> 70 us; 960->160 on 7x7 118 -> 100 us before the
        # thin path took it); with fewer outputs than inputs the copy costs more than it saves
        # (1024->256 on 14x14 635 vs 579 us in place)
        self.align = in_place and (h * w) % 16 and h * w <= ALIGN_MAX_POSITIONS and m >= c
        self.in_place = in_place and not self.align
        tiles, grid_ldc = lay.tiles, lay.ldc
        # A 1x1 conv's output grid is its output (no padding columns): the output rows are
        # written in place, h*w apart, and a residual read in place, where the grid's rows of
        # whole tiles needed a copy of the residual into it and a crop of the output out of it
        # (128->512 on 28x28 with a residual: 870 -> 457 us at 2 threads, 1046 -> 913 at one;
        # ResNet-50 54.2 -> 51.9 ms at 2 threads, MobileNetV2 8.9 -> 8.6). The positions past the
        # whole tiles run as a tile of the last NR positions (`__call__`).
        self.direct = kh == kw == 1 and lay.wq == ow
        ldc = oh * ow if self.direct else grid_ldc
        self.full_tiles = (oh * ow) // NR if self.direct else tiles
        self.ldc, self.m, self.c, self.hw = ldc, m, c, h * w
        # the input's channel stride (the last tile's copy reads it)
        self.in_stride = grid_ldc if self.align else (h * w if self.in_place else lay.hq * lay.wq)
        rows = _tile_rows(c, grid_ldc) if self.align else lay.rows
        self.xq_len = c * grid_ldc if self.align else (c * h * w if self.in_place else lay.length)
        # the microkernel always adds a bias in its epilogue: zeros when there is none
        self._b = (np.ascontiguousarray(bias, dtype=np.float32).reshape(m) if bias is not None
                   else np.zeros(m, dtype=np.float32))
        lo, hi = (-math.inf, math.inf) if clamp is None else clamp
        self.wide = ldc != oh * ow
        self.res_in_place = not self.wide and lay.wq == ow
        self.y_shape, self.out_shape = (n, m * ldc), (n, m, oh, ow)
        row_panels = packed_w.shape[0]
        self.by_columns = _split_by_columns(self.full_tiles, row_panels)
        self.row_panels = row_panels
        # positions past the whole tiles (1x1 convs)
        self.rem = ldc - self.full_tiles * NR if self.direct else 0
        # threads for the work: a hand-off per panels' and multiply-adds' worth (`workers_for`)
        macs, per = n * m * c * kh * kw * oh * ow, _min_panels()
        self.workers = native_call.workers_for(
            threads, (self.full_tiles if self.by_columns else row_panels) // per, macs)
        # The last NR positions (a tile overlapping the whole one before it) run in the same
        # pass, after that tile, where one thread runs both: each thread runs its tiles in
        # order (an overlapping tile computed at the same time by another thread could read
        # that tile's finished sums as its partial ones between k blocks). Else they are one
        # more call after the others (`__call__`). Saves that call's ~5-15 us on 14x14 maps.
        self.overlap = int(bool(self.rem and self.full_tiles)
                           and (not self.by_columns
                                or native_call.last_range_holds_two(self.full_tiles + 1, self.workers)))
        self.last_workers = native_call.workers_for(threads, row_panels // per,
                                                    m * c * kh * kw * NR)
        # the planes' fill split by channels on numba's threads (each thread's share of a big
        # input written, and then read, from its own cache)
        self.fill_workers = (min(threads, c, n * lay.planes_size // FILL_SPLIT_MIN_FLOATS)
                             if native_call.parallel_ok() else 1)
        at = native_call.address

        def outputs(ldc):   # microkernel.CONV_ARGS from "ap"; per call: res (11), y (16), out (19)
            return (at(packed_w), packed_w.shape[0], packed_w.shape[2], m, ldc, at(self._b),
                    bias is not None, 0, has_res, lo, hi,
                    mk.EPILOGUE_RES if has_res else mk.EPILOGUE, 0, *activation, 0, oh, ow, lay.wq)

        self._keep = (packed_w, rows)   # addresses in the templates
        self.template = native_call.pack(0, self.xq_len, rows.ctypes.data, rows.shape[0],
                                         *outputs(ldc), 0, block_tiles(c * sh * sw))
        last_rows = _tile_rows(c)
        self._keep_last = last_rows
        self.last_template = native_call.pack(0, c * NR, last_rows.ctypes.data, c,
                                              *outputs(NR), 0, 1)

    def _input(self, x: np.ndarray, pool=None) -> np.ndarray:
        """(N, xq_len): x as the callback reads it (itself, aligned rows, or its planes)."""
        n, c = x.shape[:2]
        if self.subsample:
            oh, ow = self.out_shape[2:]
            return fill_planes(x[:, :, ::self.steps[0], ::self.steps[1]][:, :, :oh, :ow], self.lay,
                               1, 1, 0.0)
        if self.align:
            xq = np.empty((n, c, self.in_stride), dtype=np.float32)
            xq[:, :, self.hw:] = 0
            xq[:, :, :self.hw] = x.reshape(n, c, self.hw)
            return xq.reshape(n, c * self.in_stride)
        if self.in_place:
            return x.reshape(n, c * self.hw)
        return fill_planes(x, self.lay, self.sh, self.sw, 0.0, self.fill_workers, pool)

    def __call__(self, x: np.ndarray, residual: np.ndarray | None = None, pool=None) -> np.ndarray:
        """(N, M, OH, OW) = clamp(conv(x) + bias + residual); x float32 of `x_shape`, a residual
        exactly when the plan was made with `has_res`."""
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        n, m, ldc = x.shape[0], self.m, self.ldc
        xq = self._input(x, pool)
        y = np.empty(self.y_shape, dtype=np.float32)
        out = np.empty(self.out_shape, dtype=np.float32) if self.wide else None
        res = None
        if residual is not None:
            if (self.res_in_place and residual.shape == self.out_shape and residual.dtype == np.float32
                    and residual.flags.c_contiguous):
                res = residual.reshape(n, m * ldc)   # already the output grid's layout
            else:
                oh, ow, wq = self.out_shape[2], self.out_shape[3], self.lay.wq
                res = np.zeros((n, m, ldc), dtype=np.float32)
                res[:, :, :oh * wq].reshape(n, m, oh, wq)[..., :ow] = residual
                res = res.reshape(n, m * ldc)
        at = native_call.address
        fn = mk.conv_range()
        rem, overlap = self.rem, self.overlap
        for i in range(n):
            r_at, y_at = at(res[i] if res is not None else y[i]), at(y[i])
            out_at = at(out[i]) if out is not None else 0
            if self.full_tiles:
                args = self.template.copy()
                args[0], args[11], args[16], args[19] = at(xq[i]), r_at, y_at, out_at
                native_call.run_ranges(fn, args, self.full_tiles + overlap, self.row_panels,
                                       self.workers, self.by_columns, pool)
            if rem and self.full_tiles and not overlap:
                # the last NR positions as one more tile, read and written in place after the
                # others (threads split the columns: the tile it overlaps may be another's): its
                # columns computed again come out the same bits (the same sums in the same order)
                shift = ldc - NR
                args = self.template.copy()
                args[0], args[1] = at(xq[i]) + 4 * shift, self.xq_len - shift
                args[11], args[16], args[19] = r_at + 4 * shift, y_at + 4 * shift, 0
                native_call.run_ranges(fn, args, 1, self.row_panels, self.last_workers, False, pool)
            if rem and not self.full_tiles:
                # fewer positions than a tile: copies of the input, output and residual columns
                # as (C or M, NR)
                last = np.zeros((self.c, NR), dtype=np.float32)
                last[:, :rem] = xq[i][:self.c * self.in_stride].reshape(self.c, self.in_stride)[:, :rem]
                y_last = np.empty((m, NR), dtype=np.float32)
                res_last = y_last
                if res is not None:
                    res_last = np.zeros((m, NR), dtype=np.float32)
                    res_last[:, :rem] = res[i].reshape(m, ldc)
                args = self.last_template.copy()
                args[0], args[11], args[16], args[19] = at(last), at(res_last), at(y_last), 0
                native_call.run_ranges(fn, args, 1, self.row_panels, self.last_workers, False, pool)
                y[i].reshape(m, ldc)[:] = y_last[:, :rem]
        return out if out is not None else y.reshape(self.out_shape)
