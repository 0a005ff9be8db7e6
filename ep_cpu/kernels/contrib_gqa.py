"""onnxruntime's GroupQueryAttention (`com.microsoft`): decoder attention with a KV cache and
fewer KV heads than query heads (grouped-query attention), on `contrib_attention.attend`.

Per batch entry b, T_b = seqlens_k[b] + 1 tokens are in the cache after this step. A first
prompt (sequence_length == total_sequence_length) starts at position 0; otherwise the S new
tokens sit at positions P_b = T_b - S (P_b = T_b - query_seqlens[b] for right-padded chunks,
whose padding rows are not cached). The present K/V (B, N_kv, max(total, past buffer), hd) hold
the first P_b past rows followed by the new ones. Query i at position P_b + i sees keys
[0, P_b + i] (all keys below T_b when causal=0), the last local_window_size of them (its own
included) when local_window_size >= 0. Optional: rotary embedding of Q and K from cos/sin caches, softcap, an
additive attention_bias, a softmax sink (smooth_softmax / head_sink), output_qk. Quantized KV
caches (k_scale / v_scale) and per-head Q/K norms are refused, as by onnxruntime's CPU kernel.
"""
from __future__ import annotations

import math

import numpy as np

from ep_core.errors import InvalidArgument, NotImplemented as NotImplementedOp
from ep_core.kernel import Kernel
from ep_cpu.registry import kernel

from .attention import _cdt, _heads, apply_rotary
from .contrib_attention import attend, merge_heads
from .contrib_common import MS, required


@kernel("GroupQueryAttention", domain=MS)
class GroupQueryAttention(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.heads = int(required(self, "num_heads"))
        self.kv_heads = int(required(self, "kv_num_heads"))
        if self.kv_heads <= 0 or self.heads % self.kv_heads:
            raise InvalidArgument(f"{node.describe()}: num_heads {self.heads} is not a multiple of "
                                  f"kv_num_heads {self.kv_heads}")
        self.scale = float(self.attr("scale", 0.0))
        self.softcap = float(self.attr("softcap", 0.0))
        self.window = int(self.attr("local_window_size", -1))
        self.do_rotary = bool(self.attr("do_rotary", 0))
        self.interleaved = bool(self.attr("rotary_interleaved", 0))
        self.smooth = bool(self.attr("smooth_softmax", 0))
        self.causal = bool(self.attr("causal", 1))
        self.qk_output = int(self.attr("qk_output", 0))
        if (self.attr("k_quant_type", "NONE") or "NONE") != "NONE" or \
                (self.attr("v_quant_type", "NONE") or "NONE") != "NONE":
            raise NotImplementedOp(f"{node.describe()}: quantized KV caches are not supported")
        if int(self.attr("sliding_window_cache", 0)):
            raise NotImplementedOp(f"{node.describe()}: sliding_window_cache is not supported")

    def _split(self, query, key, value, cdt):
        """(q (B, Nq, S, hd), k, v (B, Nkv, S, hd)) from separate or packed QKV."""
        b, s, _ = query.shape
        if key is None:
            hd = query.shape[-1] // (self.heads + 2 * self.kv_heads)
            qf = query.astype(cdt)
            q = qf[..., :self.heads * hd]
            k = qf[..., self.heads * hd:(self.heads + self.kv_heads) * hd]
            v = qf[..., (self.heads + self.kv_heads) * hd:]
        else:
            q, k, v = query.astype(cdt), key.astype(cdt), value.astype(cdt)
        return _heads(q, self.heads), _heads(k, self.kv_heads), _heads(v, self.kv_heads)

    def compute(self, query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None,
                total_sequence_length=None, cos_cache=None, sin_cache=None, position_ids=None,
                attention_bias=None, head_sink=None, k_scale=None, v_scale=None, q_norm_weight=None,
                k_norm_weight=None, query_seqlens=None):
        node = self.node
        if k_scale is not None or v_scale is not None:
            raise NotImplementedOp(f"{node.describe()}: quantized KV caches are not supported")
        if q_norm_weight is not None or k_norm_weight is not None:   # as onnxruntime's CPU kernel
            raise NotImplementedOp(f"{node.describe()}: q_norm_weight / k_norm_weight are not supported "
                                   f"on the CPU")
        if query.ndim != 3 or seqlens_k is None or total_sequence_length is None:
            raise InvalidArgument(f"{node.describe()}: needs a 3-D query, seqlens_k and total_sequence_length")
        cdt = _cdt(query.dtype)
        b, s, _ = query.shape
        q, k, v = self._split(query, key, value, cdt)
        hd = q.shape[-1]
        total_len = int(np.asarray(total_sequence_length).reshape(-1)[0])
        lens = np.asarray(seqlens_k, np.int64).reshape(b) + 1                       # T_b
        valid = (np.full(b, s, np.int64) if query_seqlens is None
                 else np.asarray(query_seqlens, np.int64).reshape(b))               # new rows kept
        first_prompt = query_seqlens is None and s == total_len
        past_lens = np.zeros(b, np.int64) if first_prompt else lens - valid        # P_b
        if (past_lens < 0).any():
            raise InvalidArgument(f"{node.describe()}: seqlens_k {np.asarray(seqlens_k).tolist()} is shorter "
                                  f"than the {s} new tokens")
        positions = past_lens[:, None] + np.arange(s)[None, :]                      # (B, S)
        if self.do_rotary:
            if cos_cache is None or sin_cache is None:
                raise InvalidArgument(f"{node.describe()}: do_rotary needs cos_cache and sin_cache")
            rot_pos = positions
            if position_ids is not None:
                pid = np.asarray(position_ids, np.int64).reshape(b, -1)
                rot_pos = pid[:, :1] + np.arange(s)[None, :] if first_prompt else pid
            if rot_pos.max() >= cos_cache.shape[0]:
                raise InvalidArgument(f"{node.describe()}: position {int(rot_pos.max())} exceeds the rotary "
                                      f"caches' {cos_cache.shape[0]} rows")
            cos, sin = cos_cache.astype(cdt)[rot_pos], sin_cache.astype(cdt)[rot_pos]
            rd = 2 * cos_cache.shape[1]
            q = apply_rotary(q.transpose(0, 2, 1, 3), cos, sin, rd, self.interleaved).transpose(0, 2, 1, 3)
            k = apply_rotary(k.transpose(0, 2, 1, 3), cos, sin, rd, self.interleaved).transpose(0, 2, 1, 3)

        # Present K/V: each entry's past rows, then its new rows.
        past_buf = 0 if past_key is None else past_key.shape[2]
        t_present = max(total_len, past_buf)
        if (past_lens + valid > t_present).any() or (past_buf and (past_lens > past_buf).any()):
            raise InvalidArgument(f"{node.describe()}: seqlens_k exceed total_sequence_length / the past buffer")
        kv_dt = past_key.dtype if past_key is not None else query.dtype
        present_k = np.zeros((b, self.kv_heads, t_present, hd), cdt)
        present_v = np.zeros((b, self.kv_heads, t_present, v.shape[-1]), cdt)
        for i in range(b):
            p, n_new = int(past_lens[i]), int(valid[i])
            if p:
                present_k[i, :, :p] = past_key[i, :, :p]
                present_v[i, :, :p] = past_value[i, :, :p]
            present_k[i, :, p:p + n_new] = k[i, :, :n_new]
            present_v[i, :, p:p + n_new] = v[i, :, :n_new]

        # Visible keys per (batch, query): causal / window / cache length.
        cols = np.arange(t_present)[None, None, :]
        pos = positions[:, :, None]
        visible = cols < (lens[:, None, None] if not first_prompt else np.maximum(lens, s)[:, None, None])
        if self.causal:
            visible = visible & (cols <= pos)
        if self.window >= 0:   # the window counts the query's own position (0: sees nothing)
            visible = visible & (cols > pos - self.window)
        bias = np.where(visible, cdt.type(0), cdt.type(-np.inf))[:, None]          # (B, 1, S, T)
        if attention_bias is not None:
            ab = attention_bias.astype(cdt)
            bias = bias + (ab if ab.shape[-1] == t_present else
                           np.pad(ab, [(0, 0)] * 3 + [(0, t_present - ab.shape[-1])]))
        sink = None
        if head_sink is not None:
            sink = head_sink.astype(cdt).reshape(1, -1, 1, 1)
        elif self.smooth:
            sink = np.zeros((1, 1, 1, 1), cdt)
        scale = self.scale or 1.0 / math.sqrt(hd)
        out, raw, probs = attend(q, present_k, present_v, scale, bias, self.softcap, sink,
                                 want_scores=self.qk_output == 1)
        dt = query.dtype
        outs = [merge_heads(out).astype(dt, copy=False), present_k.astype(kv_dt, copy=False),
                present_v.astype(kv_dt, copy=False)]
        n_out = len(node.outputs)
        if n_out > 3:
            qk = np.where(visible[:, None], raw, 0) if self.qk_output == 1 else probs   # 0 where masked
            outs.append(np.ascontiguousarray(qk, dtype=dt))
        return tuple(outs[:n_out])
