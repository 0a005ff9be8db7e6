"""onnxruntime's quantized contrib ops (`com.microsoft`): DynamicQuantizeMatMul,
MatMulIntegerToFloat, MatMulInteger16, QGemm, MatMulNBits, GatherBlockQuantized, the contrib
QuantizeLinear / DequantizeLinear, QAttention and DynamicQuantizeLSTM.

Integer products with a constant 8-bit B run in the int8 VNNI microkernel where the CPU has it
(`quantize.Int8Weight`: B packed once, the scaling and bias in the tile's epilogue, and for
DynamicQuantizeMatMul A quantized straight into the kernel's panels); otherwise they go through
`quantize._int_matmul` (the float32 GEMM in K-blocks short enough to stay exact, blocks summed
in float64), then are scaled as onnxruntime does: one float32 multiplier a_scale * b_scale
(per column where B is quantized per column). Dynamically quantized inputs follow
`quantize.dynamic_quantize_uint8` (DynamicQuantizeLinear's rule, onnxruntime's too).
Block-quantized weights (MatMulNBits) are dequantized once when they are session constants and
kept in float32; the product then runs at float32 accuracy whatever `accuracy_level` asks.
"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_cpu.gemm import gemm, pack_constant
from ep_cpu.registry import kernel

from .contrib_common import MS, required
from .contrib_attention import Attention
from .quantize import (DequantizeLinear as _OnnxDequantizeLinear, QuantizeLinear as _OnnxQuantizeLinear,
                       Int8Weight, _int_matmul, int8_batched_matmul, _shifted, dynamic_quantize_uint8,
                       exact_k_blocks, quantize)
from .rnn import LSTM


def _per_column(p: np.ndarray | None) -> np.ndarray | None:
    """A scale / zero point that is a scalar or one value per output column, as a broadcastable array."""
    if p is None:
        return None
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else p


def _n_of(b: np.ndarray | None) -> int:
    """Columns of a 2-D B (-1 otherwise: no per-column size matches)."""
    return b.shape[1] if b is not None and b.ndim == 2 else -1


def _scaled(acc: np.ndarray, a_scale, b_scale, bias=None, out_dtype=np.float32) -> np.ndarray:
    """acc * (a_scale * b_scale) [+ bias]: the float32 multiplier of onnxruntime's requantization."""
    mult = (np.asarray(a_scale, np.float32).reshape(()) * _per_column(b_scale).astype(np.float32))
    y = (acc * mult.astype(np.float64)).astype(np.float32)
    if bias is not None:
        y += bias.astype(np.float32)
    return y.astype(out_dtype, copy=False)


@kernel("DynamicQuantizeMatMul", domain=MS)
class DynamicQuantizeMatMul(Kernel):
    """A (float) quantized on the fly to uint8, times B (int8/uint8, per-tensor or per-column).

    With B, its scale and zero point session constants (the quantization tools' output), B - zb
    is kept in float32 with the K-blocks that keep its products exact, and A is quantized straight into float32
    values q - za: one exact float32 GEMM (in K-blocks where the bound needs them) and a float32
    epilogue y = acc * (a_scale * b_scale) + bias, the same single rounding as the reference."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        consts = [ctx.constant_input(k) for k in (1, 2, 3)]
        self.b32 = None
        has_zp = len(node.inputs) > 3 and bool(node.inputs[3])
        self.int8 = None
        if consts[1] is not None and consts[1].dtype == np.float32 and consts[1].size in (1, _n_of(consts[0])):
            self.int8 = Int8Weight.make(consts[0], consts[2], has_zp)
        if self.int8 is not None:
            self.b_scale = np.broadcast_to(consts[1].reshape(-1), (self.int8.n,)).astype(np.float32)
        elif consts[0] is not None and consts[0].ndim == 2 and consts[1] is not None and (consts[2] is not None or not has_zp):
            self.b32 = np.ascontiguousarray(_shifted(consts[0], _per_column(consts[2]), False), np.float32)
            self.blocks = exact_k_blocks(self.b32, 255.0)   # |q - za| <= 255 for any uint8 A
            # Each K-block of B packed as a constant float32 B: the FP32 MatMul's compiled path.
            self.b_parts = [pack_constant(np.ascontiguousarray(self.b32[k0:k1])) or self.b32[k0:k1]
                            for k0, k1 in self.blocks]
            self.b_scale = _per_column(consts[1]).astype(np.float32)

    def compute(self, a, b, b_scale, b_zero_point=None, bias=None):
        if (self.int8 is not None and a.dtype == np.float32 and a.ndim >= 1 and a.shape[-1] == self.int8.k
                and (bias is None or (bias.dtype == np.float32 and bias.shape == (self.int8.n,)))):
            return self.int8.dynamic_matmul(a, self.b_scale, bias)
        if self.b32 is None or a.shape[-1] != self.b32.shape[0]:
            qa, a_scale, a_zp = dynamic_quantize_uint8(a)
            acc = _int_matmul(_shifted(qa, a_zp, False), _shifted(b, _per_column(b_zero_point), False))
            return _scaled(acc, a_scale, b_scale, bias)
        qa, a_scale, a_zp = _dynamic_quantize_shifted(a)
        acc = None
        for (k0, k1), part_b in zip(self.blocks, self.b_parts):
            part = gemm(qa if len(self.blocks) == 1 else qa[..., k0:k1], part_b)
            acc = part if acc is None else (acc.astype(np.float64) if acc.dtype == np.float32 else acc) + part
        mult = np.float32(a_scale) * self.b_scale
        if acc.dtype == np.float32:   # exact integers times a float32: one rounding, as in float64
            y = np.multiply(acc, mult, out=acc)
        else:
            y = (acc * mult.astype(np.float64)).astype(np.float32)
        if bias is not None:
            y += bias.astype(np.float32, copy=False)
        return y


def _dynamic_quantize_shifted(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """`dynamic_quantize_uint8` giving q - zero_point directly as float32 (the same values)."""
    xf = x.astype(np.float32, copy=False)
    lo = min(0.0, float(xf.min())) if xf.size else 0.0
    hi = max(0.0, float(xf.max())) if xf.size else 0.0
    scale = np.float32((hi - lo) / 255.0)
    if scale == 0:
        return np.zeros(x.shape, np.float32), scale, 0
    zp = int(np.clip(np.rint(np.float32(0 - lo) / scale), 0, 255))
    q = np.divide(xf, scale)
    np.rint(q, out=q)
    # clip(q + zp, 0, 255) - zp on integers held exactly in float32: one pass instead of three
    np.clip(q, np.float32(-zp), np.float32(255 - zp), out=q)
    return q, scale, zp


@kernel("MatMulIntegerToFloat", domain=MS)
class MatMulIntegerToFloat(Kernel):
    """(A - a_zero_point) @ (B - b_zero_point) * a_scale * b_scale + bias, in the scales' type.
    With a constant 8-bit B and float32 scales: the int8 microkernel, scaled in its tiles by
    the float32 a_scale * b_scale (one rounding, as the unfused Cast -> Mul)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        has_zp = len(node.inputs) > 5 and bool(node.inputs[5])
        b, b_scale = ctx.constant_input(1), ctx.constant_input(3)
        self.int8 = None
        if b_scale is not None and b_scale.dtype == np.float32 and b_scale.size in (1, _n_of(b)):
            self.int8 = Int8Weight.make(b, ctx.constant_input(5), has_zp)
        if self.int8 is not None:
            self.b_scale = np.broadcast_to(b_scale.reshape(-1), (self.int8.n,)).astype(np.float32)

    def compute(self, a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None):
        if np.size(a_scale) != 1 or (a_zero_point is not None and np.size(a_zero_point) != 1):
            raise InvalidArgument(f"{self.node.describe()}: a_scale and a_zero_point must be scalars")
        if (self.int8 is not None and a_scale.dtype == np.float32 and self.int8.accepts(a, a_zero_point)
                and (bias is None or (bias.dtype == np.float32 and bias.shape == (self.int8.n,)))):
            mult = np.float32(np.asarray(a_scale).reshape(-1)[0]) * self.b_scale
            return self.int8.matmul(a, a_zero_point, mult, bias)
        if bias is None and a_scale.dtype == np.float32 and np.size(b_scale) == 1 and b_scale.dtype == np.float32:
            mult = np.float32(np.asarray(a_scale).reshape(-1)[0]) * np.float32(np.asarray(b_scale).reshape(-1)[0])
            y = int8_batched_matmul(a, b, a_zero_point, b_zero_point, float(mult))
            if y is not None:
                return y
        acc = _int_matmul(_shifted(a, _per_column(a_zero_point), False),
                          _shifted(b, _per_column(b_zero_point), False))
        return _scaled(acc, a_scale, b_scale, bias, a_scale.dtype)


@kernel("MatMulInteger16", domain=MS)
class MatMulInteger16(Kernel):
    """int16 x int16 -> int32 numpy-style matmul (exact)."""

    def compute(self, a, b):
        y = _int_matmul(a.astype(np.float64), b.astype(np.float64))
        out = np.int32 if a.dtype == np.int16 or b.dtype == np.int16 else np.uint32
        return np.rint(y).astype(np.int64).astype(out)


@kernel("QGemm", domain=MS)
class QGemm(Kernel):
    """alpha * a_scale * b_scale * ((A - a_zp) op (B - b_zp) + C), C an int32 bias already in that
    scale; quantized with y_scale / y_zero_point when given, else float32."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.alpha = float(self.attr("alpha", 1.0))
        self.trans_a = bool(self.attr("transA", 0))
        self.trans_b = bool(self.attr("transB", 0))

    def compute(self, a, a_scale, a_zp, b, b_scale, b_zp, c=None, y_scale=None, y_zp=None):
        af = _shifted(a, a_zp, False)
        bf = b.astype(np.float64) - (0 if b_zp is None else
                                     np.asarray(b_zp, np.float64).reshape((-1, 1) if self.trans_b else (-1,))
                                     if np.size(b_zp) > 1 else np.asarray(b_zp, np.float64).reshape(()))
        acc = gemm(af.T if self.trans_a else af, bf.T if self.trans_b else bf)
        if c is not None:
            acc = acc + c.astype(np.float64)
        mult = np.float32(self.alpha) * np.asarray(a_scale, np.float32).reshape(()) * \
            _per_column(b_scale).astype(np.float32)
        if y_scale is None:
            return (acc * mult.astype(np.float64)).astype(np.float32)
        mult = (mult / np.asarray(y_scale, np.float32).reshape(())).astype(np.float32)
        return quantize(acc * mult.astype(np.float64), np.asarray(y_zp).reshape(()), y_zp.dtype)


@kernel("QuantizeLinear", domain=MS)
class QuantizeLinear(_OnnxQuantizeLinear):
    """Contrib QuantizeLinear: ONNX's semantics (per tensor or per `axis`, default axis 1), with
    16-bit and 4-bit outputs at any opset."""


@kernel("DequantizeLinear", domain=MS)
class DequantizeLinear(_OnnxDequantizeLinear):
    """Contrib DequantizeLinear: ONNX's semantics, 16/32-bit and 4-bit inputs at any opset."""


# --------------------------------------------------------------------------- block-quantized weights
def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unsigned `bits`-wide values packed low-bits-first along the last axis; first `count` kept."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[..., :count]
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits)
        vals = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
        return vals.reshape(packed.shape[:-1] + (-1,))[..., :count]
    stream = np.unpackbits(packed, axis=-1, bitorder="little")
    usable = stream.shape[-1] // bits * bits
    stream = stream[..., :usable].reshape(packed.shape[:-1] + (-1, bits))
    weights = (1 << np.arange(bits)).astype(np.uint16)
    return (stream.astype(np.uint16) @ weights).astype(np.uint8)[..., :count]


@kernel("MatMulNBits", domain=MS)
class MatMulNBits(Kernel):
    """A (..., K) @ dequantized B^T + bias, B (N, k_blocks, blob) holding `bits`-bit values
    block-wise along K: w = (q - zero_point) * scale, zero point 2^(bits-1) by default."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.k = int(required(self, "K"))
        self.n = int(required(self, "N"))
        self.bits = int(self.attr("bits", 4))
        self.block = int(required(self, "block_size"))
        if not 2 <= self.bits <= 8 or self.block < 16 or self.block & (self.block - 1):
            raise InvalidArgument(f"{node.describe()}: bits must be 2..8 and block_size a power of two "
                                  f">= 16, got bits={self.bits}, block_size={self.block}")
        if int(self.attr("weight_prepacked", 0)):
            raise InvalidArgument(f"{node.describe()}: weight_prepacked layouts are GPU-specific")
        consts = [ctx.constant_input(k) for k in (1, 2, 3, 4)]
        self.weight = None
        if all(c is not None or k >= len(node.inputs) or not node.inputs[k]
               for k, c in zip((1, 2, 3, 4), consts)):
            self.weight = self.dequantized(*consts)   # (K, N) float32, once per session

    def dequantized(self, b, scales, zero_points=None, g_idx=None) -> np.ndarray:
        k, n, bits, block = self.k, self.n, self.bits, self.block
        k_blocks = -(-k // block)
        if b.size == 0:
            return np.zeros((k, n), np.float32)
        q = unpack_bits(b.reshape(n, k_blocks, -1), bits, block).reshape(n, k_blocks * block)[:, :k]
        scales = np.asarray(scales, np.float32).reshape(n, k_blocks)
        if zero_points is None:
            zp = np.full((n, k_blocks), 1 << (bits - 1), np.float32)
        elif zero_points.dtype == np.uint8:
            zp = unpack_bits(zero_points.reshape(n, -1), bits, k_blocks).astype(np.float32)
        else:
            zp = np.asarray(zero_points, np.float32).reshape(n, k_blocks)
        blk = (np.arange(k) // block if g_idx is None or g_idx.size == 0
               else np.asarray(g_idx, np.int64).reshape(-1)[:k])
        w = (q.astype(np.float32) - zp[:, blk]) * scales[:, blk]
        return np.ascontiguousarray(w.T)

    def compute(self, a, b, scales, zero_points=None, g_idx=None, bias=None):
        if a.shape[-1] != self.k:
            raise InvalidArgument(f"{self.node.describe()}: A's last dim {a.shape[-1]} != K {self.k}")
        w = self.weight if self.weight is not None else self.dequantized(b, scales, zero_points, g_idx)
        a32 = a.astype(np.float32, copy=False)
        y = gemm(a32[None] if a.ndim == 1 else a32, w, None if bias is None else bias.astype(np.float32))
        return (y[0] if a.ndim == 1 else y).astype(a.dtype, copy=False)


def _is_float_data(dt: np.dtype) -> bool:
    return "float" in dt.name  # float8 / float4 ml_dtypes


@kernel("GatherBlockQuantized", domain=MS)
class GatherBlockQuantized(Kernel):
    """Gather along `gather_axis` from block-quantized data, dequantized with the scales (and zero
    points) of blocks of `block_size` along `quantize_axis`. uint8 data packs `bits`-bit values
    along the last axis (default zero point 2^(bits-1)); int4/uint4 default to zero point 0;
    float8/float4 data are scaled only. Out-of-range indices give zeros."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.gather_axis = int(self.attr("gather_axis", 0))
        self.quantize_axis = int(self.attr("quantize_axis", 1))
        self.block = int(self.attr("block_size", 128))
        self.bits = int(self.attr("bits", 4))

    def _values(self, data: np.ndarray, zero_points) -> tuple[np.ndarray, np.ndarray | None]:
        """(quantized values as float32 with the logical shape, zero points as float32)."""
        if data.dtype == np.uint8:
            per = 8 // self.bits
            shape = data.shape[:-1] + (data.shape[-1] * per,)
            q = unpack_bits(data, self.bits, shape[-1]).astype(np.float32)
            if zero_points is None:
                return q, np.float32(1 << (self.bits - 1))
            zshape = zero_points.shape[:-1] + (zero_points.shape[-1] * per,)
            return q, unpack_bits(zero_points, self.bits, zshape[-1]).astype(np.float32)
        q = data.astype(np.float32)
        return q, (None if zero_points is None else zero_points.astype(np.float32))

    def compute(self, data, indices, scales, zero_points=None):
        float_data = _is_float_data(data.dtype)
        q, zp = self._values(data, None if float_data else zero_points)
        r = q.ndim
        g_axis = self.gather_axis + r if self.gather_axis < 0 else self.gather_axis
        q_axis = self.quantize_axis + r if self.quantize_axis < 0 else self.quantize_axis
        if not (0 <= g_axis < r and 0 <= q_axis < r) or scales.ndim != r:
            raise InvalidArgument(f"{self.node.describe()}: gather_axis/quantize_axis out of range or "
                                  f"scales of rank {scales.ndim} for data of rank {r}")
        block = self.block or q.shape[q_axis]
        n = q.shape[g_axis]
        idx = np.asarray(indices, np.int64)
        idx = np.where(idx < 0, idx + n, idx)
        valid = (idx >= 0) & (idx < n)
        idx = np.where(valid, idx, 0)
        # Gather first (the table may be large), then dequantize the gathered rows only.
        out_q_axis = q_axis if q_axis < g_axis else q_axis + idx.ndim - 1

        def gathered_param(p):
            p = np.asarray(p, np.float32)
            if p.ndim == 0:
                return p
            rows = idx // block if g_axis == q_axis else idx
            p = np.take(p, rows if p.shape[g_axis] > 1 else np.zeros_like(idx), axis=g_axis)
            if g_axis != q_axis and p.shape[out_q_axis] > 1:
                p = np.repeat(p, block, axis=out_q_axis)
                p = np.take(p, np.arange(q.shape[q_axis]), axis=out_q_axis)
            return p

        w = np.take(q, idx, axis=g_axis)
        if zp is not None:
            w -= gathered_param(zp)
        w *= gathered_param(scales)
        if not valid.all():
            w *= valid.reshape((1,) * g_axis + valid.shape + (1,) * (r - g_axis - 1))
        return np.ascontiguousarray(w, dtype=scales.dtype)


# --------------------------------------------------------------------------- attention, LSTM
@kernel("QAttention", domain=MS)
class QAttention(Attention):
    """Attention whose packed QKV projection is quantized: (input - input_zp) @ (weight - weight_zp)
    * input_scale * weight_scale (per tensor or per column) + bias; the rest as Attention."""

    def compute(self, x, weight, bias, input_scale, weight_scale, mask_index=None, input_zp=None,
                weight_zp=None, past=None):
        if x.ndim != 3:
            raise InvalidArgument(f"{self.node.describe()}: input must be (B, S, D), got {x.shape}")
        acc = _int_matmul(_shifted(x.reshape(-1, x.shape[-1]), input_zp, False),
                          _shifted(weight, _per_column(weight_zp), False))
        qkv = _scaled(acc, input_scale, weight_scale, bias)
        return self.run(x.shape, bias.dtype, qkv, mask_index, past, None)


def _fake_quantize(x: np.ndarray) -> np.ndarray:
    """x through dynamic uint8 quantization and back: what a quantized GEMM sees of x."""
    q, scale, zp = dynamic_quantize_uint8(x)
    return (q.astype(np.float32) - np.float32(zp)) * scale


def _dequantize_weight(w: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """(D, K, 4H) int weights, scale / zero point (D,) or (D, 4H) -> float32 (D, 4H, K)."""
    d = w.shape[0]
    s = np.asarray(scale, np.float32).reshape(d, 1, -1)
    z = np.asarray(zp, np.float32).reshape(d, 1, -1)
    return np.ascontiguousarray(((w.astype(np.float32) - z) * s).transpose(0, 2, 1))


@kernel("DynamicQuantizeLSTM", domain=MS)
class DynamicQuantizeLSTM(LSTM):
    """LSTM with int8/uint8 weights W (D, input, 4H) and R (D, hidden, 4H) (per direction or per
    channel scales / zero points). As in onnxruntime, the float operands of both products (X for
    the whole sequence, H at every step, per direction) are quantized dynamically to uint8: here
    they pass through that quantization (`_fake_quantize`) and multiply the dequantized weights,
    which equals the integer product rescaled."""

    def _constant_weights(self, ctx) -> tuple:
        """The dequantized W and R (float32, LSTM layout) when they and their scales and zero
        points are constants: the LSTM driver then prepares them once, at build."""
        self.weights = None
        consts = [ctx.constant_input(k) for k in (1, 2, 8, 9, 10, 11)]
        if all(c is not None for c in consts):
            w, r, ws, wz, rs, rz = consts
            self.weights = (_dequantize_weight(w, ws, wz), _dequantize_weight(r, rs, rz))
        return self.weights or (None, None)

    def compute(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None,
                w_scale=None, w_zp=None, r_scale=None, r_zp=None):
        wf, rf = self.weights or (_dequantize_weight(w, w_scale, w_zp), _dequantize_weight(r, r_scale, r_zp))
        return self.run(_fake_quantize(x), wf, rf, b, sequence_lens, initial_h, initial_c, p)

    def _dense_step(self, xp, h, c, rt, rb, gates, tmp, h_out, mm=np.matmul):
        hq = np.stack([_fake_quantize(h[d]) for d in range(h.shape[0])])
        super()._dense_step(xp, hq, c, rt, rb, gates, tmp, h_out, mm)

    def _step(self, xp, h, c, rt, rb, p, acts, hid):
        return super()._step(xp, _fake_quantize(h), c, rt, rb, p, acts, hid)
