"""MatMul, Gemm and the GEMM engine's host side (kernels_cu/gemm_core.cuh, gemm.cu).

`run_engine` packs a `GemmArgs` blob, picks a kernel variant and launches it. Variants:

* ``simt:big`` / ``simt:tall`` / ``simt:small``: fp32 FMA (float32, and float16 widened);
* ``tc:big`` / ``tc:small``: tensor cores, mma.sync with fp32 accumulation. float16 always may
  use them (sm_75+); float32 only when TF32 is allowed (provider option ``use_tf32``) on sm_80+.

Without tuning the choice is a heuristic on the tile count; with the provider options
``tunable_op_enable`` / ``tunable_op_tuning_enable`` the autotuner (ep_cuda.autotune) times the
candidates once per (op, shape, dtype, layout) and remembers the winner on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ep_core.op_attributes import GemmAttributes

from .. import loader
from ..launch import (FLOATS, CudaKernel, blob, broadcast_strides, collapse, contiguous_strides,
                      ctype, device_cc, elem_strides, empty, f32, settings)
from ..registry import kernel

MAXB = 6  # GEMM_MAXB in gemm_core.cuh
SIMT = {"simt:big": ("SimtBig", 128, 128, 256), "simt:tall": ("SimtTall", 128, 64, 256),
        "simt:small": ("SimtSmall", 64, 64, 256)}
# name -> (struct, BM, BN, warps M, warps N, stages)
TC = {"tc:big": ("TcBig", 128, 128, 2, 4, 4), "tc:small": ("TcSmall", 64, 64, 2, 2, 3)}
# BF16 tensor-core instantiations: compiled and checked, not reachable from ONNX nodes (CuPy has no
# bfloat16 arrays, so bfloat16 graphs stay on the CPU provider).
BF16_ONLY = ["gemm_tc_k<bf16_t, TcBig, true, true>"]
loader.declare("gemm", [f"gemm_simt_k<{ctype(t)}, {v[0]}>" for t in FLOATS for v in SIMT.values()]
               + [f"gemm_tc_k<{ctype(t)}, {v[0]}, true, {bk}>" for t in FLOATS for v in TC.values()
                  for bk in ("true", "false")] + BF16_ONLY)


@dataclass
class Epilogue:
    """act(alpha * A@B + beta * C + R); C and R broadcast to the output (None: absent)."""
    alpha: float = 1.0
    beta: float = 1.0
    c: Any = None
    r: Any = None
    act: int = -1          # activation code of kernels_cu/act.cuh (-1: none)
    p0: float = 0.0
    p1: float = 0.0


def _ptr(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, np.ndarray):
        return int(x.ctypes.data)
    return int(x.data.ptr)


def _aligned(x: Any, nbytes: int) -> bool:
    return _ptr(x) % nbytes == 0


def _all_mult(values: Sequence[int], v: int) -> bool:
    return all(int(s) % v == 0 for s in values)


def _device_limits() -> tuple[int, int]:
    """(multiprocessors, opt-in shared memory bytes per block) of the current device."""
    from ..launch import EMULATED
    if EMULATED[0]:
        return 132, 227 << 10
    import cupy
    d = cupy.cuda.Device()
    key = d.id
    lim = _LIMITS.get(key)
    if lim is None:
        a = d.attributes
        lim = _LIMITS[key] = (int(a["MultiProcessorCount"]),
                              int(a.get("MaxSharedMemoryPerBlockOptin", 48 << 10)))
    return lim


_LIMITS: dict[int, tuple[int, int]] = {}


def tc_smem(variant: str, itemsize: int, a_kmajor: bool, b_kmajor: bool) -> int:
    """Dynamic shared memory of a tensor-core variant (mirrors TcGeom in gemm_core.cuh): the
    operand stages, or the fp32 epilogue staging tile if that is larger."""
    _, bm, bn, _, _, stages = TC[variant]
    bk, vec = 64 // itemsize, 16 // itemsize
    a = bm * (bk + vec) if a_kmajor else bk * (bm + 8)
    b = bn * (bk + vec) if b_kmajor else bk * (bn + 8)
    return max(stages * (a + b) * itemsize, bm * (bn + 1) * 4)


def candidates(dtype, M: int, N: int, batches: int, a_kmajor: bool = True,
               b_kmajor: bool = True) -> list[str]:
    """Variants valid for this dtype on this device, the heuristic's favourite first."""
    s = settings()
    cc = device_cc()
    sms, smem_max = _device_limits()
    itemsize = np.dtype(dtype).itemsize
    tc_ok = (np.dtype(dtype) == np.float16 and cc >= 75) or (
        np.dtype(dtype) == np.float32 and s.use_tf32 and cc >= 80)
    out = []
    if tc_ok:
        tcs = [v for v in TC if tc_smem(v, itemsize, a_kmajor, b_kmajor) <= smem_max]
        big_tiles = -(-M // 128) * -(-N // 128) * batches
        tcs.sort(key=lambda v: 0 if (v == "tc:big") == (big_tiles >= sms) else 1)
        out += tcs
    big_tiles = -(-M // 128) * -(-N // 128) * batches
    simt = ["simt:big", "simt:tall", "simt:small"] if big_tiles >= sms else \
        ["simt:small", "simt:tall", "simt:big"]
    return out + simt


def pack_args(**f: Any) -> np.ndarray:
    """The GemmArgs struct of gemm_core.cuh as one int64 blob (field order matters)."""
    def vec(name, n, fill=0):
        v = [int(x) for x in f.get(name, [])]
        if len(v) > n:
            raise NotImplementedError(f"GEMM with {len(v)} batch dims (at most {n} after collapsing)")
        return v + [fill] * (n - len(v))
    vals = [f["M"], f["N"], f["K"], f["batches"], len(f.get("bshape", []))]
    vals += vec("bshape", MAXB, 1)
    for k in ("a_bst", "b_bst", "c_bst", "r_bst", "y_bst"):
        vals += vec(k, MAXB)
    vals += [f.get(k, 0) for k in ("sam", "sak", "sbn", "sbk", "a_vec", "b_vec")]
    vals += [f.get("jdiv", 1 << 62)]
    vals += [f.get(k, 0) for k in ("c_m", "c_jo", "c_ji", "r_m", "r_jo", "r_ji", "y_m", "y_jo", "y_ji")]
    vals += [f.get(k, 0) for k in ("cv_cpg", "cv_tapmajor", "cv_ksp", "cv_khw")]
    for k, fill in (("cv_k", 1), ("cv_out", 1), ("cv_in", 1), ("cv_stride", 1), ("cv_pad", 0),
                    ("cv_dil", 1)):
        vals += vec(k, 3, fill)
    vals += [f.get("cv_xn", 0), f.get("cv_xc", 0)] + vec("cv_xs", 3)
    return blob(vals)


def run_engine(op: str, a: Any, b: Any, y: Any, epi: Epilogue, fields: dict,
               a_vec: dict, b_vec: dict, a_kmajor: bool, b_kmajor: bool,
               tune_key: str) -> None:
    """Launch the best variant. `a_vec` / `b_vec` map 'simt' and 'tc' to the vector mode the
    operand allows for that family (computed by the caller from strides and alignment)."""
    M, N, batches = fields["M"], fields["N"], fields["batches"]
    cands = candidates(a.dtype, M, N, batches, a_kmajor, b_kmajor)
    s = settings()
    forced = s.force.get(op)
    if forced is not None:
        cands = [forced]

    def launch_one(variant: str) -> None:
        fam = variant.split(":")[0]
        args = pack_args(**dict(fields, a_vec=a_vec[fam], b_vec=b_vec[fam]))
        t = ctype(a.dtype)
        scal = (f32(epi.alpha), f32(epi.beta), np.int32(epi.act), f32(epi.p0), f32(epi.p1), args)
        kern = "conv" if op == "conv" else "gemm"
        if fam == "simt":
            name, bm, bn, threads = SIMT[variant]
            fn = loader.get_kernel(kern, f"{kern}_simt_k<{t}, {name}>")
            smem = 0
        else:
            name, bm, bn, wm, wn, _ = TC[variant]
            threads = 32 * wm * wn
            expr = (f"conv_tc_k<{t}, {name}>" if kern == "conv" else
                    f"gemm_tc_k<{t}, {name}, true, {'true' if b_kmajor else 'false'}>")
            fn = loader.get_kernel(kern, expr)
            smem = tc_smem(variant, a.dtype.itemsize, True, b_kmajor)
            if smem > (48 << 10) and getattr(fn, "max_dynamic_shared_size_bytes", 0) < smem:
                fn.max_dynamic_shared_size_bytes = smem
        tiles = -(-M // bm) * -(-N // bn)
        grid = (min(tiles, (1 << 31) - 1), min(batches, 65535))
        fn(grid, (threads,), (a, b, epi.c, epi.r, y) + scal, shared_mem=smem)

    choice = cands[0]
    tuner = s.tuner
    if tuner is not None and forced is None and len(cands) > 1:
        choice = tuner.choose(f"{tune_key}|{np.dtype(a.dtype).name}|tf32={int(s.use_tf32)}",
                              cands, launch_one) or choice
    launch_one(choice)


# ---------------------------------------------------------------------------- plain GEMM
def _operand_modes(shape_r: int, K: int, sr: int, sk: int, bst: Sequence[int], x: Any,
                   kmajor_only: bool = False) -> tuple[dict, bool]:
    """Vector modes of an operand X(r, k) with element strides (sr, sk) for both kernel families,
    and whether its tensor-core stage is K-major (A always is: one layout fewer to compile)."""
    item = x.dtype.itemsize
    simt = 0
    if sk == 1 and K % 4 == 0 and sr % 4 == 0 and _all_mult(bst, 4) and _aligned(x, 4 * item):
        simt = 1
    elif sr == 1 and shape_r % 4 == 0 and sk % 4 == 0 and _all_mult(bst, 4) and _aligned(x, 4 * item):
        simt = 2
    v = 16 // item
    kmajor = kmajor_only or not (sr == 1 and sk != 1)
    if kmajor:
        tc = int(sk == 1 and K % v == 0 and sr % v == 0 and _all_mult(bst, v) and _aligned(x, 16))
    else:
        tc = int(shape_r % v == 0 and sk % v == 0 and _all_mult(bst, v) and _aligned(x, 16))
    return {"simt": simt, "tc": tc}, kmajor


def batched_gemm(a_shape, a_st, b_shape, b_st, a: Any, b: Any, c: Any = None,
                 alpha: float = 1.0, beta: float = 1.0, *, r: Any = None, act: int = -1,
                 p0: float = 0.0, p1: float = 0.0, out: Any = None) -> Any:
    """Y[z] = act(alpha * A[z] @ B[z] + beta * C + R) for logical shapes (..., M, K) and
    (..., K, N) given with element strides (views, transposes and broadcasts as strides).
    C and R (optional) broadcast to (..., M, N). Returns a new contiguous (batch..., M, N) array,
    or writes `out` (any strides, that shape) and returns it."""
    M, K = (int(v) for v in a_shape[-2:])
    K2, N = (int(v) for v in b_shape[-2:])
    if K != K2:
        raise ValueError(f"matmul inner dimensions differ: {tuple(a_shape)} @ {tuple(b_shape)}")
    batch = tuple(int(v) for v in np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    full = batch + (M, N)
    y = empty(full, a.dtype) if out is None else out
    if tuple(y.shape) != full:
        raise ValueError(f"GEMM output has shape {tuple(y.shape)}, expected {full}")
    if y.size == 0:
        return y
    y_st = list(elem_strides(y))
    nbt = len(batch)
    a_bst = broadcast_strides(a_shape[:-2], a_st[:-2], batch)
    b_bst = broadcast_strides(b_shape[:-2], b_st[:-2], batch)

    def addend(t):
        if t is None:
            return [0] * nbt, 0, 0
        st = broadcast_strides(t.shape, elem_strides(t), full)
        return st[:-2], st[-2], st[-1]
    c_bst, c_m, c_n = addend(c)
    r_bst, r_m, r_n = addend(r)
    bshape, (a_bst, b_bst, c_bst, r_bst, y_bst) = collapse(
        batch, [a_bst, b_bst, c_bst, r_bst, y_st[:-2]])
    batches = int(np.prod(batch, dtype=np.int64)) if batch else 1
    sam, sak, sbk, sbn = int(a_st[-2]), int(a_st[-1]), int(b_st[-2]), int(b_st[-1])
    if M == 1:
        sam = 0   # a single row: its stride is meaningless (1-D operands, broadcast views)
    if N == 1:
        sbn = 0
    a_vec, _ = _operand_modes(M, K, sam, sak, a_bst, a, kmajor_only=True)
    b_vec, b_km = _operand_modes(N, K, sbn, sbk, b_bst, b)
    fields = dict(M=M, N=N, K=K, batches=batches, bshape=bshape if batch else [],
                  a_bst=a_bst, b_bst=b_bst, c_bst=c_bst, r_bst=r_bst, y_bst=y_bst,
                  sam=sam, sak=sak, sbn=sbn, sbk=sbk, jdiv=1 << 62, c_m=c_m, c_ji=c_n,
                  r_m=r_m, r_ji=r_n, y_m=y_st[-2], y_ji=y_st[-1])
    if not batch:
        fields.update(bshape=[], a_bst=[], b_bst=[], c_bst=[], r_bst=[], y_bst=[])
    key = (f"gemm|{M}x{N}x{K}|b{batches}|a{int(a_vec['tc'])}{int(a_vec['simt'])}"
           f"|b{int(b_vec['tc'])}{int(b_km)}")
    run_engine("gemm", a, b, y, Epilogue(alpha, beta, c, r, act, p0, p1), fields,
               a_vec, b_vec, True, b_km, key)
    return y


def matmul(a: Any, b: Any, **epi: Any) -> Any:
    """numpy.matmul semantics (1-D operands promoted then squeezed, batch broadcasting), with an
    optional fused epilogue (c, r, act, p0, p1 of batched_gemm)."""
    a_shape, a_st = list(a.shape), list(elem_strides(a))
    b_shape, b_st = list(b.shape), list(elem_strides(b))
    if a.ndim == 1:
        a_shape, a_st = [1] + a_shape, [0] + a_st
    if b.ndim == 1:
        b_shape, b_st = b_shape + [1], b_st + [0]
    y = batched_gemm(a_shape, a_st, b_shape, b_st, a, b, **epi)
    if a.ndim == 1 and b.ndim == 1:
        return y.reshape(())
    if a.ndim == 1:
        return y.reshape(y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        return y.reshape(y.shape[:-1])
    return y


@kernel("MatMul", since=1, types={"T": FLOATS})
class MatMul(CudaKernel):
    def forward(self, a, b):
        return matmul(a, b)


@kernel("Gemm", since=7, types={"T": FLOATS})
class Gemm(CudaKernel):
    """Y = alpha * A' @ B' + beta * C with A' = A^T if transA, B' = B^T if transB."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha, self.beta, self.ta, self.tb = GemmAttributes.from_node(node)

    def gemm(self, a, b, c=None, act: int = -1, p0: float = 0.0, p1: float = 0.0, r=None,
             beta: float | None = None):
        """act(alpha * A' @ B' + beta * c + r); `beta` overrides the node's (fused epilogues)."""
        beta = self.beta if beta is None else float(beta)
        a_shape, a_st = list(a.shape), list(elem_strides(a))
        b_shape, b_st = list(b.shape), list(elem_strides(b))
        if self.ta:
            a_shape, a_st = a_shape[::-1], a_st[::-1]
        if self.tb:
            b_shape, b_st = b_shape[::-1], b_st[::-1]
        if c is not None and beta == 0.0:
            c = None  # beta * C contributes nothing (and must not turn inf/NaN in C into NaN)
        return batched_gemm(a_shape, a_st, b_shape, b_st, a, b, c, self.alpha, beta,
                            act=act, p0=p0, p1=p1, r=r)

    def forward(self, a, b, c=None):
        return self.gemm(a, b, c)


__all__ = ["Epilogue", "batched_gemm", "matmul", "run_engine", "candidates", "contiguous_strides"]
