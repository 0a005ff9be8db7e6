"""Kernels of the channel-blocked layout (NCHWc) the level-3 rewrite `ep_core.rewrites_layout`
puts convolution chains in: `ReorderInput` / `ReorderOutput` at the chain's edges and
`NchwcConv` (1x1 or 3x3 depthwise, bias, residual and a clamp in the tile store) inside.

A blocked value is (N, C/16, H, W, 16) float32, channels past the real ones zero (every op of a
chain keeps them zero: zero weights and bias, activations with f(0) = 0). The compiled loops are
`ep_cpu.conv_nchwc`'s; threads split positions (pointwise), output rows (depthwise) or channel
blocks (reorders) through `native_call.run_ranges`.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_cpu import conv_nchwc, jit_tier, native_call
from ep_cpu.conv_nchwc import BLOCK, EPILOGUE, EPILOGUE_RES, TILE
from ep_cpu.gemm import _get_pool, get_num_threads
from ep_cpu.registry import kernel

DOMAIN = "com.ep_core"


def _f32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, np.float32)


def _workers(units: int, macs: int) -> int:
    return native_call.workers_for(get_num_threads(), units, macs)


def _compiled() -> bool:
    """The compiled loops are ready (`jit_tier`: compiled on a background thread on a machine
    whose disk cache lacks them, ~1.8 s; meanwhile the numpy forms below run)."""
    return jit_tier.ready("conv_nchwc", conv_nchwc.compile_kernels)


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
        args = native_call.pack(native_call.address(x), native_call.address(y), c, cb, positions, 1)
        native_call.run_ranges(conv_nchwc.reorder(), args, n * cb, 1,
                               _workers(n * cb, y.size // 8), True, _get_pool)
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
                                positions, 0)
        native_call.run_ranges(conv_nchwc.reorder(), args, n * cb, 1,
                               _workers(n * cb, x.size // 8), True, _get_pool)
        return y


@kernel("NchwcConv", domain=DOMAIN)
class NchwcConv(Kernel):
    """y = clamp(conv(x, W) + B + Z) on blocked x, Z, y: `kind` "pointwise" (1x1, stride 1, no
    padding) or "depthwise" (3x3, one channel a group, padding 1, `strides` 1 or 2). W (the
    ONNX weight, (M, C, kh, kw)) and B are session constants, packed here once; `activation`
    / `activation_params` as FusedConv's (Relu or a Clip that keeps 0)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.kind = self.attr("kind")
        self.stride = int((self.attr("strides") or [1, 1])[0])
        w = ctx.constant_input(1)
        b = ctx.constant_input(2) if len(node.inputs) > 2 and node.inputs[2] else None
        if w is None or (len(node.inputs) > 2 and node.inputs[2] and b is None):
            raise ValueError(f"NchwcConv '{node.name}': W and B must be session constants")
        self.lo, self.hi = clamp_of(self.attr("activation"), self.attr("activation_params"))
        m = w.shape[0]
        self.mb = -(-m // BLOCK)
        self.weight = np.asarray(w, np.float32)   # (the numpy form's, until compiled)
        if self.kind == "pointwise":
            self.w, self.kb, _ = conv_nchwc.pack_pointwise(np.asarray(w, np.float32))
        else:
            self.w = conv_nchwc.pack_depthwise(np.asarray(w, np.float32))
        self.bias = conv_nchwc.padded(b, self.mb * BLOCK)
        self.macs_per_position = (self.kb * BLOCK if self.kind == "pointwise" else 9) * self.mb * BLOCK

    def compute(self, x, w, b=None, z=None):
        x = _f32(x)
        n, cb, h, wd = x.shape[:4]
        if self.kind == "pointwise":
            oh, ow = h, wd
        else:
            oh, ow = (h - 1) // self.stride + 1, (wd - 1) // self.stride + 1
        y = np.empty((n, self.mb, oh, ow, BLOCK), np.float32)
        res_at = 0
        if z is not None:
            z = _f32(z)
            if z.shape != y.shape:
                raise ValueError(f"NchwcConv '{self.node.name}': residual of shape {z.shape}, "
                                 f"expected {y.shape}")
            res_at = native_call.address(z)
        if not _compiled():
            return self._numpy(x, z, y.shape)
        x_at, y_at = native_call.address(x), native_call.address(y)
        w_at, b_at = native_call.address(self.w), native_call.address(self.bias)
        macs = n * oh * ow * self.macs_per_position // (1 if self.kind == "pointwise" else BLOCK)
        if self.kind == "pointwise":
            positions = h * wd
            groups = -(-self.mb // 2)
            # Threads split the output groups where the weights outweigh the image (a small
            # map: each thread then reads only its share of them), else the positions
            by_groups = self.w.size > n * x.shape[1] * positions * BLOCK
            workers = _workers(groups if by_groups else -(-n * positions // TILE), macs)
            chunk = positions if by_groups or workers <= 1 else \
                max(TILE, -(-positions // (2 * workers) // TILE) * TILE)
            args = native_call.pack(x_at, y_at, res_at, w_at, b_at, positions, self.kb, self.mb,
                                    self.lo, self.hi, EPILOGUE_RES if z is not None else EPILOGUE,
                                    chunk)
            native_call.run_ranges(conv_nchwc.pointwise(), args, groups, n * -(-positions // chunk),
                                   workers, by_groups, _get_pool)
            return y
        args = native_call.pack(x_at, y_at, res_at, w_at, b_at, cb, h, wd, oh, ow, self.stride,
                                self.lo, self.hi, z is not None, n)
        units = n * cb * oh
        native_call.run_ranges(conv_nchwc.depthwise(), args, units, 1, _workers(units, macs), True,
                               _get_pool)
        return y

    def _numpy(self, x: np.ndarray, z: np.ndarray | None, y_shape: tuple) -> np.ndarray:
        """The same conv in numpy, on the blocked arrays."""
        n, mb, oh, ow = y_shape[:4]
        m = self.weight.shape[0]
        bias = self.bias.reshape(1, mb, 1, 1, BLOCK)
        if self.kind == "pointwise":
            xs = plain_numpy(x, x.shape[1] * BLOCK)   # (N, CB*16, H, W)
            c = self.weight.shape[1]
            y = np.einsum("mc,nchw->nmhw", self.weight.reshape(m, c), xs[:, :c])
            y = blocked_numpy(y) + bias
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
        return np.ascontiguousarray(np.clip(y, self.lo, self.hi), dtype=np.float32)


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
