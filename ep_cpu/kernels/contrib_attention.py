"""onnxruntime's attention contrib ops (`com.microsoft`): Attention, MultiHeadAttention,
RotaryEmbedding; QAttention (quantized projection) lives in contrib_quantized_attention.py and
GroupQueryAttention in contrib_gqa.py, both on `attend` below.

`attend` is the shared core: softmax(scale * Q K^T + bias) V per head, with query heads
grouped onto fewer KV heads where they differ, computed in float32 (float64 for double).
Masks follow onnxruntime: Attention and MultiHeadAttention add `mask_filter_value`
(default -10000) where a key is masked (so a fully masked row is a uniform average, as there);
masks built from -inf give zero rows.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.errors import InvalidArgument, NotImplemented as NotImplementedOp
from ep_core.kernel import Kernel
from ep_cpu import vector_math
from ep_cpu.blas_threads import single_threaded_blas
from ep_cpu.gemm import _get_pool, gemm, get_num_threads, pack_constant
from ep_cpu.native_call import run_blocks
from ep_cpu.registry import kernel

from .attention import _cdt, _group_apply, _group_scores, _heads, apply_rotary
from .contrib_common import MS, required


def softmax_rows(scores: np.ndarray, sink: np.ndarray | None = None) -> np.ndarray:
    """In-place softmax over the last axis. Rows without a finite score become zeros. `sink`
    (broadcastable to the rows' leading shape + (1,)) is an extra logit in the denominator only."""
    if sink is None and vector_math.softmax_last_axis(scores, empty_zero=True):
        return scores   # compiled, a row at a time
    m = scores.max(axis=-1, keepdims=True)
    if sink is not None:
        m = np.maximum(m, sink)
    finite = np.isfinite(m)
    if not finite.all():
        m = np.where(finite, m, 0)
    scores -= m
    np.exp(scores, out=scores)
    total = scores.sum(axis=-1, keepdims=True)
    if sink is not None:
        total += np.exp(sink - m)
    if not finite.all():
        total = np.where(total > 0, total, 1)
    scores /= total
    return scores


# Multiply-adds of Q K^T from which the heads split between the intra-op threads (each a share
# of the heads on a one-thread BLAS, on `ep_cpu.gemm`'s pool): BERT-base's 12 heads x 128 x 128
# x 64 (12.6M) 830 -> 690-740 us a layer at 2 threads
ATTEND_SPLIT_MIN_MACS = 1 << 22


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, bias: np.ndarray | None = None,
           softcap: float = 0.0, sink: np.ndarray | None = None, want_scores: bool = False,
           want_probs: bool = True):
    """softmax(scale * q k^T [softcapped] + bias) v for q (B, Nq, S, D), k (B, Nkv, T, D),
    v (B, Nkv, T, Dv), Nq a multiple of Nkv. Returns (out (B, Nq, S, Dv), raw scaled scores or None,
    probabilities, or None without `want_probs`). With intra-op threads the key/value heads (and
    their query heads) split between them."""
    threads = get_num_threads()
    nq, nkv = q.shape[1], k.shape[1]
    parts = min(threads, nkv)
    if (parts > 1 and q.shape[0] * nq * q.shape[2] * k.shape[2] * q.shape[3] >= ATTEND_SPLIT_MIN_MACS
            and all(t is None or (t.ndim == 4 and t.shape[1] in (1, nq)) for t in (bias, sink))):
        g = nq // nkv
        step = -(-nkv // parts)
        parts = -(-nkv // step)
        results: list = [None] * parts

        def heads(i0: int, i1: int) -> None:
            for part in range(i0, i1):
                kv = slice(part * step, min(nkv, (part + 1) * step))
                sl = slice(kv.start * g, kv.stop * g)   # their query heads
                results[part] = _attend_heads(
                    q[:, sl], k[:, kv], v[:, kv], scale,
                    bias if bias is None or bias.shape[1] == 1 else bias[:, sl], softcap,
                    sink if sink is None or sink.shape[1] == 1 else sink[:, sl], want_scores)

        run_blocks(heads, parts, parts, (), (), _get_pool)
        out = np.concatenate([r[0] for r in results], axis=1)
        raw = np.concatenate([r[1] for r in results], axis=1) if want_scores else None
        probs = np.concatenate([r[2] for r in results], axis=1) if want_probs else None
        return out, raw, probs
    return _attend_heads(q, k, v, scale, bias, softcap, sink, want_scores)


def _attend_heads(q, k, v, scale, bias, softcap, sink, want_scores):
    """`attend` on the calling thread (its BLAS calls on one thread)."""
    # Per-head products are small: threaded BLAS only adds wake-up stalls here.
    with single_threaded_blas():
        scores = _group_scores(q, k) if q.shape[1] != k.shape[1] else np.matmul(q, k.swapaxes(-1, -2))
    scores *= scores.dtype.type(scale)
    raw = scores.copy() if want_scores else None
    if softcap > 0:
        scores /= softcap
        np.tanh(scores, out=scores)
        scores *= softcap
    if bias is not None:
        scores += bias
    probs = softmax_rows(scores, sink)
    with single_threaded_blas():
        out = _group_apply(probs, v) if q.shape[1] != v.shape[1] else np.matmul(probs, v)
    return out, raw, probs


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, N, S, D) -> (B, S, N*D)."""
    b, n, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, s, n * d)


def key_mask(node, mask: np.ndarray, b: int, s: int, total: int, past: int, filler: float, cdt) -> np.ndarray:
    """Additive (B, 1, S|1, T) term of an Attention / MultiHeadAttention mask: 0 where a key is
    visible, `filler` where masked. Formats: (B) key lengths, (2B) ends then starts, (B, T) or
    (B, S, T) 0/1."""
    m = np.asarray(mask)
    cols = np.arange(total)
    if m.ndim == 1 and m.shape[0] == b:
        visible = cols[None, :] < m[:, None]
        shape = (b, 1, 1, total)
    elif m.ndim == 1 and m.shape[0] == 2 * b:
        visible = (cols[None, :] < m[:b, None]) & (cols[None, :] >= m[b:, None])
        shape = (b, 1, 1, total)
    elif m.ndim == 2 and m.shape == (b, total):
        visible, shape = m != 0, (b, 1, 1, total)
    elif m.ndim == 3 and m.shape == (b, s, total):
        visible, shape = m != 0, (b, 1, s, total)
    elif m.ndim == 4:
        raise NotImplementedOp(f"{node.describe()}: 4-D (Megatron) masks are not supported on the CPU "
                               f"(nor by onnxruntime's CPU kernel)")
    else:
        raise InvalidArgument(f"{node.describe()}: mask of shape {m.shape} fits none of (B), (2B), (B, T), "
                              f"(B, S, T), (B, 1, M, M) for B={b}, S={s}, T={total}")
    return np.where(visible, cdt.type(0), cdt.type(filler)).reshape(shape)


def causal_mask(s: int, total: int, past: int, cdt) -> np.ndarray:
    """Additive (1, 1, S, T) term hiding keys after each query's absolute position past + i.

    -inf, not mask_filter_value: a query whose visible keys are all padding still averages
    over those only (as onnxruntime does)."""
    hidden = np.arange(total)[None, :] > (past + np.arange(s))[:, None]
    return np.where(hidden, cdt.type(-np.inf), cdt.type(0))[None, None]


def add_terms(*terms):
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


class _AttentionBase(Kernel):
    """Attributes shared by Attention, QAttention and MultiHeadAttention."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.heads = int(required(self, "num_heads"))
        self.scale = float(self.attr("scale", 0.0))
        self.filler = float(self.attr("mask_filter_value", -10000.0))
        self.causal = bool(self.attr("unidirectional", 0))

    def scale_for(self, head_size: int) -> float:
        return self.scale or 1.0 / math.sqrt(head_size)


@kernel("Attention", domain=MS)
class Attention(_AttentionBase):
    """Self-attention with a packed QKV projection: X (B, S, D_in) @ W (D_in, Hq + Hk + Hv) + bias,
    heads split, optional past (2, B, N, P, hd) prepended to K/V (present is the concatenation),
    mask_index (see `key_mask`), additive attention_bias (B|1, N|1, S, T), `unidirectional`
    causality."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.sizes = [int(v) for v in (self.attr("qkv_hidden_sizes") or [])]
        # As onnxruntime's CPU kernel: rotary models are fused into MultiHeadAttention +
        # RotaryEmbedding instead.
        for name in ("do_rotary", "past_present_share_buffer"):
            if int(self.attr(name, 0)):
                raise NotImplementedOp(f"{node.describe()}: {name} is not supported on the CPU")
        self.packed_w = pack_constant(ctx.constant_input(1))  # constant weights only

    def project(self, x, weights, bias):
        """QKV = X @ W + bias in the compute dtype, (B*S, Hq + Hk + Hv)."""
        cdt = _cdt(x.dtype)
        w = weights.astype(cdt, copy=False) if self.packed_w is None else self.packed_w
        return gemm(x.reshape(-1, x.shape[-1]).astype(cdt, copy=False), w,
                    None if bias is None else bias.astype(cdt, copy=False))

    def compute(self, x, weights, bias=None, mask_index=None, past=None, attention_bias=None,
                past_sequence_length=None):
        if x.ndim != 3:
            raise InvalidArgument(f"{self.node.describe()}: input must be (B, S, D), got {x.shape}")
        return self.run(x.shape, x.dtype, self.project(x, weights, bias), mask_index, past, attention_bias)

    def run(self, x_shape, out_dtype, qkv, mask_index, past, attention_bias):
        b, s = x_shape[:2]
        n = self.heads
        total_w = qkv.shape[-1]
        hq, hk, hv = self.sizes or [total_w // 3] * 3
        if hq + hk + hv != total_w or hq % n or hv % n or hq != hk:
            raise InvalidArgument(f"{self.node.describe()}: QKV widths {hq, hk, hv} do not fit weights of "
                                  f"{total_w} columns and {n} heads")
        cdt = qkv.dtype
        qkv = qkv.reshape(b, s, total_w)
        q, k, v = (_heads(qkv[..., a:z], n) for a, z in ((0, hq), (hq, hq + hk), (hq + hk, total_w)))
        past_len = 0 if past is None else past.shape[3]
        if past is not None:
            k = np.concatenate([past[0].astype(cdt), k], axis=2)
            v = np.concatenate([past[1].astype(cdt), v], axis=2)
        total = k.shape[2]
        bias = add_terms(
            None if mask_index is None else
            key_mask(self.node, mask_index, b, s, total, past_len, self.filler, cdt),
            causal_mask(s, total, past_len, cdt) if self.causal else None,
            None if attention_bias is None else attention_bias.astype(cdt))
        out, _, _ = attend(q, k, v, self.scale_for(hq // n), bias, want_probs=False)
        y = merge_heads(out).astype(out_dtype, copy=False)
        if len(self.node.outputs) > 1:
            return y, np.stack([k, v]).astype(out_dtype, copy=False)
        return y


@kernel("MultiHeadAttention", domain=MS)
class MultiHeadAttention(_AttentionBase):
    """Attention over separate (already projected) Q, K, V: query (B, S, H); key/value (B, L, H)
    plus the optional bias, or already in heads (B, N, L, hd) (cross-attention caches; packed QKV
    or KV layouts are refused, as by onnxruntime's CPU kernel). Past K/V (B, N, P, hd) are
    prepended; key_padding_mask as Attention's mask_index; attention_bias additive; outputs
    output, present K/V, and qk (the scaled Q K^T plus biases, before softmax)."""

    def compute(self, query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None,
                past_key=None, past_value=None, past_sequence_length=None, cache_indirection=None):
        n = self.heads
        if query.ndim != 3:
            raise NotImplementedOp(f"{self.node.describe()}: packed QKV query {query.shape} is not supported")
        if key is None:
            raise InvalidArgument(f"{self.node.describe()}: key is required")
        if cache_indirection is not None:
            raise NotImplementedOp(f"{self.node.describe()}: cache_indirection (beam search) is not supported")
        cdt = _cdt(query.dtype)
        b, s, hq = query.shape
        qf = query.astype(cdt)
        if bias is not None:
            qf = qf + bias[:hq].astype(cdt)
        q = _heads(qf, n)
        if key.ndim == 5 or value is None:
            raise NotImplementedOp(f"{self.node.describe()}: packed KV {key.shape} is not supported")
        if key.ndim == 4:   # already (B, N, L, hd): used as is
            k, v = key.astype(cdt), value.astype(cdt)
        else:
            kf, vf = key.astype(cdt), value.astype(cdt)
            if bias is not None:
                hk = key.shape[-1]
                kf = kf + bias[hq:hq + hk].astype(cdt)
                vf = vf + bias[hq + hk:].astype(cdt)
            k, v = _heads(kf, n), _heads(vf, n)
        past_len = 0
        if past_key is not None and key.ndim != 4:
            past_len = past_key.shape[2]
            k = np.concatenate([past_key.astype(cdt), k], axis=2)
            v = np.concatenate([past_value.astype(cdt), v], axis=2)
        total = k.shape[2]
        mask = add_terms(
            None if key_padding_mask is None else key_mask(self.node, key_padding_mask, b, s, total, past_len,
                                                           self.filler, cdt),
            causal_mask(s, total, past_len, cdt) if self.causal else None,
            None if attention_bias is None else attention_bias.astype(cdt))
        n_out = len(self.node.outputs)
        want_qk = n_out > 3 and bool(self.node.outputs[3])
        out, raw, _ = attend(q, k, v, self.scale_for(hq // n), mask, want_scores=want_qk,
                             want_probs=False)
        dt = query.dtype
        outs = [merge_heads(out).astype(dt, copy=False), k.astype(dt, copy=False), v.astype(dt, copy=False)]
        if want_qk:
            outs.append((raw if mask is None else raw + mask).astype(dt, copy=False))
        return tuple(outs[:n_out]) if n_out > 1 else outs[0]


@kernel("RotaryEmbedding", domain=MS)
class RotaryEmbedding(Kernel):
    """Rotary positional embedding of X (B, S, H) or (B, N, S, hd); inputs input, position_ids
    ((1,): a start offset for every batch entry, or (B, S)), cos_cache, sin_cache
    (max_seq, rotary_dim / 2). num_heads may be 0 when the head size follows from the caches."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.heads = int(self.attr("num_heads", 0))
        self.rotary_dim = int(self.attr("rotary_embedding_dim", 0))
        self.interleaved = bool(self.attr("interleaved", 0))
        if int(self.attr("is_packed_batching", 0)):
            raise NotImplementedOp(f"{node.describe()}: is_packed_batching is not supported")

    def compute(self, x, position_ids, cos_cache, sin_cache):
        cdt = _cdt(x.dtype)
        if x.ndim == 4:
            b, _, s, d = x.shape
            xs = x.transpose(0, 2, 1, 3)
        elif x.ndim == 3:
            b, s, h = x.shape
            d = h // self.heads if self.heads else (self.rotary_dim or 2 * cos_cache.shape[1])
            if h % d:
                raise InvalidArgument(f"{self.node.describe()}: hidden size {h} is not a multiple of the "
                                      f"head size {d}")
            xs = x.reshape(b, s, h // d, d)
        else:
            raise InvalidArgument(f"{self.node.describe()}: input must be 3-D or 4-D, got {x.shape}")
        pid = np.asarray(position_ids, np.int64)
        pos = pid.reshape(-1)[0] + np.arange(s)[None] if pid.size == 1 else pid.reshape(b, s)
        if pos.min() < 0 or pos.max() >= cos_cache.shape[0]:
            raise InvalidArgument(f"{self.node.describe()}: positions exceed the caches' "
                                  f"{cos_cache.shape[0]} rows")
        pos = np.broadcast_to(pos, (b, s))
        rd = self.rotary_dim or d
        out = apply_rotary(xs.astype(cdt), cos_cache.astype(cdt)[pos], sin_cache.astype(cdt)[pos], rd,
                           self.interleaved)
        out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)
        return np.ascontiguousarray(out, dtype=x.dtype)
