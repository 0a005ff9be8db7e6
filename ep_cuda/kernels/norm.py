"""Normalizations (kernels_cu/norm.cu): LayerNormalization, BatchNormalization (inference),
InstanceNormalization, GroupNormalization, LRN. Attributes are parsed once into the
provider-neutral `ep_core.op_attributes` objects shared with the CPU provider."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ep_core.op_attributes import LRNAttributes, NormAttributes

from .. import loader
from ..launch import (FLOATS, MAX_GRID, CudaKernel, contiguous, copy_into, ctype, empty, f32, i64,
                      launch, pow2_block)
from ..registry import kernel
from .elementwise import cast

loader.declare("norm", [f"{k}<{ctype(t)}>" for k in ("layernorm_k", "skip_layernorm_k", "groupnorm_k",
                                                    "batchnorm_k",
                                                    "lrn_k") for t in FLOATS])


def _prod(v: Sequence[int]) -> int:
    return int(np.prod(v, dtype=np.int64))


def fp32_param(p: Any, shape: Sequence[int]) -> Any:
    """An affine parameter as a contiguous float32 array of `shape` (broadcast if needed)."""
    p = cast(p, np.float32)
    if tuple(p.shape) == tuple(shape) and p.flags.c_contiguous:
        return p
    return copy_into(empty(shape, np.float32), p)


def _row_launch(expr: str, rows: int, L: int, args: tuple) -> None:
    launch("norm", expr, rows, args, block=pow2_block(L, 32, 256), grid_size=min(rows, MAX_GRID))


@kernel("LayerNormalization", since=17, types={"T": FLOATS})
class LayerNormalization(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    @classmethod
    def supports(cls, node) -> bool:
        return int(node.attrs.get("stash_type", 1)) == 1  # statistics in float32

    def forward(self, x, scale, bias=None):
        nd = x.ndim
        axis = self.norm.axis_for(nd)
        rows, L = _prod(x.shape[:axis]), _prod(x.shape[axis:])
        y = empty(x.shape, x.dtype)
        stat_shape = list(x.shape[:axis]) + [1] * (nd - axis)
        mean, inv = empty(stat_shape, np.float32), empty(stat_shape, np.float32)
        if rows > 0:
            x = contiguous(x)
            s = fp32_param(scale, x.shape[axis:])
            b = fp32_param(bias, x.shape[axis:]) if bias is not None else None
            _row_launch(f"layernorm_k<{ctype(x.dtype)}>", rows, L,
                        (x, s, b, y, mean, inv, i64(rows), i64(L), f32(self.norm.epsilon)))
        n_out = len(self.node.outputs)
        return (y, mean, inv)[:max(n_out, 1)]


def group_norm(x: Any, scale: Any, bias: Any, groups: int, per_channel: bool, eps: float) -> Any:
    """Normalize each (n, group) block of contiguous (N, C, ...) x; affine per channel or group."""
    y = empty(x.shape, x.dtype)
    if y.size == 0:
        return y
    x = contiguous(x)
    N, C = x.shape[0], x.shape[1]
    if C % groups:
        raise ValueError(f"channels {C} not divisible by num_groups {groups}")
    spatial = _prod(x.shape[2:])
    cpg = C // groups
    n_par = C if per_channel else groups
    s, b = fp32_param(scale, (n_par,)), fp32_param(bias, (n_par,))
    rows, L = N * groups, cpg * spatial
    _row_launch(f"groupnorm_k<{ctype(x.dtype)}>", rows, L,
                (x, s, b, y, i64(rows), i64(L), i64(groups), i64(cpg), i64(spatial),
                 np.int32(per_channel), f32(eps)))
    return y


@kernel("InstanceNormalization", since=6, types={"T": FLOATS})
class InstanceNormalization(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def forward(self, x, scale, bias):
        return group_norm(x, scale, bias, x.shape[1], True, self.norm.epsilon)


@kernel("GroupNormalization", since=18, types={"T": FLOATS})
class GroupNormalization(CudaKernel):
    """Opset 18: scale/bias per group; opset 21: per channel."""

    @classmethod
    def supports(cls, node) -> bool:
        return int(node.attrs.get("stash_type", 1)) == 1

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def forward(self, x, scale, bias):
        return group_norm(x, scale, bias, self.norm.num_groups, self.node.since_version >= 21,
                          self.norm.epsilon)


@kernel("BatchNormalization", since=9, types={"T": FLOATS, "T1": FLOATS, "T2": FLOATS})
class BatchNormalization(CudaKernel):
    """Inference form only: training_mode=1 or extra outputs are left to the CPU provider."""

    @classmethod
    def supports(cls, node) -> bool:
        outputs = [o for o in node.outputs if o]
        return int(node.attrs.get("training_mode", 0)) == 0 and len(outputs) == 1

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def forward(self, x, scale, bias, mean, var):
        y = empty(x.shape, x.dtype)
        if y.size == 0:
            return y
        x = contiguous(x)
        C = x.shape[1] if x.ndim > 1 else 1
        inner = _prod(x.shape[2:])
        p = [fp32_param(v, (C,)) for v in (scale, bias, mean, var)]
        launch("norm", f"batchnorm_k<{ctype(x.dtype)}>", y.size,
               (x, *p, y, i64(y.size), i64(C), i64(inner), f32(self.norm.epsilon)))
        return y


@kernel("LRN", since=1, types={"T": FLOATS})
class LRN(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.lrn = LRNAttributes.from_node(node)

    def forward(self, x):
        y = empty(x.shape, x.dtype)
        if y.size == 0:
            return y
        x = contiguous(x)
        C, inner = x.shape[1], _prod(x.shape[2:])
        launch("norm", f"lrn_k<{ctype(x.dtype)}>", y.size,
               (x, y, i64(y.size), i64(C), i64(inner), i64(self.lrn.size),
                f32(self.lrn.alpha), f32(self.lrn.beta), f32(self.lrn.bias)))
        return y
