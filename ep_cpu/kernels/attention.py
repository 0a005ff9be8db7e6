"""Attention family: Attention (opset 23-25: masks, KV cache, softcap, GQA, windows, nonpad
lengths, qk_matmul_output), RotaryEmbedding, LinearAttention, ai.onnx.preview FlexAttention.

Half-precision inputs compute in float32; fully-masked query rows give zeros (not NaN).
"""
from __future__ import annotations

import numpy as np

from ep_core.kernel import Kernel
from ep_core.op_attributes import float_attr, int_attr, invalid
from ep_core.types import np_dtype
from ep_cpu.kernels.tensor import bad_data
from ep_cpu.registry import kernel


def _cdt(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """(B, S, n*D) -> (B, n, S, D)."""
    b, s, hd = x.shape
    return x.reshape(b, s, n, hd // n).transpose(0, 2, 1, 3)


def _group_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q (B, Hq, L, D) @ k^T (B, Hkv, S, D) with query heads grouped onto KV heads."""
    b, hq, l_, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qg = q.reshape(b, hkv, g, l_, d)
    return np.matmul(qg, k[:, :, None].swapaxes(-1, -2)).reshape(b, hq, l_, k.shape[2])


def _group_apply(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """probs (B, Hq, L, S) @ v (B, Hkv, S, Dv)."""
    b, hq, l_, s = p.shape
    hkv = v.shape[1]
    g = hq // hkv
    return np.matmul(p.reshape(b, hkv, g, l_, s), v[:, :, None]).reshape(b, hq, l_, v.shape[-1])


def masked_softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; fully masked rows (all -inf) become all zeros, and a row with a
    NaN score stays NaN (as in onnxruntime: a NaN input is never turned into a finite output)."""
    m = np.max(scores, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(scores - m)
        s = e.sum(axis=-1, keepdims=True)
        return np.where(s == 0, 0, e / np.where(s == 0, 1, s)).astype(scores.dtype, copy=False)


def _softmax_dtype(node, name: str = "softmax_precision") -> np.dtype | None:
    """The dtype a softmax_precision attribute names (None when omitted)."""
    sp = int_attr(node, name)
    if not sp:
        return None
    try:
        return np_dtype(sp)
    except Exception:
        raise invalid(node, f"{name} {sp} is not a tensor element type") from None


def _heads_attrs(node, required: bool) -> tuple[int | None, int | None]:
    """(q_num_heads, kv_num_heads): positive, query heads a multiple of KV heads."""
    hq, hkv = int_attr(node, "q_num_heads", minimum=1), int_attr(node, "kv_num_heads", minimum=1)
    if required and (hq is None or hkv is None):
        raise invalid(node, "attributes 'q_num_heads' and 'kv_num_heads' are required")
    if hq is not None and hkv is not None and hq % hkv:
        raise invalid(node, f"q_num_heads {hq} is not a multiple of kv_num_heads {hkv}")
    return hq, hkv


@kernel("Attention")
class Attention(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.q_heads, self.kv_heads = _heads_attrs(node, required=False)
        self.scale = float_attr(node, "scale")          # None: 1/sqrt(head size)
        self.softcap = float_attr(node, "softcap")
        self.is_causal = bool(int_attr(node, "is_causal"))
        # Window attributes arrived in opset 25; -1 (no limit) below it.
        self.left_window = int_attr(node, "left_window_size", -1)
        self.right_window = int_attr(node, "right_window_size", -1)
        sdt = _softmax_dtype(node)
        if sdt is not None and (sdt.itemsize < 4 or "bfloat16" in sdt.name):
            sdt = np.dtype(np.float32)  # narrower softmax precision is computed in float32
        self.softmax_dtype = sdt
        self.qk_mode = int_attr(node, "qk_matmul_output_mode")
        if self.qk_mode not in (0, 1, 2, 3):
            raise invalid(node, f"qk_matmul_output_mode must be 0-3, got {self.qk_mode}")

    def compute(self, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        out_dt = q.dtype
        cdt = _cdt(out_dt)
        three_d = q.ndim == 3
        if three_d:
            if self.q_heads is None or self.kv_heads is None:
                raise bad_data(self, "3-D inputs need the q_num_heads and kv_num_heads attributes")
            q4 = _heads(q, self.q_heads)
            k4 = _heads(k, self.kv_heads)
            v4 = _heads(v, self.kv_heads)
        else:
            q4, k4, v4 = q, k, v
        past_len = 0
        if past_key is not None:
            past_len = past_key.shape[2]
            k4 = np.concatenate([past_key, k4.astype(past_key.dtype)], axis=2)
            v4 = np.concatenate([past_value, v4.astype(past_value.dtype)], axis=2)
        present_k, present_v = k4, v4
        b, hq, lq, hd = q4.shape
        total = k4.shape[2]
        scale = 1.0 / np.sqrt(hd) if self.scale is None else self.scale
        sq = np.sqrt(cdt.type(scale))
        scores = _group_scores(q4.astype(cdt) * sq, k4.astype(cdt) * sq)
        qk0 = scores
        softcap = self.softcap
        if softcap > 0:
            scores = softcap * np.tanh(scores / softcap)
        qk1 = scores

        # Allowed-key set from causal / window / padding rules, plus an additive float mask.
        allowed = None
        bias = None
        rows = np.arange(lq)[:, None]
        cols = np.arange(total)[None, :]
        if nonpad_kv_seqlen is not None and past_key is None:
            offset = (np.asarray(nonpad_kv_seqlen, dtype=np.int64) - lq).reshape(-1, 1, 1, 1)
        else:
            offset = np.full((1, 1, 1, 1), past_len, dtype=np.int64)
        pos = rows[None, None] + offset  # absolute query position (B|1, 1, L, 1)

        def restrict(a):
            nonlocal allowed
            allowed = a if allowed is None else allowed & a

        if self.is_causal:
            restrict(cols[None, None] <= pos)
        left, right = self.left_window, self.right_window
        if left >= 0:
            restrict(cols[None, None] >= pos - left)
        if right >= 0:
            restrict(cols[None, None] <= pos + right)
        if nonpad_kv_seqlen is not None:
            restrict(cols[None, None] < np.asarray(nonpad_kv_seqlen, dtype=np.int64).reshape(-1, 1, 1, 1))
        if attn_mask is not None:
            m = np.asarray(attn_mask)
            if m.dtype != bool:
                m = m.astype(cdt)  # any non-boolean mask is additive
            if m.shape[-1] < total:  # short masks are padded with "not allowed"
                pad = [(0, 0)] * (m.ndim - 1) + [(0, total - m.shape[-1])]
                m = np.pad(m, pad, constant_values=False if m.dtype == bool else -np.inf)
            if m.dtype == bool:
                restrict(m.reshape((1,) * (4 - m.ndim) + m.shape))
            else:
                bias = m.reshape((1,) * (4 - m.ndim) + m.shape)
        if allowed is not None:
            neg = np.where(allowed, cdt.type(0), cdt.type(-np.inf))
            bias = neg if bias is None else bias + neg
        if bias is not None:
            scores = scores + bias
        qk2 = scores
        sdt = cdt if self.softmax_dtype is None else self.softmax_dtype
        probs = masked_softmax(scores.astype(sdt)).astype(cdt)
        y = _group_apply(probs, v4.astype(cdt))
        if three_d:
            y = y.transpose(0, 2, 1, 3).reshape(b, lq, -1)
        outs = [np.ascontiguousarray(y, dtype=out_dt), np.ascontiguousarray(present_k),
                np.ascontiguousarray(present_v)]
        n_out = len(self.node.outputs)
        if n_out > 3:
            qk = {0: qk0, 1: qk1, 2: qk2, 3: probs}[self.qk_mode]
            outs.append(np.ascontiguousarray(np.broadcast_to(qk, (b, hq, lq, total)), dtype=out_dt))
        return tuple(outs[:n_out]) if n_out > 1 else outs[0]


def apply_rotary(xs: np.ndarray, cos: np.ndarray, sin: np.ndarray, rotary_dim: int,
                 interleaved: bool) -> np.ndarray:
    """Rotate the first `rotary_dim` features of xs (B, S, N, D) by angles whose cos/sin are
    (B, S, rotary_dim/2); pairs are (i, i + rd/2), or adjacent (2i, 2i+1) when interleaved.
    Returns a new array in xs's (compute) dtype."""
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, S, 1, rd/2)
    rd = rotary_dim
    rot = xs[..., :rd]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :rd // 2], rot[..., rd // 2:]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    out = xs.copy()
    if interleaved:
        out[..., 0:rd:2], out[..., 1:rd:2] = real, imag
    else:
        out[..., :rd // 2], out[..., rd // 2:rd] = real, imag
    return out


@kernel("RotaryEmbedding")
class RotaryEmbedding(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.num_heads = int_attr(node, "num_heads", minimum=1)    # needed for 3-D inputs
        self.rotary_dim = int_attr(node, "rotary_embedding_dim", minimum=0)  # 0: the head size
        self.interleaved = bool(int_attr(node, "interleaved"))

    def compute(self, x, cos_cache, sin_cache, position_ids=None):
        cdt = _cdt(x.dtype)
        shape = x.shape
        if x.ndim == 4:
            xs = x.transpose(0, 2, 1, 3)  # (B, S, H, D)
        else:
            n = self.num_heads
            if n is None:
                raise bad_data(self, "a 3-D input needs the num_heads attribute")
            xs = x.reshape(shape[0], shape[1], n, shape[2] // n)
        xs = xs.astype(cdt)
        rd = self.rotary_dim or xs.shape[-1]
        cos, sin = cos_cache.astype(cdt), sin_cache.astype(cdt)
        if position_ids is not None:
            cos, sin = cos[position_ids], sin[position_ids]
        out = apply_rotary(xs, cos, sin, rd, self.interleaved)
        out = out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(shape)
        return np.ascontiguousarray(out, dtype=x.dtype)


@kernel("LinearAttention")
class LinearAttention(Kernel):
    RULES = ("linear", "gated", "delta", "gated_delta")

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.q_heads, self.kv_heads = _heads_attrs(node, required=True)
        self.rule = self.attr("update_rule")
        if self.rule not in self.RULES:
            raise invalid(node, f"update_rule must be one of {', '.join(self.RULES)}, got {self.rule!r}")
        self.scale = float_attr(node, "scale")          # 0: 1/sqrt(head size)

    def compute(self, query, key, value, past_state=None, decay=None, beta=None):
        cdt = np.dtype(np.float32)
        hq, hkv = self.q_heads, self.kv_heads
        rule = self.rule
        b, t, _ = query.shape
        dk = query.shape[-1] // hq
        dv = value.shape[-1] // hkv
        scale = self.scale or 1.0 / np.sqrt(dk)
        q = query.astype(cdt).reshape(b, t, hq, dk)
        k = key.astype(cdt).reshape(b, t, hkv, dk)
        v = value.astype(cdt).reshape(b, t, hkv, dv)
        state = (np.zeros((b, hkv, dk, dv), dtype=cdt) if past_state is None
                 else past_state.astype(cdt).copy())
        g_per = hq // hkv
        if decay is not None:
            dec = decay.astype(cdt).reshape(b, t, hkv, -1)  # last dim 1 (per head) or dk
        if beta is not None:
            bet = np.broadcast_to(beta.astype(cdt).reshape(b, t, -1), (b, t, hkv))
        out = np.empty((b, t, hq, dv), dtype=cdt)
        for step in range(t):
            kt, vt = k[:, step], v[:, step]  # (B, Hkv, dk), (B, Hkv, dv)
            if rule in ("gated", "gated_delta"):
                gate = np.exp(dec[:, step])[..., None]  # (B, Hkv, dk|1, 1)
                state = state * gate
            if rule in ("delta", "gated_delta"):
                pred = np.einsum("bhkv,bhk->bhv", state, kt)
                upd = bet[:, step][..., None] * (vt - pred)
                state = state + kt[..., None] * upd[:, :, None, :]
            else:
                state = state + kt[..., None] * vt[:, :, None, :]
            qt = q[:, step].reshape(b, hkv, g_per, dk)
            out[:, step] = (scale * np.einsum("bhgk,bhkv->bhgv", qt, state)).reshape(b, hq, dv)
        sdt = past_state.dtype if past_state is not None else query.dtype
        return (out.reshape(b, t, hq * dv).astype(query.dtype), state.astype(sdt))


@kernel("FlexAttention", domain="ai.onnx.preview")
class FlexAttention(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mods = {}
        for name in ("score_mod", "prob_mod"):
            g = self.attr(name)
            if g is not None:
                self.mods[name] = (g, ctx.subgraph_runner(name))
        self.softmax_dtype = _softmax_dtype(node)
        self.scale = float_attr(node, "scale")          # None: 1/sqrt(head size)

    def _apply(self, name, x, outer_vals):
        if name not in self.mods:
            return x
        g, run = self.mods[name]
        outer = dict(zip(self.node.implicit_inputs, outer_vals))
        return np.asarray(run([x], outer)[0])

    def compute(self, q, k, v, *outer_vals):
        sdt = _cdt(q.dtype) if self.softmax_dtype is None else self.softmax_dtype
        scale = 1.0 / np.sqrt(q.shape[-1]) if self.scale is None else self.scale
        scores = (_group_scores(q.astype(sdt), k.astype(sdt)) * sdt.type(scale)).astype(sdt)
        scores = self._apply("score_mod", scores, outer_vals).astype(sdt, copy=False)
        probs = masked_softmax(scores.astype(_cdt(sdt))).astype(sdt)
        probs = self._apply("prob_mod", probs, outer_vals).astype(sdt, copy=False)
        y = _group_apply(probs.astype(_cdt(sdt)), v.astype(_cdt(sdt)))
        return y.astype(q.dtype)
