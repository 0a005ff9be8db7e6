"""Convolutions: Conv, ConvInteger (ConvTranspose, DeformConv, CausalConvWithState: conv_variants.py).

Conv is im2col over a strided window view of the padded input followed by one GEMM
(`ep_cpu.gemm.gemm`), Winograd for 3x3 convs with enough channels, and the compiled depthwise
kernels for depthwise convs. The geometry helpers here are shared with the pooling, quantized and
variant conv kernels.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import ConvAttributes
from ep_cpu import (conv_depthwise, conv_implicit, conv_pointwise, conv_thin, depthwise_flat,
                    depthwise_padded, epilogue_jit, jit_tier, microkernel, vector_math, winograd)
from ep_cpu.blas_threads import single_threaded_blas
from ep_cpu.gemm import ACTIVATIONS, BLAS_PAR_MIN_MACS, TINY_MACS, _get_pool, gemm, get_num_threads
from ep_cpu.gemm_epilogue import bias_residual_activation
from ep_cpu.kernels import conv_depthwise_numpy
from ep_cpu.kernels.conv_geometry import (_im2col_index, _tap_offsets, compute_dtype,  # noqa: F401 - shared
                                         pad_spatial, window_view)
from ep_cpu.registry import kernel


# ----------------------------------------------------------------------------- conv core

def conv_nd(x: np.ndarray, w: np.ndarray, group: int, strides, dilations, begin, end, out_shape,
            bias: np.ndarray | None = None, residual: np.ndarray | None = None,
            activation: str | None = None, activation_params: dict | None = None) -> np.ndarray:
    """N-D grouped convolution of float arrays (same dtype); returns (N, M, *out_shape).

    `act(conv + bias + residual)`: bias, residual (shaped like the output) and the activation
    (a name from `ep_cpu.gemm.ACTIVATIONS`) run in the GEMM epilogue where a GEMM is used.
    """
    n, c = x.shape[:2]
    m = w.shape[0]
    ks = list(w.shape[2:])
    nd = len(ks)
    kprod = math.prod(ks)
    oprod = math.prod(out_shape)
    cg, mg = c // group, m // group
    dt = x.dtype
    if oprod == 0 or n == 0:
        return np.zeros((n, m, *out_shape), dtype=dt)
    if group > 1 and cg == 1 and kprod > 1 and nd <= 2:
        if nd == 1:  # 1-D as a one-row image
            x, w = x[:, :, None], w[:, :, None]
            strides, dilations = [1, *strides], [1, *dilations]
            begin, end = [0, *begin], [0, *end]
        if mg > 1:  # channel multiplier: output channel o reads input channel o // mg
            x = np.repeat(x, mg, axis=1)
        res = residual
        if res is not None and nd == 1:
            res = np.broadcast_to(res, (n, m, *out_shape)).reshape(n, m, 1, *out_shape)
        o2 = [1, *out_shape] if nd == 1 else out_shape
        if (DW_COMPILED and conv_depthwise.AVAILABLE
                and jit_tier.ready("depthwise", conv_depthwise.compile_kernels)):
            y = _depthwise_compiled(x, w, strides, dilations, begin, o2, bias, res, activation,
                                    activation_params)
            return y.reshape(n, m, *out_shape)
        y = conv_depthwise_numpy.depthwise_2d(x, w, strides, dilations, begin, end, [1, *out_shape] if nd == 1 else out_shape,
                          bias, res, activation, activation_params)
        return y.reshape(n, m, *out_shape)
    if group > 1 and cg == 1 and kprod > 1:
        y = conv_depthwise_numpy.depthwise_nd(x, w, group, strides, dilations, begin, end, out_shape)
        if bias is not None:
            y += bias.astype(dt, copy=False).reshape((1, m) + (1,) * nd)
        if residual is not None:
            y += residual.astype(dt, copy=False)
        if activation is not None:
            ACTIVATIONS[activation](y, activation_params or {})
        return y
    if kprod == 1 and not any(begin) and not any(end):
        # 1x1 conv: the window view is a strided slice of the input itself.
        sl = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, strides))
        cols = x[(slice(None), slice(None)) + sl].reshape(n, group, cg, oprod)
    elif n == 1 and c * kprod * oprod <= SMALL_IM2COL:
        # Small input: one gather with cached indices (padding reads a zero appended to x)
        # instead of pad + strided window view + transposing copy (~10 us of calls per conv).
        idx = _im2col_index(tuple(x.shape[1:]), tuple(ks), tuple(strides), tuple(dilations),
                            tuple(begin), tuple(out_shape))
        flat = np.concatenate((x.reshape(-1), np.zeros(1, dtype=dt)))
        cols = flat.take(idx).reshape(1, group, cg * kprod, oprod)
    else:
        xp = pad_spatial(x, begin, end)
        view = window_view(xp, ks, strides, dilations, out_shape)  # (N, C, *O, *K)
        perm = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
        cols = view.transpose(perm).reshape(n, group, cg * kprod, oprod)
    w2 = w.reshape(group, mg, cg * kprod)
    # Bias rides in the GEMM epilogue as an (M, 1) column.
    bcol = None if bias is None else bias.astype(dt, copy=False).reshape(group, mg, 1)
    res = None if residual is None else np.broadcast_to(residual.astype(dt, copy=False), (n, m, *out_shape))
    epi = dict(activation=activation, activation_params=activation_params)
    if group == 1 and n > 1:
        # One GEMM for the whole batch: columns of all images side by side.
        big = cols[:, 0].transpose(1, 0, 2).reshape(cg * kprod, n * oprod)
        r2 = None if res is None else res.reshape(n, m, oprod).transpose(1, 0, 2).reshape(m, n * oprod)
        y = gemm(w2[0], big, None if bcol is None else bcol[0], residual=r2, **epi)
        y = y.reshape(m, n, oprod).transpose(1, 0, 2)
    elif group == 1 and m * oprod * cg * kprod < SMALL_CONV_MACS:
        # A small conv (streaming audio models, late layers of small inputs): one BLAS call and
        # the epilogue in place; gemm's set-up would cost more than the product. One BLAS
        # thread, as gemm runs products of this size (threaded OpenBLAS gains nothing here).
        if m * oprod * cg * kprod >= TINY_MACS:
            with single_threaded_blas():
                y = np.matmul(w2[0], cols[0, 0])
        else:
            y = np.matmul(w2[0], cols[0, 0])
        bias_residual_activation(y, None if bcol is None else bcol[0],
                                 None if res is None else res.reshape(m, oprod), activation,
                                 activation_params)
    elif group == 1:
        r2 = None if res is None else res.reshape(m, oprod)
        y = gemm(w2[0], cols[0, 0], None if bcol is None else bcol[0], residual=r2, **epi)
    elif group > 16:
        # Many small groups: one batched matmul beats a Python loop of tiny GEMMs.
        y = np.matmul(w2[None], cols)  # (N, G, Mg, O)
        if bcol is not None:
            y += bcol[None]
        if res is not None:
            y += res.reshape(n, group, mg, oprod)
        if activation is not None:
            ACTIVATIONS[activation](y, activation_params or {})
    else:
        y = np.empty((n, group, mg, oprod), dtype=dt)
        rg = None if res is None else res.reshape(n, group, mg, oprod)
        for b in range(n):
            for g in range(group):
                gemm(w2[g], cols[b, g], None if bcol is None else bcol[g],
                     residual=None if rg is None else rg[b, g], out=y[b, g], **epi)
    return np.ascontiguousarray(y.reshape(n, m, *out_shape), dtype=dt)


SMALL_IM2COL = 1 << 16   # column-matrix elements up to which im2col is one cached-index gather


SMALL_CONV_MACS = BLAS_PAR_MIN_MACS   # below: np.matmul + in-place epilogue instead of `gemm`


# Depthwise 2-D convs run the compiled kernels of `ep_cpu.conv_depthwise` (numba) when it is
# importable: 2-3x faster than the numpy taps below on MobileNetV2's layers (benchmarks/README.md).
DW_COMPILED = True


def _depthwise_compiled(x, w, strides, dilations, begin, out_shape, bias, residual, activation,
                        activation_params) -> np.ndarray:
    """Depthwise 2-D conv through the compiled kernel; Relu/Clip run inside it unless a
    residual must be added first."""
    p = activation_params or {}
    clamp = (epilogue_jit.clamp_bounds(activation, p)
             if residual is None and activation is not None else None)
    y = conv_depthwise.depthwise_2d(x, w, strides, dilations, begin, out_shape, bias, clamp,
                                    get_num_threads(), _get_pool)
    if residual is not None:
        y += residual.astype(y.dtype, copy=False)
    if activation is not None and clamp is None:
        ACTIVATIONS[activation](y, p)
    return y


# Winograd F(4x4,3x3) (`ep_cpu.winograd`) for 3x3 stride-1 ungrouped float32 convs with at least
# this many input and output channels and output tiles (4x4, all images) per intra-op thread.
# With the compiled transforms, against im2col (AVX2 host, interleaved runs): at 1 thread 256ch
# 14x14 (16 tiles) 0.80x the time, 128ch 20x20 0.72x, 64ch 20x20 0.75x, 128ch 14x14 0.97x,
# 256ch 10x10 (9 tiles) 1.23x; at 2 threads 16-25 tiles measured level or slower (BLAS's threads
# split im2col's one product better than the 36 thin ones), 49 and more faster. 512ch 7x7 was
# 1.5-5x slower (36 transformed weight matrices streamed for 4 tiles). F(2x2,3x3) never won.
WINOGRAD = True
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_MIN_TILES = 16      # per thread
WINOGRAD_TILE = 4


def _use_winograd(x_shape, w_shape, ks, strides, dil, group, out, cdt, threads: int = 1) -> bool:
    if not WINOGRAD or len(ks) != 2 or cdt != np.float32 or group != 1:
        return False
    if list(ks) != [3, 3] or list(strides) != [1, 1] or list(dil) != [1, 1]:
        return False
    m = WINOGRAD_TILE
    tiles = x_shape[0] * -(-out[0] // m) * -(-out[1] // m)
    return (min(x_shape[1], w_shape[0]) >= WINOGRAD_MIN_CHANNELS
            and tiles >= WINOGRAD_MIN_TILES * max(1, threads))


# 2-D ungrouped float32 convs run as an implicit GEMM with the compiled microkernel of
# `ep_cpu.conv_implicit` where its tiles beat BLAS (`conv_implicit.available(threads)`: AVX-512,
# or AVX2 from two threads; no im2col matrix); elsewhere im2col + BLAS or Winograd.
IMPLICIT = True
# 3x3 convs that Winograd takes: Winograd first? None: by CPU class. First without AVX-512 (AVX2,
# 2 threads: ResNet-50 1.84 -> 1.79 of onnxruntime's time, YOLOv8n 2.58 -> 1.67); not on AMD's
# AVX-512 (Zen 5: the implicit conv measured faster); on Intel's at one thread from
# WINOGRAD_FIRST_MIN_TILES_AVX512 4x4 tiles (ResNet-50 100.5 -> 95.4 ms; 14x14 maps and two
# threads measured slower: benchmarks/README.md, eleventh session).
WINOGRAD_OVER_IMPLICIT: bool | None = None
WINOGRAD_FIRST_MIN_TILES_AVX512 = 49
IMPLICIT_MIN_MACS = 1 << 16      # smaller convs keep the one-BLAS-call path
# Where the implicit conv takes convs only for the threads (AVX2: `microkernel.convs_beat_blas`
# without `beats_blas`), a large deep 1x1 conv of stride 1 runs faster as W @ X on BLAS: the
# product runs on `ep_cpu.gemm`'s pool tiles, one one-thread BLAS call each, rows split between
# the threads. Zen 3, 2 threads, per conv in the model: from 128 input and 128 output channels
# and 32M multiply-adds (ResNet-50's layer2-4 1x1 convs, 51-103M) 0.76-1.0 of the implicit
# conv's time; smaller ones were 1.1-3x slower there (YOLOv8n's 10-20M, MobileNetV2's
# 11M with 24-96 outputs, ResNet-50's 256->64), as are fewer output channels (too few rows to
# split).
IMPLICIT_1X1_MAX_CHANNELS_AVX2 = 127
IMPLICIT_1X1_BLAS_MIN_OUTPUTS = 128
IMPLICIT_1X1_BLAS_MIN_MACS = 1 << 25


# Where the implicit conv does not take convs for the threads (AVX2 at one thread: im2col + BLAS),
# its tiles still win on spatial kernels, whose im2col columns are KH*KW times the input: at
# stride 1 (YOLOv8n's 3x3 convs of 16-256 channels: 0.62-0.84 of the im2col path's time), and at
# stride 2 over a few channels (the 3-channel stem 0.66, 16 channels 0.82; 32-128 channels
# 0.92-1.08: kept on BLAS) (Zen 3, 1 thread, per conv in the model).
# So do shallow 1x1 convs on large maps, whose product BLAS runs at ~24 GMAC/s with K or M this
# small (MobileNetV2's 16->96 on 112x112, 24->144 and 96->24 on 56x56: 0.80-0.88 of the time;
# 32-channel ones level).
IMPLICIT_SPATIAL_AVX2 = True
IMPLICIT_STRIDED_MAX_CHANNELS_AVX2 = 16
IMPLICIT_SHALLOW_1X1_MAX_CHANNELS_AVX2 = 24
IMPLICIT_SHALLOW_1X1_MIN_POSITIONS = 56 * 56


def _spatial_on_tiles(ks, strides, channels: int, outputs: int = 0, positions: int = 0) -> bool:
    """A conv the implicit conv's tiles take from im2col + BLAS even where they do not take
    convs for the threads (`IMPLICIT_SPATIAL_AVX2`): a spatial (not 1x1) kernel, or a shallow
    1x1 one of stride 1 on a large map (`outputs`, `positions`: 0 where not known yet)."""
    if not (IMPLICIT_SPATIAL_AVX2 and microkernel.available()):
        return False
    if math.prod(ks) == 1:
        return (max(strides) == 1 and positions >= IMPLICIT_SHALLOW_1X1_MIN_POSITIONS
                and min(channels, outputs) <= IMPLICIT_SHALLOW_1X1_MAX_CHANNELS_AVX2)
    return max(strides) == 1 or channels <= IMPLICIT_STRIDED_MAX_CHANNELS_AVX2


# On AVX2 CPUs (no `microkernel.beats_blas`), positions from which a conv leaves the thin path:
# 7x7 maps ran 0.86-1.0 of the thin conv's time through im2col + BLAS at one thread (ResNet-50's
# layer4, MobileNetV2's last convs), and mostly 0.68-0.89 of it through the implicit conv at two
# (Zen 3, per conv in the model); a streaming step's few positions stay thin (BLAS is slow on
# thin products).
THIN_MAX_POSITIONS_AVX2 = 16


def _thin_max_positions() -> int:
    if microkernel.beats_blas():
        return conv_thin.MAX_POSITIONS
    return min(conv_thin.MAX_POSITIONS, THIN_MAX_POSITIONS_AVX2)


def _winograd_first(tiles: int | None = None, threads: int = 1) -> bool:
    """Whether Winograd goes before the implicit conv; `tiles` (4x4 output tiles) None: not
    known yet (a weight at session build)."""
    if WINOGRAD_OVER_IMPLICIT is not None:
        return WINOGRAD_OVER_IMPLICIT
    if not microkernel.wide():
        return True
    if microkernel.amd() or threads > 1:
        return False
    return tiles is not None and tiles >= WINOGRAD_FIRST_MIN_TILES_AVX512


# On Intel's AVX-512 at one thread, 1x1 convs with this many outputs, and this many inputs or at
# most this many positions, run as W @ X on OpenBLAS (`conv_pointwise`'s plan): 41-70 GMAC/s
# where the implicit conv's in-place reads ran 34-53 (ResNet-50 98.4 -> 85.9 ms; 64->384 on
# 14x14 140 -> 113 us); few channels on large maps and two threads measured slower.
BLAS_1X1_MIN_CHANNELS_INTEL = 128
BLAS_1X1_MAX_POSITIONS_INTEL = 1024
BLAS_1X1_MIN_OUTPUTS_INTEL = 64


def _deep_1x1_on_blas(ks, strides, channels: int, outputs: int, macs: int | None,
                      threads: int = 1, clamp_epilogue: bool = True, positions: int = 0) -> bool:
    """A 1x1 stride-1 conv BLAS runs faster than the implicit conv: with AVX2, one large enough
    for BLAS's pool tiles (`macs` None: any size, at session build); on Intel's AVX-512 a deep
    one at one thread with no or a clamp activation (`clamp_epilogue`; the tiles run SiLU)."""
    if list(ks) != [1, 1] or list(strides) != [1, 1]:
        return False
    if microkernel.beats_blas():
        return (threads == 1 and clamp_epilogue and not microkernel.amd()
                and outputs >= BLAS_1X1_MIN_OUTPUTS_INTEL
                and (channels >= BLAS_1X1_MIN_CHANNELS_INTEL
                     or 0 < positions <= BLAS_1X1_MAX_POSITIONS_INTEL))
    return (channels > IMPLICIT_1X1_MAX_CHANNELS_AVX2 and outputs >= IMPLICIT_1X1_BLAS_MIN_OUTPUTS
            and (macs is None or macs >= IMPLICIT_1X1_BLAS_MIN_MACS))


def _use_implicit(x_shape, w_shape, ks, strides, group, out, cdt, threads: int = 1,
                  built_only: bool = True, clamp_epilogue: bool = True) -> bool:
    """Whether the implicit conv takes this conv (`built_only`: once compiled, `jit_tier`)."""
    if not IMPLICIT or cdt != np.float32 or group != 1 or len(ks) != 2 or min(out) <= 0:
        return False
    macs = x_shape[0] * w_shape[0] * math.prod(w_shape[1:]) * math.prod(out)
    if _deep_1x1_on_blas(ks, strides, w_shape[1], w_shape[0], macs, threads, clamp_epilogue,
                         math.prod(out)):
        return False
    return (macs >= IMPLICIT_MIN_MACS
            and (conv_implicit.available(threads)
                 or _spatial_on_tiles(ks, strides, w_shape[1], w_shape[0], math.prod(out)))
            and (not built_only or jit_tier.ready("conv_implicit", conv_implicit.compile_kernels)))


def _thin_conv(k: Kernel, x, w, b, ks, strides, dil, begin, out, residual, activation,
               activation_params) -> np.ndarray:
    """Conv through `ep_cpu.conv_thin` (a few output positions: the positions as GEMM rows)."""
    p = activation_params or {}
    clamp = epilogue_jit.clamp_bounds(activation, p)
    threads = get_num_threads()
    plan = k.__dict__.get("_thin_plan")
    if plan is None or plan.x_shape != x.shape or plan.bias is not b or plan.threads != threads:
        packed = getattr(k, "_thin_w", None)
        if packed is None:
            packed = conv_thin.PackedWeight(w)
            if k.ctx.constant_input(1) is not None:
                k._thin_w = packed
        offs = _tap_offsets(tuple(x.shape[2:]), tuple(ks), tuple(strides), tuple(dil),
                            tuple(begin), tuple(out))
        plan = conv_thin.ThinConv(packed, offs, b, clamp or (-math.inf, math.inf), x.shape, out,
                                  threads)
        if k.ctx.constant_input(1) is not None:
            k._thin_plan = plan   # one plan per kernel, the last shape seen
        if clamp is not None:        # the whole conv (no activation pass after it)
            _keep_ready(k, x, b, residual, lambda x, res: plan(x, res, _get_pool))
    y = plan(x, residual, _get_pool)
    if clamp is None:
        ACTIVATIONS[activation](y, p)
    return y


def _implicit_conv(k: Kernel, x, w, b, ks, strides, dil, begin, end, out, residual, activation,
                   activation_params) -> np.ndarray:
    """Conv through `ep_cpu.conv_implicit`: bias, residual and a clamp activation in its tile
    epilogue; other activations (SiLU, ...) as a pass after."""
    p = activation_params or {}
    clamp = epilogue_jit.clamp_bounds(activation, p)
    packed = implicit_weight(k, w)
    # SiLU, Sigmoid, Gelu (exact), Tanh on each tile while it is in L1 (no pass over the output)
    kind = vector_math.KINDS.get(activation) if clamp is None else None
    fused = kind is not None and p.get("approximate", "none") == "none" and vector_math.available()
    act = (vector_math.tile_callback().address, kind) if fused else (0, 0)
    threads = get_num_threads()
    plan = k.__dict__.get("_implicit_plan")
    if (plan is None or plan.x_shape != x.shape or plan.bias is not b or plan.threads != threads
            or plan.has_res != (residual is not None) or plan.activation != act):
        plan = conv_implicit.ImplicitConv(packed, w.shape[0], x.shape, ks, strides, dil, begin, end,
                                          out, b, residual is not None, clamp, threads, act)
        if k.ctx.constant_input(1) is not None:
            k._implicit_plan = plan   # one per kernel: the last shape seen
        if clamp is not None or fused:   # the whole conv (no activation pass after it)
            _keep_ready(k, x, b, residual, lambda x, res: plan(x, res, _get_pool))
    y = plan(x, residual, _get_pool)
    if clamp is None and not fused:
        ACTIVATIONS[activation](y, p)
    return y


def _depthwise_plan(k: Kernel, x, w, b, ks, strides, dil, group, begin, out, activation,
                    activation_params) -> depthwise_flat.FlatPlan | depthwise_padded.PaddedPlan | None:
    """A float32 2-D depthwise conv with a constant weight and a clamp or no activation, of a
    geometry `depthwise_flat` (AVX-512) or `depthwise_padded` takes: its plan for this input
    shape (kept on the kernel by `run_conv`); else None."""
    if not (DW_COMPILED and len(ks) == 2 and group > 1 and group == x.shape[1] == w.shape[0]
            and w.shape[1] == 1 and math.prod(ks) > 1 and k.ctx.constant_input(1) is not None):
        return None
    flat = (conv_depthwise.FLAT and depthwise_flat.available()
            and depthwise_flat.applies(x.shape, ks, strides, dil, begin, out))
    if not flat and not (conv_depthwise.PADDED and depthwise_padded.available()
                         and depthwise_padded.applies(ks, strides, dil, begin, out)
                         and jit_tier.ready("depthwise", conv_depthwise.compile_kernels)):
        return None
    clamp = epilogue_jit.clamp_bounds(activation, activation_params or {}) if activation else None
    if activation is not None and clamp is None:
        return None
    c = x.shape[1]
    b32 = np.zeros(c, np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32).reshape(c)
    w2 = np.ascontiguousarray(w.reshape(c, -1), dtype=np.float32)
    if flat:
        return depthwise_flat.FlatPlan(x.shape, w2, b32, ks, strides, dil, begin, out, clamp,
                                       get_num_threads(), bias=b)
    return depthwise_padded.PaddedPlan(x.shape, w2, b32, ks, strides, begin, out, clamp,
                                       get_num_threads(), bias=b)


def implicit_weight(k: Kernel, w: np.ndarray) -> np.ndarray:
    """The packed weight: once at __init__ when W is a session constant, else per call."""
    cached = getattr(k, "_implicit_w", None)
    if cached is not None:
        return cached
    packed = conv_implicit.pack_weight(w.astype(np.float32, copy=False))
    if k.ctx.constant_input(1) is not None:
        k._implicit_w = packed
    return packed


def winograd_weight(k: Kernel, w: np.ndarray, cdt) -> np.ndarray:
    """The transformed weight: computed once and kept on the kernel when W is a session
    constant (Conv and FusedConv do it at __init__), else per call."""
    m = WINOGRAD_TILE
    cached = getattr(k, "_winograd_u", None)
    if cached is not None and cached[0] == m and cached[1].dtype == cdt:
        return cached[1]
    u = winograd.transform_weight(w.astype(cdt, copy=False), m)
    if k.ctx.constant_input(1) is not None:
        k._winograd_u = (m, u)
    return u


# 1x1 convs of one image at one thread that im2col + BLAS takes: a `conv_pointwise` plan kept on
# the kernel (MobileNetV2's 144->32 conv on 28x28, Zen 3: 180 -> 146 us a run of the lone conv)
POINTWISE = True


def run_conv(k: Kernel, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, cdt,
             residual: np.ndarray | None = None, activation: str | None = None,
             activation_params: dict | None = None) -> np.ndarray:
    """Conv with the kernel's attributes, computed in dtype cdt; optional fused epilogue
    act(conv + b + residual) for FusedConv."""
    call = ready_conv(k, x, b, residual)
    if call is not None:
        return call(x, residual)   # the same conv as the last call: its plan straight away
    ks, strides, dil, group, begin, end, out, path = _geometry(k, x.shape, w.shape, cdt)
    if path == "im2col" and residual is None and cdt == np.float32 and x.dtype == np.float32:
        dw = _depthwise_plan(k, x, w, b, ks, strides, dil, group, begin, out, activation,
                             activation_params)
        if dw is not None:
            _keep_ready(k, x, b, residual, lambda x, _res: dw(x, _get_pool))
            return dw(x, _get_pool)
    if (POINTWISE and path == "im2col" and cdt == np.float32 and get_num_threads() == 1
            and k.ctx.constant_input(1) is not None):
        clamp = epilogue_jit.clamp_bounds(activation, activation_params or {})
        if conv_pointwise.applies(x, w, ks, strides, begin, end, group, clamp):
            pw = conv_pointwise.PointwisePlan(w, b, clamp, x.shape, residual is not None)
            _keep_ready(k, x, b, residual, pw)
            return pw(x, residual)
    if path == "thin":
        return _thin_conv(k, x, w, b, ks, strides, dil, begin, out, residual, activation,
                          activation_params)
    if path == "implicit":
        return _implicit_conv(k, x, w, b, ks, strides, dil, begin, end, out, residual, activation,
                              activation_params)
    if path == "winograd":
        res = None if residual is None else np.broadcast_to(residual, (x.shape[0], w.shape[0], *out))
        return winograd.conv3x3(x.astype(cdt, copy=False), winograd_weight(k, w, cdt),
                                WINOGRAD_TILE, begin, out, b, res, activation, activation_params,
                                get_num_threads(), _get_pool)
    return conv_nd(x.astype(cdt, copy=False), w.astype(cdt, copy=False), group, strides, dil,
                   begin, end, out, None if b is None else b.astype(cdt, copy=False),
                   residual, activation, activation_params)


def ready_conv(k: Kernel, x: np.ndarray, b: np.ndarray | None, residual: np.ndarray | None):
    """The plan `_keep_ready` kept for a float32 call like this one, or None (Conv and
    FusedConv ask before any other work: a streaming step runs six small convs a run)."""
    ready = k.__dict__.get("_ready_conv")
    if (ready is not None and ready[0] == x.shape and ready[1] is b and ready[2] == (residual is None)
            and ready[3] == get_num_threads() and ready[4] == jit_tier.generation
            and x.dtype == np.float32):
        return ready[5]
    return None


def _keep_ready(k: Kernel, x: np.ndarray, b: np.ndarray | None, residual: np.ndarray | None,
                call) -> None:
    """Keep `call(x, residual)`, a plan that computes the whole conv (its activation included),
    for the next call of a kernel with a constant weight with the same input shape, bias,
    residual presence and threads: `run_conv` then skips the path choice (one kept per kernel,
    the last seen; a finished compile (`jit_tier.generation`) chooses again)."""
    if k.ctx.constant_input(1) is not None:
        k._ready_conv = (x.shape, b, residual is None, get_num_threads(), jit_tier.generation, call)


def _geometry(k: Kernel, x_shape: tuple, w_shape: tuple, cdt) -> tuple:
    """(ks, strides, dilations, group, begin, end, out_shape, path) of a conv kernel for
    these shapes, kept on the kernel for the next call with the same shapes (the geometry is
    computed once per shape, not per run)."""
    threads = get_num_threads()
    # jit_tier.generation: a compiled path whose kernels were still compiling is chosen again
    # once a build finishes
    key = (x_shape, w_shape, cdt, threads, jit_tier.generation, WINOGRAD, WINOGRAD_MIN_CHANNELS,
           WINOGRAD_MIN_TILES, IMPLICIT, WINOGRAD_OVER_IMPLICIT, WINOGRAD_FIRST_MIN_TILES_AVX512,
           IMPLICIT_1X1_MAX_CHANNELS_AVX2, BLAS_1X1_MIN_CHANNELS_INTEL, BLAS_1X1_MIN_OUTPUTS_INTEL,
           BLAS_1X1_MAX_POSITIONS_INTEL,
           IMPLICIT_1X1_BLAS_MIN_OUTPUTS, IMPLICIT_1X1_BLAS_MIN_MACS,
           IMPLICIT_SPATIAL_AVX2, IMPLICIT_STRIDED_MAX_CHANNELS_AVX2,
           IMPLICIT_SHALLOW_1X1_MAX_CHANNELS_AVX2, IMPLICIT_SHALLOW_1X1_MIN_POSITIONS, conv_thin.MAX_POSITIONS,
           THIN_MAX_POSITIONS_AVX2)
    cached = k.__dict__.get("_conv_geometry")
    if cached is not None and cached[0] == key:
        return cached[1]
    g = k.conv.geometry(x_shape[2:], w_shape)   # k.conv: ConvAttributes parsed in __init__
    ks, strides, dil, group, out = g.kernel_shape, g.strides, g.dilations, k.conv.group, g.output_shape
    # path: "thin" (positions as GEMM rows), "implicit" (compiled implicit GEMM), "winograd"
    # or "im2col" (conv_nd)
    wino = _use_winograd(x_shape, w_shape, ks, strides, dil, group, out, cdt, threads) and min(out) > 0
    path = "winograd" if wino else "im2col"
    tiles = x_shape[0] * -(-out[0] // WINOGRAD_TILE) * -(-out[-1] // WINOGRAD_TILE)
    if (not (wino and _winograd_first(tiles, threads)) and min(g.pads_begin) >= 0
            and min(g.pads_end) >= 0
            and _use_implicit(x_shape, w_shape, ks, strides, group, out, cdt, threads, False,
                              epilogue_jit.clamp_bounds(getattr(k, "act", None),
                                                        getattr(k, "params", None) or {}) is not None)):
        # while its kernels compile, im2col + BLAS (not Winograd's 20-40 ms weight transform)
        path = ("implicit" if jit_tier.ready("conv_implicit", conv_implicit.compile_kernels)
                else "im2col")
    if (path != "winograd" and group == 1 and cdt == np.float32
            and 0 < math.prod(out) <= _thin_max_positions() and x_shape[0] <= 4
            and conv_thin.available() and jit_tier.ready("conv_thin", conv_thin.compile_kernels)):
        path = "thin"
    geo = (ks, strides, dil, group, g.pads_begin, g.pads_end, out, path)
    k._conv_geometry = (key, geo)
    return geo


def prepare_constant_weight(k: Kernel) -> None:
    """At kernel creation (after `k.conv = ConvAttributes.from_node(node)`): the packed or
    Winograd-transformed constant weight the conv will use (Conv and FusedConv), so no run
    pays for it."""
    w = k.ctx.constant_input(1)
    if (isinstance(w, np.ndarray) and w.ndim == 4 and w.dtype.kind == "f"
            and k.conv.rank in (None, 2)):
        ks, strides, dil = k.conv.spatial(w.shape)
        # (the session's intra-op threads are not known here: the default, all cores)
        implicit = (IMPLICIT and k.conv.group == 1 and compute_dtype(w.dtype) == np.float32
                    and (conv_implicit.available(get_num_threads())
                         or _spatial_on_tiles(ks, strides, w.shape[1])))
        winograd_shape = (WINOGRAD and ks == [3, 3] and strides == [1, 1] and dil == [1, 1]
                          and k.conv.group == 1 and compute_dtype(w.dtype) == np.float32
                          and min(w.shape[:2]) >= WINOGRAD_MIN_CHANNELS)
        if winograd_shape and (_winograd_first() or not implicit):
            winograd_weight(k, w, np.dtype(np.float32))
        elif implicit and not _deep_1x1_on_blas(ks, strides, w.shape[1], w.shape[0], None,
                                                get_num_threads()):
            # (a Winograd conv on a small map, or a deep 1x1 one below
            # IMPLICIT_1X1_BLAS_MIN_MACS, packs it on first use)
            implicit_weight(k, w)


@kernel("Conv")
class Conv(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)
        prepare_constant_weight(self)

    def compute(self, x, w, b=None):
        call = ready_conv(self, x, b, None)
        if call is not None:
            return call(x, None)
        y = run_conv(self, x, w, b, compute_dtype(x.dtype))
        return y.astype(x.dtype, copy=False)


@kernel("ConvInteger")
class ConvInteger(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)

    def compute(self, x, w, x_zero_point=None, w_zero_point=None):
        # float64 accumulation is exact for int8 products over any realistic reduction length.
        xf = x.astype(np.float64)
        if x_zero_point is not None:
            xf -= np.float64(np.asarray(x_zero_point).reshape(-1)[0])
        wf = w.astype(np.float64)
        if w_zero_point is not None:
            wz = np.asarray(w_zero_point, dtype=np.float64)
            wf -= wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(())
        # Padding must be the zero point (i.e. 0 after the shift), which pad_spatial gives.
        y = run_conv(self, xf, wf, None, np.float64)
        return np.rint(y).astype(np.int32)
