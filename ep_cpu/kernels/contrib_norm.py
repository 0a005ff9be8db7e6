"""onnxruntime's normalization contrib ops: SkipSimplifiedLayerNormalization,
EmbedLayerNormalization, QEmbedLayerNormalization (its quantized-table variant, written by
quantize_dynamic), GroupNorm (`com.microsoft`) and SimplifiedLayerNormalization, which
onnxruntime (and its transformer optimizer) keeps in the ONNX domain.

SkipLayerNormalization of `com.microsoft` is `fused.SkipLayerNormalization` (same semantics as
our own fused op); LayerNormalization below opset 17, which onnxruntime's optimizer also writes
in the ONNX domain, is the ONNX kernel of `norm.py` (registered from version 1).
Statistics are computed in float32 (float64 for double inputs).
"""
from __future__ import annotations

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import Kernel
from ep_core.op_attributes import NormAttributes
from ep_cpu.gemm_epilogue import ACTIVATIONS
from ep_cpu.registry import kernel

from .contrib_common import MS, required
from .conv import compute_dtype
from .fused import SkipLayerNormalization
from .norm import _out_dtype, rms_normalize


@kernel("SkipSimplifiedLayerNormalization", domain=MS)
class SkipSimplifiedLayerNormalization(SkipLayerNormalization):
    """RMSNorm(input + skip + bias) * gamma; inputs input, skip, gamma, bias (optional)."""
    simplified = True


@kernel("SimplifiedLayerNormalization")
class SimplifiedLayerNormalization(Kernel):
    """x / sqrt(mean(x^2 over the axes from `axis`) + epsilon) * scale; optional inv_std_var.
    No ONNX schema: axis -1, epsilon 1e-5, stash_type 1 by default (NormAttributes)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.norm = NormAttributes.from_node(node)

    def compute(self, x, scale):
        normalized, rms = rms_normalize(x, self.norm)
        y = (normalized * scale).astype(_out_dtype(self, 0, scale.dtype), copy=False)
        if len(self.node.outputs) > 1:
            return y, np.reciprocal(rms).astype(_out_dtype(self, 1, np.float32))
        return y


@kernel("EmbedLayerNormalization", domain=MS)
class EmbedLayerNormalization(Kernel):
    """LayerNorm(word[input_ids] + position[position_ids] + segment[segment_ids]) * gamma + beta.

    position_ids default to 0..S-1 and may be (1, S). Outputs: the normalized embedding,
    mask_index (per batch row, the count of non-zero mask entries; zeros without a mask) and
    optionally the embedding sum before normalization.
    """

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.eps = float(self.attr("epsilon", 1e-12))

    def _lookup(self, table: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise InvalidArgument(f"{self.node.describe()}: {what} out of range [0, {table.shape[0]})")
        return table[ids]

    def compute(self, input_ids, segment_ids, word_emb, pos_emb, seg_emb=None, gamma=None, beta=None,
                mask=None, position_ids=None):
        if input_ids.ndim != 2:
            raise InvalidArgument(f"{self.node.describe()}: input_ids must be 2-D (batch, sequence), "
                                  f"got {input_ids.shape}")
        b, s = input_ids.shape
        dt = gamma.dtype
        cdt = compute_dtype(dt)
        if position_ids is None:
            position_ids = np.arange(s, dtype=np.int64)[None]
        total = self._lookup(word_emb, input_ids, "input_ids").astype(cdt)
        total += self._lookup(pos_emb, np.broadcast_to(position_ids, (b, s)), "position_ids")
        if segment_ids is not None and seg_emb is not None:
            total += self._lookup(seg_emb, segment_ids, "segment_ids")
        mean = total.mean(axis=-1, keepdims=True)
        d = total - mean
        var = np.multiply(d, d).mean(axis=-1, keepdims=True)
        d /= np.sqrt(var + cdt.type(self.eps))
        d *= gamma
        d += beta
        mask_index = (np.zeros(b, np.int32) if mask is None
                      else np.count_nonzero(mask, axis=-1).astype(np.int32))
        outs = [d.astype(dt, copy=False), mask_index, total.astype(dt, copy=False)]
        n = len(self.node.outputs)
        return tuple(outs[:n]) if n > 1 else outs[0]


@kernel("QEmbedLayerNormalization", domain=MS)
class QEmbedLayerNormalization(EmbedLayerNormalization):
    """EmbedLayerNormalization over uint8/int8 tables (per-tensor scale and zero point each): the
    looked-up rows, gamma and beta are dequantized as (q - zero_point) * scale. Outputs: the
    normalized embedding and mask_index."""

    def _lookup(self, table, ids, what):
        q, scale, zp = table
        rows = super()._lookup(q, ids, what)
        return (rows.astype(np.float32) - np.float32(zp)) * np.float32(scale)

    def compute(self, input_ids, segment_ids, word_q, pos_q, seg_q, gamma_q, beta_q, mask, word_scale,
                pos_scale, seg_scale, gamma_scale, beta_scale, word_zp, pos_zp, seg_zp=None, gamma_zp=None,
                beta_zp=None):
        def deq(q, scale, zp):
            return (q.astype(np.float32) - np.float32(zp)) * np.asarray(scale, np.float32)
        seg = None if seg_q is None else (seg_q, seg_scale, seg_zp)
        return super().compute(input_ids, segment_ids, (word_q, word_scale, word_zp), (pos_q, pos_scale, pos_zp),
                               seg, deq(gamma_q, gamma_scale, gamma_zp), deq(beta_q, beta_scale, beta_zp), mask)


@kernel("GroupNorm", domain=MS)
class GroupNorm(Kernel):
    """Group normalization with per-channel gamma/beta, NHWC by default (`channels_last`),
    optionally followed by SiLU (`activation` 1)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.groups = int(required(self, "groups"))
        self.eps = float(self.attr("epsilon", 1e-5))
        self.channels_last = bool(self.attr("channels_last", 1))
        self.silu = bool(required(self, "activation"))

    def compute(self, x, gamma, beta):
        cdt = compute_dtype(x.dtype)
        xc = np.moveaxis(x, -1, 1) if self.channels_last else x   # (N, C, spatial...)
        n, c = xc.shape[:2]
        if c % self.groups:
            raise InvalidArgument(f"{self.node.describe()}: {c} channels are not divisible into "
                                  f"{self.groups} groups")
        xg = xc.astype(cdt).reshape(n, self.groups, -1)
        mean = xg.mean(axis=-1, keepdims=True)
        xg -= mean
        var = np.multiply(xg, xg).mean(axis=-1, keepdims=True)
        xg /= np.sqrt(var + cdt.type(self.eps))
        bshape = (1, c) + (1,) * (xc.ndim - 2)
        y = xg.reshape(xc.shape) * gamma.astype(cdt).reshape(bshape) + beta.astype(cdt).reshape(bshape)
        if self.silu:
            ACTIVATIONS["Silu"](y, {})
        if self.channels_last:
            y = np.moveaxis(y, 1, -1)
        return np.ascontiguousarray(y, dtype=x.dtype)
