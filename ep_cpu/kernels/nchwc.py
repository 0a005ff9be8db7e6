"""Kernels of the channel-blocked layout (NCHWc) the level-3 rewrite `ep_core.rewrites_layout`
puts convolution chains in: `ReorderInput` / `ReorderOutput` at the chain's edges and
`NchwcConv` (one-group convs of any window, or 3x3 depthwise; bias, residual and a clamp in the
tile store) inside.

A blocked value is (N, C/16, H, W, 16) float32, channels past the real ones zero (every op of a
chain keeps them zero: zero weights and bias, activations with f(0) = 0). The compiled loops are
`ep_cpu.conv_nchwc`'s; threads split output channel groups or positions (convs), output rows
(depthwise) or channel blocks (reorders) through `native_call.run_ranges`.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.rewrites_layout import STORED_ACTIVATIONS
from ep_cpu import conv_nchwc, jit_tier, microkernel, native_call, nchwc_layout, vector_math
from ep_cpu.conv_nchwc import BLOCK, EPILOGUE, EPILOGUE_RES, NO_ACT, TILE
from ep_cpu.gemm_epilogue import ACTIVATIONS
from ep_cpu.gemm import _get_pool, get_num_threads
from ep_cpu.registry import kernel

DOMAIN = "com.ep_core"


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, np.float32)


def _workers(units: int, macs: int) -> int:
    return native_call.workers_for(get_num_threads(), units, macs)


def _row_chunk(width: int, rows: int, workers: int) -> int:
    """Positions a work unit of a conv's output row holds: the whole row, or where there are
    fewer than two rows a thread, an equal share of it in whole tiles, the rows' shares making
    a multiple of `workers` units (a 14x14 map's 17 tiles as 9 + 8, where quarters of 5 tiles,
    two to a thread, ran 10 + 7: six 1x1 pairs 96 <-> 576 at 2 threads 1419 -> 1348 us)."""
    if workers > 1 and rows < 2 * workers:
        pieces = workers // math.gcd(rows, workers)   # (rows x pieces: a multiple of workers)
        tiles = -(-width // TILE)
        return TILE * max(1, -(-tiles // pieces))
    return width


def _compiled() -> bool:
    """The compiled loops are ready (`jit_tier`: compiled on a background thread on a machine
    whose disk cache lacks them, ~3 s; meanwhile the numpy forms below run). Once they are, the
    answer is kept (asking the families took 0.7 us a blocked op)."""
    global _loops_ready
    if not _loops_ready:
        _loops_ready = all([jit_tier.ready(name, build) for name, build in conv_nchwc.families()])
    return _loops_ready


_loops_ready = False


def blocked_numpy(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, ceil(C/16), H, W, 16), padding channels zero (numpy)."""
    n, c = x.shape[:2]
    cb = -(-c // BLOCK)
    xp = np.zeros((n, cb * BLOCK) + x.shape[2:], np.float32)
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape((n, cb, BLOCK) + x.shape[2:]).transpose(0, 1, 3, 4, 2))


def plain_numpy(x: np.ndarray, channels: int) -> np.ndarray:
    """(N, CB, H, W, 16) -> (N, channels, H, W) (numpy)."""
    n, cb, h, w = x.shape[:4]
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * BLOCK, h, w)[:, :channels])


@kernel("ReorderInput", domain=DOMAIN)
class ReorderInput(Kernel):
    """(N, C, H, W) -> (N, ceil(C/16), H, W, 16), the padding channels zero."""

    def compute(self, x):
        x = _f32(x)
        if not _compiled():
            return blocked_numpy(x)
        n, c = x.shape[:2]
        cb = -(-c // BLOCK)
        positions = math.prod(x.shape[2:])
        y = np.empty((n, cb) + x.shape[2:] + (BLOCK,), np.float32)
        args = native_call.pack(native_call.address(x), native_call.address(y), c, cb, positions, 1, n)
        units = n * cb * -(-positions // nchwc_layout.REORDER_SPAN)
        # (a copy: an element counts as a multiply-add for the threads it gets)
        native_call.run_ranges(nchwc_layout.reorder(), args, units, 1, _workers(units, y.size),
                               True, _get_pool)
        return y


@kernel("ReorderOutput", domain=DOMAIN)
class ReorderOutput(Kernel):
    """(N, CB, H, W, 16) -> (N, channels, H, W): the real channels back in NCHW."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.channels = int(self.attr("channels"))

    def compute(self, x):
        x = _f32(x)
        if not _compiled():
            return plain_numpy(x, self.channels)
        n, cb = x.shape[:2]
        positions = math.prod(x.shape[2:-1])
        y = np.empty((n, self.channels) + x.shape[2:-1], np.float32)
        args = native_call.pack(native_call.address(x), native_call.address(y), self.channels, cb,
                                positions, 0, n)
        units = n * cb * -(-positions // nchwc_layout.REORDER_SPAN)
        native_call.run_ranges(nchwc_layout.reorder(), args, units, 1, _workers(units, x.size),
                               True, _get_pool)
        return y


# output width from which a padded conv runs row by row (tiles of 12, 8, 7, 6, 4 positions)
# instead of over a grid of whole plane rows: Intel, 3x3 64 -> 64 on 20x20 110 against 102
# GMAC/s, and no cropping copy. On AMD Zen 4 (one 512-bit FMA a cycle: 8-position tiles keep it
# busy) every width: the grid's dropped columns cost more (ResNet-50's 3x3 convs, 1 thread:
# 14x14 2.37 -> 2.05 ms, 7x7 2.69 -> 2.13)
ROW_TILES_FROM = 1 if microkernel.amd() else 16


class _ConvPlan:
    """A blocked conv's decisions for one input shape (`NchwcConv._conv_plan`)."""
    subsample = False
    planes_shape: tuple | None = None     # the stride-phase planes, where the conv pads
    planes_args: np.ndarray | None = None
    planes_units = planes_workers = 0
    grid_shape: tuple | None = None       # the output as a grid of padded rows (cropped back)
    wq = 0
    groups = units = workers = 0
    by_groups = False
    args: np.ndarray | None = None        # CONV_ARGS but x, y and the residual


@kernel("NchwcConv", domain=DOMAIN)
class NchwcConv(Kernel):
    """y = clamp(conv(x, W) + B + Z) on blocked x, Z, y. `kind`: "conv" (one group, a
    kernel_shape x `pads` / `strides` window: 1x1 convs, 3x3 ones...), "plain" (the same on a
    plain (N, C, H, W) x of few channels: an image's stem) or "depthwise" (3x3, one
    channel a group, padding 1, `strides` 1 or 2). W (the ONNX weight, (M, C, kh, kw)) and B are
    session constants, packed here once; `activation` / `activation_params` as FusedConv's, one
    that keeps 0: Relu or a Clip (the store's clamp), Silu, Tanh or Gelu (`vector_math`'s, on
    each tile just stored)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kind = self.attr("kind")
        self.stride = int((self.attr("strides") or [1, 1])[0])
        self.pads = [int(p) for p in (self.attr("pads") or [0, 0, 0, 0])]
        w = ctx.constant_input(1)
        b = ctx.constant_input(2) if len(node.inputs) > 2 and node.inputs[2] else None
        if w is None or (len(node.inputs) > 2 and node.inputs[2] and b is None):
            raise ValueError(f"NchwcConv '{node.name}': W and B must be session constants")
        self.activation = self.attr("activation")
        if self.activation in STORED_ACTIVATIONS:
            self.lo, self.hi, self.act = -math.inf, math.inf, vector_math.KINDS[self.activation]
        else:
            self.lo, self.hi = clamp_of(self.activation, self.attr("activation_params"))
            self.act = NO_ACT
        m = w.shape[0]
        self.mb = -(-m // BLOCK)
        self.weight = np.asarray(w, np.float32)   # (the numpy forms')
        self.kh, self.kw = self.weight.shape[2:]
        if self.kind == "conv":
            self.w, self.kb, _ = conv_nchwc.pack_conv(self.weight)
        elif self.kind == "plain":
            self.w, self.kb = conv_nchwc.pack_plain(self.weight), -(-self.weight.shape[1] // BLOCK)
        else:
            self.w = conv_nchwc.pack_depthwise(self.weight)
        self.bias = conv_nchwc.padded(b, self.mb * BLOCK)
        # (the constants' addresses once: ~0.5 us each a call, a MobileNetV2 conv's Python
        # side took 8.6 us at 2 threads)
        self.w_at, self.bias_at = native_call.address(self.w), native_call.address(self.bias)
        # (hq, wq, stride planes) or (hp, wp) of a plain image -> (its offsets, their address)
        self.offsets: dict[tuple, tuple[np.ndarray, int]] = {}
        self.plans: dict[tuple, _ConvPlan] = {}   # (x shape, no residual, threads) -> its plan

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        if self.kind == "depthwise":
            return (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        t, l, b, r = self.pads[0], self.pads[1], self.pads[2], self.pads[3]
        return ((h + t + b - self.kh) // self.stride + 1, (w + l + r - self.kw) // self.stride + 1)

    def compute(self, x, w, b=None, z=None):
        x = _f32(x)
        n, cb, h, wd = x.shape[:4]
        oh, ow = self._out_size(h, wd)
        y = np.empty((n, self.mb, oh, ow, BLOCK), np.float32)
        if z is not None:
            z = _f32(z)
            if z.shape != y.shape:
                raise ValueError(f"NchwcConv '{self.node.name}': residual of shape {z.shape}, "
                                 f"expected {y.shape}")
        if not _compiled():
            return self._numpy(x, z, y.shape)
        res_at = 0 if z is None else native_call.address(z)
        if self.kind == "conv":
            return self._conv(x, y, z, res_at)
        if self.kind == "plain":
            return self._plain(x, y, z, res_at)
        macs = n * oh * ow * 9 * self.mb * BLOCK
        args = native_call.pack(native_call.address(x), native_call.address(y), res_at,
                                self.w_at, self.bias_at, cb, h,
                                wd, oh, ow, self.stride, self.lo, self.hi, z is not None, n, self.act)
        units = n * cb * oh
        native_call.run_ranges(conv_nchwc.depthwise(), args, units, 1, _workers(units, macs), True,
                               _get_pool)
        return y

    def _plain(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None, res_at: int) -> np.ndarray:
        """The conv of a plain (N, C, H, W) image (an image's stem: few channels) into blocked
        y: each k step one value of a position's window (`conv_nchwc.blocked_tile`'s `inner`
        1), read in place from the zero-padded image (a copy of a few channels)."""
        n, c, h, wd = x.shape
        _, mb, oh, ow = y.shape[:4]
        t, l, b, r = self.pads
        if t or l or b or r:
            xp = np.zeros((n, c, h + t + b, wd + l + r), np.float32)
            xp[:, :, t:t + h, l:l + wd] = x
            x = xp
        hp, wp = x.shape[2:]
        found = self.offsets.get((hp, wp))
        if found is None:
            offs = conv_nchwc.plain_offsets(c, self.kh, self.kw, hp, wp)
            found = self.offsets[(hp, wp)] = (offs, native_call.address(offs))
        offs, offs_at = found
        nk = offs.size
        rows = n * oh
        workers = _workers(rows * -(-ow // TILE), n * oh * ow * nk * mb * BLOCK)
        chunk = _row_chunk(ow, rows, workers)
        args = native_call.pack(
            native_call.address(x), native_call.address(y), res_at, self.w_at, self.bias_at,
            offs_at, nk, c, hp, wp, oh, ow,
            self.stride, mb, EPILOGUE_RES if z is not None else EPILOGUE, chunk, self.lo, self.hi,
            n, False, self.act, 1, self.stride)
        native_call.run_ranges(conv_nchwc.conv(), args, mb, rows * -(-ow // chunk), workers,
                               False, _get_pool)
        return y

    def _conv(self, x: np.ndarray, y: np.ndarray, z: np.ndarray | None, res_at: int) -> np.ndarray:
        key = (x.shape, z is None, get_num_threads())
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self._conv_plan(x.shape, y.shape, z is not None)
        if plan.subsample:   # a strided 1x1 conv is the 1x1 conv of the subsampled image
            x = np.ascontiguousarray(x[:, :, ::self.stride, ::self.stride])
        if plan.planes_shape is not None:
            planes = np.empty(plan.planes_shape, np.float32)
            args = plan.planes_args.copy()
            args[0], args[1] = native_call.address(x), native_call.address(planes)
            native_call.run_ranges(nchwc_layout.phase_planes(), args, plan.planes_units, 1,
                                   plan.planes_workers, True, _get_pool)
            x = planes
        out = y
        if plan.grid_shape is not None:
            out = np.empty(plan.grid_shape, np.float32)
            if z is not None:   # the residual in the grid's positions too
                zg = np.zeros(plan.grid_shape[:2] + (y.shape[2], plan.wq, BLOCK), np.float32)
                zg[:, :, :, :y.shape[3]] = z
                z = zg
                res_at = native_call.address(z)
        args = plan.args.copy()
        args[0], args[1], args[2] = native_call.address(x), native_call.address(out), res_at
        native_call.run_ranges(conv_nchwc.conv(), args, plan.groups, plan.units, plan.workers,
                               plan.by_groups, _get_pool)
        if out is not y:
            n, mb, oh, ow = y.shape[:4]
            y[...] = out.reshape(n, mb, oh, plan.wq, BLOCK)[:, :, :, :ow]
        return y

    def _conv_plan(self, x_shape: tuple, y_shape: tuple, residual: bool) -> _ConvPlan:
        """Everything `_conv` decides from the shapes, once per input shape, residual or not
        and thread count: the packed arguments but the three addresses of the call (a
        MobileNetV2 conv's Python side took 8.6 us a call at 2 threads)."""
        n, cb, h, wd = x_shape[:4]
        _, mb, oh, ow = y_shape[:4]
        s = self.stride
        plan = _ConvPlan()
        if self.kh == self.kw == 1 and not any(self.pads):
            plan.subsample = s > 1
            hq, wq, s_planes = oh, ow, 1
            grid = oh * ow
            x_size = n * cb * oh * ow * BLOCK
        else:
            # Every window at unit stride: the padded image's stride x stride phase planes
            hq, wq = nchwc_layout.phase_shape(h, wd, self.pads, s, self.kh, self.kw, oh, ow)
            plan.planes_shape = (n, cb, s, s, hq, wq, BLOCK)
            plan.planes_args = native_call.pack(0, 0, cb, h, wd, s, hq, wq, self.pads[0],
                                                self.pads[1], n)
            plan.planes_units = n * cb * s * s * hq
            x_size = math.prod(plan.planes_shape)
            plan.planes_workers = _workers(plan.planes_units, x_size)
            s_planes = s
            grid = oh * wq
        plan.wq = wq
        key = (hq, wq, s_planes)
        found = self.offsets.get(key)
        if found is None:
            offs = conv_nchwc.conv_offsets(self.kb, self.kh, self.kw, s_planes, hq, wq)
            found = self.offsets[key] = (offs, native_call.address(offs))
        offs, offs_at = found
        if wq == ow or ow >= ROW_TILES_FROM:
            # the output row by row (a plane row of wq positions each), or one row of all
            # positions where there is no padding
            hp, wp, oh_run, ow_run = (1, oh * ow, 1, oh * ow) if wq == ow else (s * s * hq, wq, oh, ow)
        else:
            # a small map: the output positions as a grid of oh rows of wq positions, rows after
            # rows (a tile may span rows; the grid columns past ow are computed and dropped): a
            # 7x7 map runs 12-position tiles instead of 7 a row (54 against 50 GMAC/s for 3x3
            # 512 -> 512, 81 against 71 for 256 on 14x14)
            plan.grid_shape = (n, mb, grid, BLOCK)
            hp, wp, oh_run, ow_run = 1, x_size // (n * cb * BLOCK), 1, grid
        plan.groups = -(-mb // 2)
        macs = n * oh * ow * offs.size * BLOCK * mb * BLOCK
        # Threads split the output groups where the weights outweigh the image (a small map:
        # each thread then reads only its share of them), else the output rows / positions
        plan.by_groups = self.w.size > x_size
        rows = n * oh_run
        plan.workers = _workers(plan.groups if plan.by_groups else max(rows, -(-n * oh * ow // TILE)),
                                macs)
        chunk = ow_run if plan.by_groups else _row_chunk(ow_run, rows, plan.workers)
        plan.units = rows * -(-ow_run // chunk)
        plan.args = native_call.pack(
            0, 0, 0, self.w_at, self.bias_at, offs_at, offs.size, cb, hp, wp, oh_run, ow_run, 1,
            mb, EPILOGUE_RES if residual else EPILOGUE, chunk, self.lo, self.hi, n,
            4 * self.w.size >= conv_nchwc.GROUPS_OUTER_BYTES, self.act, BLOCK, BLOCK)
        return plan

    def weights_last(self) -> np.ndarray:
        """(kh, kw, K, M) padded weights of the numpy form, made on its first use."""
        wl = self.__dict__.get("_weights_last")
        if wl is None:
            m, c = self.weight.shape[:2]
            wl = np.zeros((self.kh, self.kw, self.kb * BLOCK, self.mb * BLOCK), np.float32)
            wl[:, :, :c, :m] = self.weight.transpose(2, 3, 1, 0)
            self._weights_last = wl
        return wl

    def _numpy(self, x: np.ndarray, z: np.ndarray | None, y_shape: tuple) -> np.ndarray:
        """The same conv in numpy, on the blocked arrays."""
        n, mb, oh, ow = y_shape[:4]
        bias = self.bias.reshape(1, mb, 1, 1, BLOCK)
        if self.kind == "plain":   # (as the conv of the image blocked)
            c = x.shape[1]
            xc = np.zeros((n, self.kb * BLOCK) + x.shape[2:], np.float32)
            xc[:, :c] = x
            x = np.ascontiguousarray(xc.reshape(n, self.kb, BLOCK, *x.shape[2:]).transpose(0, 1, 3, 4, 2))
        if self.kind in ("conv", "plain"):
            # channels last (N, H, W, K): a tap's window of every position is a (positions, K)
            # matrix; one BLAS product a tap into (positions, M) sums, few copies (the first
            # runs of a cold process pay a page fault per fresh page)
            cb = x.shape[1]
            t, l, b, r = self.pads
            s = self.stride
            h, w = x.shape[2:4]
            xl = np.zeros((n, h + t + b, w + l + r, cb * BLOCK), np.float32)
            xl[:, t:t + h, l:l + w] = x.transpose(0, 2, 3, 1, 4).reshape(n, h, w, cb * BLOCK)
            wl = self.weights_last()
            y = None
            for ky in range(self.kh):
                for kx in range(self.kw):
                    tap = xl[:, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s]
                    part = np.matmul(tap.reshape(-1, cb * BLOCK), wl[ky, kx])
                    y = part if y is None else np.add(y, part, out=y)
            y = y.reshape(n, oh, ow, mb, BLOCK).transpose(0, 3, 1, 2, 4) + bias
        else:
            wt = self.w.reshape(-1, 9, BLOCK)   # (CB, 9, 16)
            s = self.stride
            xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
            y = np.broadcast_to(bias, y_shape).copy()
            for ky in range(3):
                for kx in range(3):
                    y += (xp[:, :, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s]
                          * wt[None, :, 3 * ky + kx, None, None, :])
        if z is not None:
            y += z
        y = np.ascontiguousarray(np.clip(y, self.lo, self.hi), dtype=np.float32)
        if self.act != NO_ACT:
            ACTIVATIONS[self.activation](y, {})
        return y


@kernel("NchwcMaxPool", domain=DOMAIN)
class NchwcMaxPool(Kernel):
    """MaxPool on a blocked value: `kernel_shape`, `strides`, `pads` (top, left, bottom, right)
    as MaxPool's (no dilations, floor rounding); the max over each window's positions inside the
    image."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kh, self.kw = (int(k) for k in self.attr("kernel_shape"))
        self.sh, self.sw = (int(s) for s in (self.attr("strides") or [1, 1]))
        self.pads = [int(p) for p in (self.attr("pads") or [0, 0, 0, 0])]

    def compute(self, x):
        x = _f32(x)
        n, cb, h, w = x.shape[:4]
        t, l, b, r = self.pads
        oh, ow = (h + t + b - self.kh) // self.sh + 1, (w + l + r - self.kw) // self.sw + 1
        if not _compiled():
            xp = np.full((n, cb, h + t + b, w + l + r, BLOCK), -np.inf, np.float32)
            xp[:, :, t:t + h, l:l + w] = x
            y = None
            for ky in range(self.kh):
                for kx in range(self.kw):
                    tap = xp[:, :, ky:ky + self.sh * (oh - 1) + 1:self.sh, kx:kx + self.sw * (ow - 1) + 1:self.sw]
                    y = tap.copy() if y is None else np.maximum(y, tap, out=y)
            return y
        y = np.empty((n, cb, oh, ow, BLOCK), np.float32)
        args = native_call.pack(native_call.address(x), native_call.address(y), cb, h, w, oh, ow,
                                self.kh, self.kw, self.sh, self.sw, t, l, n)
        units = n * cb * oh
        native_call.run_ranges(nchwc_layout.maxpool(), args, units, 1,
                               _workers(units, y.size * self.kh * self.kw // 4), True, _get_pool)
        return y


def clamp_of(activation: str | None, params) -> tuple[float, float]:
    """(lo, hi) of the activations a blocked conv takes: none, Relu, Clip (min, max)."""
    if activation is None:
        return -math.inf, math.inf
    if activation == "Relu":
        return 0.0, math.inf
    if activation == "Clip":
        lo, hi = (list(params or []) + [-math.inf, math.inf])[:2]
        return float(lo), float(hi)
    raise ValueError(f"NchwcConv: activation {activation} is not a clamp")


@kernel("NchwcGlobalAveragePool", domain=DOMAIN)
class NchwcGlobalAveragePool(Kernel):
    """GlobalAveragePool on a blocked value: (N, CB, H, W, 16) -> (N, CB, 1, 1, 16)."""

    def compute(self, x):
        x = _f32(x)
        n, cb, h, w = x.shape[:4]
        if not _compiled() or h * w == 0:
            return x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)
        y = np.empty((n, cb, 1, 1, BLOCK), np.float32)
        args = native_call.pack(native_call.address(x), native_call.address(y), n * cb, h * w)
        native_call.run_ranges(nchwc_layout.global_mean(), args, n * cb, 1,
                               _workers(n * cb, x.size), True, _get_pool)
        return y
