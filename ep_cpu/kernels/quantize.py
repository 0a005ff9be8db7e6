"""Quantization: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked; int2/4/8/16,
float8/float4/float6 via ml_dtypes), DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, QLinearConv.

With a constant 2-D 8-bit B on a CPU with AVX-512 VNNI, integer products run in the int8
microkernel (`ep_cpu.microkernel_int8`: u8 x s8 -> int32, exact, B packed once per session;
`Int8Weight`). Otherwise they go through the float32 GEMM in K-blocks short enough that every partial sum
stays below 2**24, where float32 holds integers exactly (|a - za| * |b - zb| bounds each product;
with 8-bit values that is one block up to K ~ 258 worst case, usually far more from the actual
maxima); blocks are added in float64. Results are requantized with round-half-to-even.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import ConvAttributes, int_attr, invalid
from ep_core.types import np_dtype
from ep_cpu import conv_implicit, microkernel_int8
from ep_cpu.gemm import _get_pool, gemm, get_num_threads
from ep_cpu.kernels.conv import IMPLICIT_MIN_MACS, conv_nd
from ep_cpu.registry import kernel

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    ml_dtypes = None


def _int_range(dt: np.dtype) -> tuple[int, int] | None:
    """(lo, hi) for integer quantized types (incl. ml_dtypes int2/int4), None for float types."""
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return int(info.min), int(info.max)
    if ml_dtypes is not None:
        try:
            info = ml_dtypes.iinfo(dt)
            return int(info.min), int(info.max)
        except (ValueError, TypeError):
            return None
    return None


def _float_max(dt: np.dtype) -> float:
    return float(ml_dtypes.finfo(dt).max)


def _shape_param(p: np.ndarray, x: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """Scale/zero point broadcastable against x: scalar, per-axis (1-D) or blocked."""
    p = np.asarray(p)
    if p.size == 1 and (block_size <= 0 or x.ndim == 0):
        return p.reshape(())
    if x.ndim == 0:
        return p.reshape(())
    axis = axis + x.ndim if axis < 0 else axis
    if block_size > 0:
        rep = np.repeat(p, block_size, axis=axis)
        return np.take(rep, np.arange(x.shape[axis]), axis=axis)
    if p.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = p.shape[0]
        return p.reshape(shape)
    return p


def _to_float(a: np.ndarray, dt=np.float32) -> np.ndarray:
    return np.asarray(a).astype(dt)


def quantize(v: np.ndarray, zp: np.ndarray | None, out_dt: np.dtype, saturate: bool = True) -> np.ndarray:
    """v = x / scale (float); add the zero point, round half-to-even and saturate into out_dt."""
    rng = _int_range(out_dt)
    if rng is not None:
        # a new array (also for a 0-d input, where np.rint returns a scalar): the steps below
        # work in place
        r = np.array(v, dtype=np.float64)
        np.rint(r, out=r)
        if zp is not None:
            z = _to_float(zp, np.float64)
            if z.shape == () or np.broadcast_shapes(r.shape, z.shape) == r.shape:
                r += z
            else:
                r = r + z
        return np.clip(r, rng[0], rng[1], out=r).astype(out_dt)
    # float8 / float4 / float6 targets: zero point added in float, then a rounding cast.
    f = v.astype(np.float32)
    if zp is not None:
        f = f + _to_float(zp)
    if saturate or "float4" in out_dt.name or "float6" in out_dt.name:
        m = _float_max(out_dt)
        f = np.clip(f, -m, m)
    return f.astype(out_dt)


def _elem_dtype(node, name: str) -> np.dtype | None:
    """The dtype an element-type attribute names (None when omitted or 0)."""
    t = int_attr(node, name)
    if not t:
        return None
    try:
        return np_dtype(t)
    except Exception:
        raise invalid(node, f"{name} {t} is not a tensor element type") from None


class _QuantizeBase(Kernel):
    """axis / block_size / output_dtype, parsed once. Opsets before 13 have no axis and before
    21 no block_size: per-tensor or per-axis 1 there (the later schemas' defaults)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int_attr(node, "axis", 1)
        self.block = int_attr(node, "block_size", 0, minimum=0)
        self.output_dtype = _elem_dtype(node, "output_dtype")


@kernel("QuantizeLinear")
class QuantizeLinear(_QuantizeBase):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.precision = _elem_dtype(node, "precision")
        self.saturate = bool(int_attr(node, "saturate", 1))   # no attribute before opset 19
        declared = node.output_dtypes[0] if node.output_dtypes else None
        self.default_out = declared if declared is not None else np.dtype(np.uint8)

    def compute(self, x, y_scale, y_zero_point=None):
        axis, block = self.axis, self.block
        if y_zero_point is not None:
            out_dt = y_zero_point.dtype
        else:
            out_dt = self.default_out if self.output_dtype is None else self.output_dtype
        pdt = y_scale.dtype if self.precision is None else self.precision
        if pdt.kind not in "f" and "bfloat16" not in pdt.name:
            pdt = np.dtype(np.float32)  # int32 / float8e8m0 scales divide in float32
        scale = _shape_param(y_scale, x, axis, block).astype(pdt)
        v = x.astype(pdt) / scale
        zp = None if y_zero_point is None else _shape_param(y_zero_point, x, axis, block)
        return quantize(v, zp, out_dt, self.saturate)


@kernel("DequantizeLinear")
class DequantizeLinear(_QuantizeBase):
    def compute(self, x, x_scale, x_zero_point=None):
        axis, block = self.axis, self.block
        out_dt = x_scale.dtype if self.output_dtype is None else self.output_dtype
        if out_dt.kind != "f" and "bfloat16" not in out_dt.name:
            out_dt = np.dtype(np.float32)  # float8e8m0 scales: output float32
        wide = np.float64 if x.dtype.itemsize >= 4 else np.float32
        d = x.astype(wide)
        if x_zero_point is not None:
            d = d - _shape_param(x_zero_point, x, axis, block).astype(wide)
        scale = _shape_param(x_scale, x, axis, block)
        # The output type decides the precision of the multiplication.
        y = d.astype(out_dt) * scale.astype(out_dt)
        return np.asarray(y, dtype=out_dt)


def dynamic_quantize_uint8(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """DynamicQuantizeLinear's rule (onnxruntime's for every dynamically quantized input):
    a uint8 range spanning [min(x, 0), max(x, 0)]; returns (q, scale, zero point)."""
    xf = x.astype(np.float32, copy=False)
    lo = min(0.0, float(xf.min())) if xf.size else 0.0
    hi = max(0.0, float(xf.max())) if xf.size else 0.0
    scale = np.float32((hi - lo) / 255.0)
    if scale == 0:
        return np.zeros(x.shape, dtype=np.uint8), scale, np.uint8(0)
    zp = np.uint8(np.clip(np.rint(np.float32(0 - lo) / scale), 0, 255))
    if microkernel_int8.numba is not None and np.isfinite(scale) and xf.flags.c_contiguous:
        q = np.empty(x.shape, np.uint8)   # one compiled pass instead of five numpy ones
        microkernel_int8.quantize_u8(xf.reshape(-1), scale, np.float32(zp), q.reshape(-1))
        return q, scale, zp
    return np.clip(np.rint(xf / scale) + np.float32(zp), 0, 255).astype(np.uint8), scale, zp


@kernel("DynamicQuantizeLinear")
class DynamicQuantizeLinear(Kernel):
    def compute(self, x):
        y, scale, zp = dynamic_quantize_uint8(x)
        return y, np.asarray(scale, dtype=np.float32), np.asarray(zp, dtype=np.uint8)


def _shifted(a: np.ndarray, zp: np.ndarray | None, per_row: bool) -> np.ndarray:
    """a - zp as exact floats: float32 for inputs of up to 16 bits, float64 above. A 1-D zero
    point is per row of A (per_row) or per column of B."""
    wide = np.float32 if a.dtype.itemsize <= 2 else np.float64
    af = a.astype(wide)
    if zp is None:
        return af
    z = np.asarray(zp).astype(wide)
    if z.size == 1:
        return af - z.reshape(())
    if per_row and a.ndim >= 2 and z.ndim == 1:
        return af - z.reshape(-1, 1)
    return af - z  # per column of B (or an already-broadcastable shape)


EXACT_F32 = float(1 << 24)   # float32 holds every integer of magnitude up to this


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matmul through gemm when B is one matrix."""
    if b.ndim == 2 and a.ndim >= 2:
        return gemm(a, b)
    if a.ndim == 1 and b.ndim == 2:
        return gemm(a[None], b)[0]
    return np.matmul(a, b)


def _max_abs(x: np.ndarray) -> float:
    return float(max(x.max(), -x.min())) if x.size else 0.0


def exact_int_matmul(a: np.ndarray, b: np.ndarray, bound_a: float | None = None,
                     bound_b: float | None = None, blocks: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Exact product of float32 arrays holding integers: K-blocks whose partial sums stay below
    2**24 run in the float32 GEMM; several blocks are summed in float64. `bound_a`/`bound_b` are
    known bounds of |a| / |b| (measured when omitted); `blocks` are K ranges already known to be
    short enough (`exact_k_blocks`)."""
    k = a.shape[-1]
    if blocks is None:
        prod = (_max_abs(a) if bound_a is None else bound_a) * (_max_abs(b) if bound_b is None else bound_b)
        kb = k if prod == 0 else max(1, int((EXACT_F32 - 1) // prod))
        blocks = [(k0, min(k, k0 + kb)) for k0 in range(0, k, kb)]
    if len(blocks) <= 1:
        return _matmul(a, b)
    acc = None
    for k0, k1 in blocks:
        part = _matmul(a[..., k0:k1], b[..., k0:k1, :])
        acc = part.astype(np.float64) if acc is None else np.add(acc, part, out=acc)
    return acc


def exact_k_blocks(b: np.ndarray, bound_a: float) -> list[tuple[int, int]]:
    """K ranges of a constant integer B (K, N) over which every partial sum of A @ B stays below
    2**24 when |A| <= bound_a: a block's worst case is bound_a times its largest column sum of |B|,
    usually far below the product of the two maxima, so one or two blocks cover BERT's K."""
    k = b.shape[0]
    if k == 0 or bound_a == 0:
        return [(0, k)]
    limit = (EXACT_F32 - 1) / bound_a
    cum = np.cumsum(np.abs(b, dtype=np.float64), axis=0)
    blocks, k0, base = [], 0, np.zeros(b.shape[1])
    while k0 < k:
        fits = np.nonzero((cum[k0:] - base).max(axis=1) <= limit)[0]
        k1 = k0 + (int(fits[-1]) + 1 if fits.size else 1)   # column sums only grow along K
        blocks.append((k0, k1))
        base, k0 = cum[k1 - 1], k1
    return blocks


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact matmul of float arrays holding integers (from `_shifted`)."""
    if a.dtype == np.float32 and b.dtype == np.float32 and b.ndim >= 2:
        return exact_int_matmul(a, b)
    return _matmul(a.astype(np.float64, copy=False), b.astype(np.float64, copy=False))


_BYTE_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))


class Int8Weight:
    """A constant (K, N) int8/uint8 B with its zero point packed for the VNNI microkernel; the
    products (A - a_zero_point) @ (B - b_zero_point) of 8-bit A (any rank, scalar zero point)
    as exact int32 or as float32 scaled per column (+ bias) in the tile."""

    def __init__(self, b: np.ndarray, zero_point: np.ndarray | None) -> None:
        self.k, self.n = b.shape
        self.packed = microkernel_int8.pack_weight(b, zero_point)

    @staticmethod
    def make(b: np.ndarray | None, zero_point: np.ndarray | None, has_zero_point: bool) -> "Int8Weight | None":
        """The packed weight when the microkernel applies: VNNI, B a 2-D 8-bit constant and its
        zero point a constant scalar or (N,) vector of B's type (or absent); else None."""
        if b is None or b.ndim != 2 or b.dtype not in _BYTE_TYPES or b.size == 0 \
                or not microkernel_int8.available():
            return None
        if has_zero_point and (zero_point is None or zero_point.dtype != b.dtype
                               or zero_point.size not in (1, b.shape[1]) or zero_point.ndim > 1):
            return None
        return Int8Weight(b, zero_point if has_zero_point else None)

    def accepts(self, a: np.ndarray, a_zero_point) -> bool:
        return (a.dtype in _BYTE_TYPES and a.ndim >= 1 and a.shape[-1] == self.k
                and (a_zero_point is None or (np.size(a_zero_point) == 1 and a_zero_point.dtype == a.dtype)))

    def _run(self, ap, rows, m, za, mult, bias, out_shape, dtype) -> np.ndarray:
        y = np.empty((m, self.n), dtype)
        if m:
            microkernel_int8.matmul(ap, rows, m, self.packed, za, mult, bias, y.view(np.int32),
                                    get_num_threads(), _get_pool)
        return y.reshape(out_shape)

    def matmul(self, a: np.ndarray, a_zero_point=None, mult: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> np.ndarray:
        """int32 (A - za) @ (B - zb) (mult None), else float32 that times mult (N,) plus bias (N,)."""
        a2 = a.reshape(-1, self.k)
        m = a2.shape[0]
        za = 0 if a_zero_point is None else int(np.asarray(a_zero_point).reshape(-1)[0])
        if a.dtype == np.int8:
            za += 128   # the packing shifts int8 values into uint8
        ap, rows = microkernel_int8.pack_rows_u8(a2, microkernel_int8.choose_mr(max(m, 1)))
        return self._run(ap, rows, m, za, mult, bias, a.shape[:-1] + (self.n,),
                         np.int32 if mult is None else np.float32)

    def dynamic_matmul(self, x: np.ndarray, b_scale: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """float32 x quantized to uint8 on the fly (DynamicQuantizeLinear's rule), times B,
        scaled by x_scale * b_scale (float32) plus bias: DynamicQuantizeMatMul in one pass each."""
        x2 = x.reshape(-1, self.k)
        m = x2.shape[0]
        ap, rows, scale, zp = microkernel_int8.quantize_pack(x2, microkernel_int8.choose_mr(max(m, 1)),
                                                             get_num_threads())
        mult = np.float32(scale) * b_scale
        return self._run(ap, rows, m, zp, mult, bias, x.shape[:-1] + (self.n,), np.float32)


def int8_batched_matmul(a: np.ndarray, b: np.ndarray, a_zero_point, b_zero_point,
                        mult: float | None = None) -> np.ndarray | None:
    """(A - za) @ (B - zb) of two 8-bit tensors given per call (attention's products) in the int8
    microkernel: int32, or float32 times `mult`. None where it does not apply (no VNNI, 1-D
    operands, batch axes that differ (broadcasting), zero points that are not scalars)."""
    if not (a.dtype in _BYTE_TYPES and b.dtype in _BYTE_TYPES and a.ndim >= 2 and b.ndim >= 2
            and a.shape[:-2] == b.shape[:-2] and a.shape[-1] == b.shape[-2] and a.size and b.size
            and microkernel_int8.available()):
        return None
    for zp, x in ((a_zero_point, a), (b_zero_point, b)):
        if zp is not None and (np.size(zp) != 1 or np.asarray(zp).dtype != x.dtype):
            return None
    za = 0 if a_zero_point is None else int(np.asarray(a_zero_point).reshape(-1)[0])
    zb = 0 if b_zero_point is None else int(np.asarray(b_zero_point).reshape(-1)[0])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    y = microkernel_int8.matmul_batched(a.reshape(-1, m, k), b.reshape(-1, k, n), za, zb, mult,
                                        get_num_threads(), _get_pool)
    return y.reshape(a.shape[:-1] + (n,))


class _ConstantInt8B(Kernel):
    """MatMulInteger / QLinearMatMul: B (input `b_index`) and its zero point (`zp_index`) packed
    once when they are constants."""
    b_index = zp_index = 1

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        has_zp = len(node.inputs) > self.zp_index and bool(node.inputs[self.zp_index])
        self.int8 = Int8Weight.make(ctx.constant_input(self.b_index), ctx.constant_input(self.zp_index)
                                    if has_zp else None, has_zp)


@kernel("MatMulInteger")
class MatMulInteger(_ConstantInt8B):
    b_index, zp_index = 1, 3

    def compute(self, a, b, a_zero_point=None, b_zero_point=None):
        if self.int8 is not None and self.int8.accepts(a, a_zero_point):
            return self.int8.matmul(a, a_zero_point)
        y = int8_batched_matmul(a, b, a_zero_point, b_zero_point)
        if y is not None:
            return y
        y = _int_matmul(_shifted(a, a_zero_point, True), _shifted(b, b_zero_point, False))
        return np.rint(y).astype(np.int32)


@kernel("QLinearMatMul")
class QLinearMatMul(_ConstantInt8B):
    b_index, zp_index = 3, 5

    def compute(self, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        if self.int8 is not None and self.int8.accepts(a, a_zero_point):
            acc = self.int8.matmul(a, a_zero_point).astype(np.float64)
        else:
            acc = _int_matmul(_shifted(a, a_zero_point, True), _shifted(b, b_zero_point, False))
        sdt = a_scale.dtype if a_scale.dtype.kind == "f" else np.dtype(np.float32)
        a_s = np.asarray(a_scale).astype(np.float64)
        b_s = np.asarray(b_scale).astype(np.float64)
        a_s = a_s.reshape(()) if a_s.size == 1 else a_s.reshape(-1, 1)
        b_s = b_s.reshape(()) if b_s.size == 1 else b_s
        # Real-valued product in the scales' precision, then requantized with y_scale.
        real = (acc * (a_s * b_s)).astype(sdt)
        v = real.astype(np.float64) / np.asarray(y_scale).astype(np.float64).reshape(
            () if np.size(y_scale) == 1 else -1)
        zp = np.asarray(y_zero_point)
        return quantize(v, zp.reshape(()) if zp.size == 1 else zp, y_zero_point.dtype)


def _conv_weight_shifted(w: np.ndarray, w_zero_point) -> np.ndarray:
    wz = np.asarray(w_zero_point).astype(np.float32)
    return w.astype(np.float32) - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(()))


def _conv_channel_blocks(wf: np.ndarray, group: int) -> list[tuple[int, int]] | None:
    """Input-channel ranges over which the float32 conv of 8-bit values stays exact (|x - xz| <= 255),
    from each output channel's sum of |w|; None when a grouped conv would need splitting (float64)."""
    per_channel = np.abs(wf).reshape(wf.shape[0], wf.shape[1], -1).sum(axis=2)   # (M, C/group)
    if group > 1:
        return [(0, wf.shape[1])] if 255.0 * per_channel.sum(axis=1).max(initial=0) < EXACT_F32 else None
    return exact_k_blocks(per_channel.T, 255.0)


@kernel("QLinearConv")
class QLinearConv(Kernel):
    """The accumulator runs through the float conv paths (im2col + GEMM) in float32, exact: input
    channels are split into blocks whose worst-case partial sums (255 x the output channel's sum of
    |w - wz|) stay below 2**24, blocks summed in float64. Constant weights are shifted and their
    blocks found once."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.conv = ConvAttributes.from_node(node)
        w, wz = ctx.constant_input(3), ctx.constant_input(5)
        self.wf = self.blocks = self.implicit = None
        if w is not None and wz is not None and w.dtype.itemsize == 1:
            self.wf = _conv_weight_shifted(w, wz)
            self.blocks = _conv_channel_blocks(self.wf, self.conv.group)
            # 2-D ungrouped: each channel block's weight packed for the compiled implicit-GEMM
            # conv that FP32 Conv uses (exact here: every partial sum is a bounded integer).
            if (self.blocks is not None and self.conv.group == 1 and w.ndim == 4
                    and conv_implicit.available()):
                self.implicit = [conv_implicit.pack_weight(np.ascontiguousarray(self.wf[:, c0:c1]))
                                 for c0, c1 in self.blocks]

    def _accumulate(self, x, x_zero_point, w, w_zero_point, b, geometry) -> np.ndarray:
        strides, dil, begin, end, out = geometry
        group = self.conv.group
        if x.dtype.itemsize == 1 and w.dtype.itemsize == 1:
            wf, blocks = self.wf, self.blocks
            if wf is None or wf.shape != w.shape:
                wf = _conv_weight_shifted(w, w_zero_point)
                blocks = _conv_channel_blocks(wf, group)
            if blocks is not None:
                xf = x.astype(np.float32) - np.float32(np.asarray(x_zero_point).reshape(-1)[0])
                if self._implicit_ok(x, w, geometry):
                    return self._implicit_acc(xf, w.shape[0], b, geometry)
                acc = None
                for c0, c1 in blocks:
                    part = conv_nd(xf[:, c0:c1] if len(blocks) > 1 else xf, wf[:, c0:c1] if len(blocks) > 1 else wf,
                                   group, strides, dil, begin, end, out)
                    acc = part.astype(np.float64) if acc is None else np.add(acc, part, out=acc)
                if b is not None:
                    acc = np.add(acc, b.astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2)),
                                 dtype=np.float64)
                return acc
        xf = x.astype(np.float64) - np.float64(np.asarray(x_zero_point).reshape(-1)[0])
        wf = _conv_weight_shifted(w, w_zero_point).astype(np.float64)
        return conv_nd(xf, wf, group, strides, dil, begin, end, out, None if b is None else b.astype(np.float64))

    def _implicit_ok(self, x, w, geometry) -> bool:
        out = geometry[4]
        macs = x.shape[0] * w.shape[0] * math.prod(w.shape[1:]) * math.prod(out)
        return (self.implicit is not None and w.shape == self.wf.shape and x.ndim == 4 and min(out) > 0
                and macs >= IMPLICIT_MIN_MACS)

    def _implicit_acc(self, xf, m, b, geometry) -> np.ndarray:
        strides, dil, begin, end, out = geometry
        ks = list(self.wf.shape[2:])
        acc = None
        for (c0, c1), packed in zip(self.blocks, self.implicit):
            xb = xf if len(self.blocks) == 1 else np.ascontiguousarray(xf[:, c0:c1])
            part = conv_implicit.conv2d(xb, packed, m, ks, strides, dil, begin, end, out, None, None, None,
                                        get_num_threads(), _get_pool)
            acc = part if acc is None else np.add(acc, part, dtype=np.float64)
        if b is not None:   # float64: a float32 sum with the int32 bias could round
            acc = np.add(acc, b.astype(np.float64).reshape(1, -1, 1, 1), dtype=np.float64)
        return acc

    def compute(self, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b=None):
        nd = x.ndim - 2
        _, strides, dil, begin, end, out = self.conv.geometry(x.shape[2:], w.shape)
        acc = self._accumulate(x, x_zero_point, w, w_zero_point, b, (strides, dil, begin, end, out))
        ws = np.asarray(w_scale).astype(np.float64)
        ws = ws.reshape(()) if ws.size == 1 else ws.reshape((1, -1) + (1,) * nd)
        mult = (np.float64(np.asarray(x_scale).reshape(-1)[0]) * ws
                / np.float64(np.asarray(y_scale).reshape(-1)[0]))
        # The combined multiplier is a float32 value, as in onnxruntime's requantization; the
        # product is taken in float64 (acc may be float32 holding exact integers).
        return quantize(np.multiply(acc, mult.astype(np.float32).astype(np.float64), dtype=np.float64),
                        np.asarray(y_zero_point).reshape(()), y_zero_point.dtype)
