"""Integer matrix products (kernels_cu/quant_gemm.cu, quant_core.cuh): MatMulInteger,
QLinearMatMul, QLinearConv, ConvInteger and the contrib MatMulIntegerToFloat /
DynamicQuantizeMatMul.

uint8/int8 operands, int32 accumulation, zero points (scalar, per row of A, per column of B)
applied exactly in the epilogue, which also requantizes (QLinear*) or scales to float32. Main
loop by device: int8 tensor cores (mma.sync m16n8k32) on sm_80+, dp4a below; tests force either
with `Settings.force["qgemm"]` ("dp4a", "imma", "imma:big"). Outputs equal the CPU provider's
bit for bit (the same double-precision requantization steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ep_core.op_attributes import ConvAttributes

from .. import loader
from ..launch import (CudaKernel, blob, broadcast_strides, collapse, contiguous, ctype, device_cc,
                      elem_strides, empty, settings)
from ..registry import kernel
from .conv import _flat_spatial, _rank_ok, as3d
from .gemm import _aligned, _device_limits, _ptr, pack_args
from .elementwise import cast
from .quant import MS, dtype_in, dynamic_quantize, has_input, input_dtype

I8 = (np.uint8, np.int8)
# variant -> (struct, BM, BN, threads, stages); mirrors quant_core.cuh
QCFG = {"dp4a": ("QDp4a", 64, 64, 256, 2), "imma": ("QImma", 64, 64, 128, 3),
        "imma:big": ("QImmaBig", 128, 128, 256, 3)}
loader.declare("quant_gemm", [f"{k}_{fam}_k<{ctype(a)}, {ctype(b)}, {v[0]}>"
                              for k in ("qgemm", "qconv") for a in I8 for b in I8
                              for fam, v in ((n.split(":")[0].replace("imma", "tc"), v)
                                             for n, v in QCFG.items())])
QBK, QSTR = 64, 80
MODE_INT32, MODE_QMATMUL, MODE_QCONV, MODE_FLOAT, MODE_QGEMM_FLOAT, MODE_QGEMM = 0, 1, 2, 3, 4, 5
YTYPE = {np.dtype(np.int32): 0, np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.float32): 3}


def qsmem(variant: str) -> int:
    """Dynamic shared memory of a variant (QGeom in quant_core.cuh)."""
    _, bm, bn, _, stages = QCFG[variant]
    return max(stages * (bm + bn) * QSTR, bm * (bn + 1) * 4) + (bm + bn) * 4


def choose(M: int, N: int, batches: int) -> str:
    """int8 tensor cores on sm_80+ (big tiles when they fill the GPU), dp4a below."""
    forced = settings().force.get("qgemm")
    if forced is not None and forced not in QCFG:
        raise ValueError(f"unknown integer GEMM variant {forced!r}")
    if device_cc() < 80:
        return "dp4a"   # the tensor-core kernels are built for sm_80+ only (they trap below)
    if forced is not None:
        return forced
    sms, _ = _device_limits()
    return "imma:big" if -(-M // 128) * -(-N // 128) * batches >= sms else "imma"


@dataclass
class QEpilogue:
    """Zero points and scales of an integer product (None: absent) and the epilogue mode."""
    mode: int = MODE_INT32
    za: Any = None      # per row of A (or scalar)
    zb: Any = None      # per column of B (or scalar)
    srow: Any = None    # float32 scale per row (or scalar)
    scol: Any = None    # float32 scale per column (or scalar)
    ys: Any = None      # output scale per column (or scalar)
    yz: Any = None      # output zero point per column (or scalar)
    bias: Any = None    # int32 per row (QLinearConv) or float32 per column (float mode)
    row_bst: int = 0    # per-row parameters of batch z start at z * row_bst (conv groups)
    real_half: bool = False   # QLinearMatMul with float16 scales: the real value rounds to float16
    alpha: float = 1.0        # QGemm


def _stride(p: Any, n: int, what: str) -> int:
    """0 for a scalar parameter, 1 for one value per row / column (n of them)."""
    if p is None or p.size == 1:
        return 0
    if p.size == n and p.shape[-1] == n:   # (n,) or (1, ..., 1, n)
        return 1
    raise NotImplementedError(f"{what} of shape {tuple(p.shape)}: expected a scalar or {n} values")


def _params(e: QEpilogue, rows: int, cols: int) -> tuple[list, list[int]]:
    """Kernel pointer arguments and the parameter strides of the QArgs blob."""
    def flat(p):
        if p is not None and p.dtype == np.float16:   # scales: float16 widens exactly
            p = cast(p, np.float32)
        return None if p is None else contiguous(p).reshape(-1)
    ptrs = [flat(e.za), flat(e.zb), flat(e.srow), flat(e.scol), flat(e.ys), flat(e.yz), flat(e.bias)]
    return ptrs, [_stride(e.za, rows, "a_zero_point"), _stride(e.zb, cols, "b_zero_point"),
                  _stride(e.srow, rows, "row scale"), _stride(e.scol, cols, "column scale"),
                  _stride(e.ys, cols, "y_scale"), _stride(e.yz, cols, "y_zero_point")]


def _operand_mode(rows: int, K: int, sr: int, sk: int, bst, x: Any) -> int:
    """Staging of an operand X(r, k): 1 16-byte copies along k, 2 scalar bytes walking rows
    (contiguous along r), 0 scalar bytes walking k."""
    if sk == 1 and K % 16 == 0 and sr % 16 == 0 and all(int(s) % 16 == 0 for s in bst) \
            and _aligned(x, 16):
        return 1
    return 2 if sr == 1 and sk != 1 and rows > 1 else 0


def launch_qgemm(kind: str, a: Any, b: Any, y: Any, e: QEpilogue, fields: dict, rows: int,
                 cols: int) -> None:
    """One launch of qgemm_* / qconv_* (kind "qgemm" / "qconv") with the variant `choose` picks."""
    variant = choose(fields["M"], fields["N"], fields["batches"])
    name, bm, bn, threads, _ = QCFG[variant]
    fam = "dp4a" if variant == "dp4a" else "tc"
    fn = loader.get_kernel("quant_gemm", f"{kind}_{fam}_k<{ctype(a.dtype)}, {ctype(b.dtype)}, {name}>")
    smem = qsmem(variant)
    if smem > (48 << 10) and getattr(fn, "max_dynamic_shared_size_bytes", 0) < smem:
        fn.max_dynamic_shared_size_bytes = smem
    ptrs, strides = _params(e, rows, cols)
    bias_st = 0 if e.bias is None or e.bias.size == 1 else 1
    alpha_bits = int(np.float32(e.alpha).view(np.uint32))
    q = blob([e.mode, YTYPE[np.dtype(y.dtype)], *strides, e.row_bst, int(e.real_half), bias_st,
              alpha_bits])
    tiles = -(-fields["M"] // bm) * -(-fields["N"] // bn)
    grid = (min(tiles, (1 << 31) - 1), min(fields["batches"], 65535))
    fn(grid, (threads,), (a, b, y, *ptrs, q, pack_args(**fields)), shared_mem=smem)


def int_matmul(a: Any, b: Any, out_dtype, e: QEpilogue) -> Any:
    """numpy.matmul of 8-bit A and B (1-D operands promoted, batch broadcasting, any strides)
    through the integer engine; returns a new contiguous array of `out_dtype`."""
    a_shape, a_st = list(a.shape), list(elem_strides(a))
    b_shape, b_st = list(b.shape), list(elem_strides(b))
    if a.ndim == 1:
        a_shape, a_st = [1] + a_shape, [0] + a_st
    if b.ndim == 1:
        b_shape, b_st = b_shape + [1], b_st + [0]
    M, K = a_shape[-2:]
    K2, N = b_shape[-2:]
    if K != K2:
        raise ValueError(f"matmul inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    batch = tuple(int(v) for v in np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    full = batch + (M, N)
    y = empty(full, out_dtype)
    if y.size:
        y_st = list(elem_strides(y))
        a_bst = broadcast_strides(a_shape[:-2], a_st[:-2], batch)
        b_bst = broadcast_strides(b_shape[:-2], b_st[:-2], batch)
        bshape, (a_bst, b_bst, y_bst) = collapse(batch, [a_bst, b_bst, y_st[:-2]])
        if not batch:
            bshape, a_bst, b_bst, y_bst = [], [], [], []
        sam, sak, sbk, sbn = int(a_st[-2]), int(a_st[-1]), int(b_st[-2]), int(b_st[-1])
        sam, sbn = (0 if M == 1 else sam), (0 if N == 1 else sbn)
        fields = dict(M=M, N=N, K=K, batches=int(np.prod(batch, dtype=np.int64)) if batch else 1,
                      bshape=bshape, a_bst=a_bst, b_bst=b_bst, c_bst=[0] * len(bshape),
                      r_bst=[0] * len(bshape), y_bst=y_bst, sam=sam, sak=sak, sbn=sbn, sbk=sbk,
                      a_vec=_operand_mode(M, K, sam, sak, a_bst, a),
                      b_vec=_operand_mode(N, K, sbn, sbk, b_bst, b), jdiv=1 << 62,
                      y_m=y_st[-2], y_ji=y_st[-1])
        launch_qgemm("qgemm", a, b, y, e, fields, M, N)
    if a.ndim == 1 and b.ndim == 1:
        return y.reshape(())
    if a.ndim == 1:
        return y.reshape(y.shape[:-2] + y.shape[-1:])
    if b.ndim == 1:
        return y.reshape(y.shape[:-1])
    return y


class _IntMatMul(CudaKernel):
    """Keeps a K-major copy of a constant 2-D B (the weights): its bytes then stage with 16-byte
    copies instead of strided byte loads."""
    B_INPUT = 1

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self._kmajor: tuple | None = None

    def weight(self, b: Any) -> Any:
        ctx = getattr(self, "ctx", None)
        if b.ndim != 2 or ctx is None or not ctx.is_constant(self.B_INPUT) or elem_strides(b)[0] == 1:
            return b
        key = (_ptr(b), tuple(b.shape), b.dtype.str)
        if self._kmajor is None or self._kmajor[0] != key:
            from .tensor import transpose
            self._kmajor = (key, transpose(b, (1, 0)))   # (N, K), contiguous
        return self._kmajor[1].T


def _ints_ok(node, positions) -> bool:
    return all(dtype_in(input_dtype(node, k), I8) for k in positions if has_input(node, k))


def _vectors(node, positions) -> bool:
    """Whether these inputs (scales, zero points) are scalars or 1-D where their rank is known:
    other layouts (e.g. per-batch zero points of a 3-D B) go to the CPU provider."""
    from ep_core.types import tensor_shape
    for k in positions:
        if has_input(node, k) and k < len(node.input_types):
            shape = tensor_shape(node.input_types[k])
            if shape is not None and len(shape) > 1 and any(d != 1 for d in shape[:-1]):
                return False
    return True


@kernel("MatMulInteger", since=10)
class MatMulInteger(_IntMatMul):
    """int32 (A - a_zero_point) @ (B - b_zero_point); zero points scalar, per row of A, per
    column of B."""

    @classmethod
    def supports(cls, node) -> bool:
        return _ints_ok(node, (0, 1)) and input_dtype(node, 0) is not None \
            and input_dtype(node, 1) is not None and _vectors(node, (2, 3))

    def forward(self, a, b, a_zero_point=None, b_zero_point=None):
        return int_matmul(a, self.weight(b), np.int32, QEpilogue(MODE_INT32, a_zero_point, b_zero_point))


@kernel("QLinearMatMul", since=10)
class QLinearMatMul(_IntMatMul):
    """saturate(rint(float32(acc * a_scale * b_scale) / y_scale) + y_zero_point)."""
    B_INPUT = 3

    @classmethod
    def supports(cls, node) -> bool:
        scales = {input_dtype(node, k) for k in (1, 4, 6)}
        return (_ints_ok(node, (0, 3)) and dtype_in(node.output_dtypes[0] if node.output_dtypes else None, I8)
                and len(scales) == 1 and dtype_in(scales.pop(), (np.float32, np.float16))
                and _vectors(node, (1, 2, 4, 5, 6, 7)))

    def forward(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        e = QEpilogue(MODE_QMATMUL, a_zero_point, b_zero_point, a_scale, b_scale, y_scale, y_zero_point,
                      real_half=a_scale.dtype == np.float16)
        return int_matmul(a, self.weight(b), y_zero_point.dtype, e)


@kernel("MatMulIntegerToFloat", domain=MS)
class MatMulIntegerToFloat(_IntMatMul):
    """float32 (A - a_zero_point) @ (B - b_zero_point) * (a_scale * b_scale) + bias."""

    @classmethod
    def supports(cls, node) -> bool:
        f32 = np.dtype(np.float32)
        return _ints_ok(node, (0, 1)) and all(input_dtype(node, k) == f32 for k in (2, 3)) \
            and (not has_input(node, 6) or input_dtype(node, 6) == f32) and _vectors(node, (2, 3, 4, 5, 6))

    def forward(self, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        if a_scale.size != 1 or (a_zero_point is not None and a_zero_point.size != 1):
            raise ValueError("MatMulIntegerToFloat: a_scale and a_zero_point must be scalars")
        e = QEpilogue(MODE_FLOAT, a_zero_point, b_zero_point, a_scale, b_scale, bias=bias)
        return int_matmul(a, self.weight(b), np.float32, e)


@kernel("QGemm", domain=MS)
class QGemm(_IntMatMul):
    """alpha * a_scale * b_scale * ((A - a_zp) op (B - b_zp) + C) with C an int32 bias (scalar or
    per column), as float32, or requantized with y_scale / y_zero_point; op transposes per
    transA / transB (strides: no copies)."""
    B_INPUT = 3

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.trans_a = bool(self.attr("transA", 0))
        self.trans_b = bool(self.attr("transB", 0))

    @classmethod
    def supports(cls, node) -> bool:
        f32 = np.dtype(np.float32)
        quantized = has_input(node, 7)
        return (_ints_ok(node, (0, 3)) and input_dtype(node, 0) is not None
                and all(input_dtype(node, k) == f32 for k in (1, 4) + ((7,) if quantized else ()))
                and (not quantized or dtype_in(input_dtype(node, 8), I8))
                and (not has_input(node, 6) or input_dtype(node, 6) == np.dtype(np.int32))
                and _vectors(node, (1, 2, 4, 5, 6, 7, 8)))

    def weight(self, b):
        return super().weight(b.T if self.trans_b else b)

    def forward(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, c=None, y_scale=None,
                y_zero_point=None):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"QGemm: A and B must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
        n = b.shape[0] if self.trans_b else b.shape[1]
        if c is not None and c.size not in (1, n):
            raise NotImplementedError(f"QGemm: C of shape {tuple(c.shape)} (a scalar or {n} values)")
        mode = MODE_QGEMM if y_scale is not None else MODE_QGEMM_FLOAT
        e = QEpilogue(mode, a_zero_point, b_zero_point, a_scale, b_scale, y_scale, y_zero_point,
                      bias=c, alpha=self.alpha)
        out = y_zero_point.dtype if y_scale is not None else np.float32
        return int_matmul(a.T if self.trans_a else a, self.weight(b), out, e)


@kernel("DynamicQuantizeMatMul", domain=MS)
class DynamicQuantizeMatMul(_IntMatMul):
    """A (float32) quantized to uint8 on the device (DynamicQuantizeLinear's rule), then the
    integer product scaled to float32, + bias."""

    @classmethod
    def supports(cls, node) -> bool:
        f32 = np.dtype(np.float32)
        return input_dtype(node, 0) == f32 and _ints_ok(node, (1,)) and input_dtype(node, 2) == f32 \
            and (not has_input(node, 4) or input_dtype(node, 4) == f32) and _vectors(node, (2, 3, 4))

    def forward(self, a, b, b_scale, b_zero_point=None, bias=None):
        qa, a_scale, a_zp = dynamic_quantize(a)
        e = QEpilogue(MODE_FLOAT, a_zp, b_zero_point, a_scale, b_scale, bias=bias)
        return int_matmul(qa, self.weight(b), np.float32, e)


def int_conv(conv: ConvAttributes, x: Any, w: Any, out_dtype, e: QEpilogue, op: str) -> Any:
    """Integer convolution of 8-bit x (N, C, *spatial) and w (M, C/group, *kernel) through the
    implicit-GEMM engine: per group, W (M/G x C/G*kernel) @ im2col(x); e.za / e.srow per output
    channel (its row_bst is set here), e.zb the input's scalar zero point (also the padding)."""
    nd = x.ndim - 2
    ks, strides, dil, begin, _, outs = conv.geometry(list(x.shape[2:]), w.shape)
    group = conv.group
    N, C, M = x.shape[0], x.shape[1], w.shape[0]
    if C != w.shape[1] * group or M % group:
        raise ValueError(f"{op}: input channels {C}, weight {tuple(w.shape)}, group {group}")
    if e.zb is not None and e.zb.size != 1:
        raise NotImplementedError(f"{op}: the input's zero point must be a scalar")
    if e.za is not None and e.za.size not in (1, M):
        raise NotImplementedError(f"{op}: w_zero_point of {e.za.size} values, {M} channels")
    y = empty((N, M, *outs), out_dtype)
    if y.size == 0:
        return y
    cpg, mpg = C // group, M // group
    P, ksp = int(np.prod(outs)), int(np.prod(ks))
    Kd = cpg * ksp
    wk = contiguous(w)
    xs, ys = list(elem_strides(x)), list(elem_strides(y))
    fields = dict(M=mpg, N=N * P, K=Kd, batches=group, bshape=[group], a_bst=[mpg * Kd],
                  b_bst=[cpg * xs[1]], c_bst=[0], r_bst=[0], y_bst=[mpg * ys[1]], sam=Kd, sak=1,
                  a_vec=int(Kd % 16 == 0 and _aligned(wk, 16)), b_vec=0, jdiv=P,
                  y_m=ys[1], y_jo=ys[0], y_ji=_flat_spatial(y.shape, ys),
                  cv_cpg=cpg, cv_tapmajor=0, cv_ksp=ksp, cv_khw=int(np.prod(as3d(ks, 1)[1:])),
                  cv_k=as3d(ks, 1), cv_out=as3d(outs, 1), cv_in=as3d(x.shape[2:], 1),
                  cv_stride=as3d(strides, 1), cv_pad=as3d(begin, 0), cv_dil=as3d(dil, 1),
                  cv_xn=xs[0], cv_xc=xs[1], cv_xs=[0] * (3 - nd) + xs[2:])
    e.row_bst = mpg
    launch_qgemm("qconv", wk, x, y, e, fields, M, 1)
    return y


class _IntConv(CudaKernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)


@kernel("QLinearConv", since=10)
class QLinearConv(_IntConv):
    """Implicit-GEMM integer convolution, 1-D to 3-D, groups, per-channel weight scales and
    zero points, int32 bias, requantized; padding reads the input's zero point."""

    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node) and _ints_ok(node, (0, 3)) and input_dtype(node, 0) is not None \
            and dtype_in(node.output_dtypes[0] if node.output_dtypes else None, I8) \
            and _vectors(node, (1, 2, 4, 5, 6, 7, 8))

    def forward(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b=None):
        for what, p in (("x_scale", x_scale), ("y_scale", y_scale), ("y_zero_point", y_zero_point)):
            if p.size != 1:
                raise NotImplementedError(f"QLinearConv: {what} must be a scalar")
        e = QEpilogue(MODE_QCONV, w_zero_point, x_zero_point, w_scale, x_scale, y_scale, y_zero_point,
                      bias=b)
        return int_conv(self.conv, x, w, y_zero_point.dtype, e, "QLinearConv")


@kernel("ConvInteger", since=10)
class ConvInteger(_IntConv):
    """int32 convolution of (x - x_zero_point) and (w - w_zero_point), w's zero point scalar or
    per output channel (what quantize_dynamic writes for Conv)."""

    @classmethod
    def supports(cls, node) -> bool:
        return _rank_ok(node) and _ints_ok(node, (0, 1)) and input_dtype(node, 0) is not None \
            and input_dtype(node, 1) is not None and _vectors(node, (2, 3))

    def forward(self, x, w, x_zero_point=None, w_zero_point=None):
        return int_conv(self.conv, x, w, np.int32, QEpilogue(MODE_INT32, w_zero_point, x_zero_point),
                        "ConvInteger")
