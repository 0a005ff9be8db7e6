"""com.microsoft GroupQueryAttention vs onnxruntime's CPU kernel: first prompt, token generation
with a KV cache (equal and ragged lengths), packed QKV, rotary, local window, softcap, sinks,
attention_bias, per-head Q/K norm, output_qk."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from ep_core.errors import NotImplemented as NotImplementedOp
from test_contrib_common import check, node_model, rand, run_ours

F32 = TensorProto.FLOAT
B, NQ, NKV, HD = 2, 4, 2, 16
TOL = dict(rtol=1e-4, atol=1e-5)


def _inputs(rng, s, past, seqlens=None, total=None, packed=False, rotary=False, b=None, **extra):
    """GQA inputs for S new tokens after `past` cached ones (seqlens per entry, default past+s-1).
    onnxruntime takes several new tokens after a past (a prompt chunk) only for batch 1."""
    B = b or (1 if past and s > 1 else 2)  # noqa: N806
    seqlens = np.full(B, past + s - 1, np.int32) if seqlens is None else np.asarray(seqlens, np.int32)
    total = int(seqlens.max()) + 1 if total is None else total
    if packed:
        ins = [("q", rand(rng, B, s, (NQ + 2 * NKV) * HD)), ("k", None), ("v", None)]
    else:
        ins = [("q", rand(rng, B, s, NQ * HD)), ("k", rand(rng, B, s, NKV * HD)), ("v", rand(rng, B, s, NKV * HD))]
    ins += [("past_k", rand(rng, B, NKV, past, HD) if past else None),
            ("past_v", rand(rng, B, NKV, past, HD) if past else None),
            ("seqlens_k", seqlens), ("total", np.array(total, np.int32))]
    if rotary:
        ang = rng.random((32, HD // 2)) * 6
        ins += [("cos", np.cos(ang).astype(np.float32)), ("sin", np.sin(ang).astype(np.float32))]
    else:
        ins += [("cos", None), ("sin", None)]
    for name in ("position_ids", "attention_bias", "head_sink", "k_scale", "v_scale", "q_norm", "k_norm"):
        ins.append((name, extra.get(name)))
    return ins


def gqa(rng, ins, attrs=None, n_out=3, consts=("cos", "sin")):
    return check("GroupQueryAttention", ins, n_out, dict({"num_heads": NQ, "kv_num_heads": NKV}, **(attrs or {})),
                 consts=consts, output_types=[(F32, None)] * n_out, **TOL)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rotary", [False, True])
def test_gqa_first_prompt(rng, packed, rotary):
    gqa(rng, _inputs(rng, 5, 0, packed=packed, rotary=rotary), {"do_rotary": int(rotary)})


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("s", [1, 3])
def test_gqa_with_past(rng, packed, rotary, s):
    gqa(rng, _inputs(rng, s, 6, packed=packed, rotary=rotary), {"do_rotary": int(rotary)})


def test_gqa_interleaved_rotary(rng):
    gqa(rng, _inputs(rng, 1, 4, rotary=True), {"do_rotary": 1, "rotary_interleaved": 1})


def test_gqa_ragged_token_generation(rng):
    """Entry 1 has 3 cached tokens in a 6-row past buffer, entry 0 has 6."""
    gqa(rng, _inputs(rng, 1, 6, seqlens=[6, 3], total=7))


@pytest.mark.parametrize("window", [-1, 0, 1, 2, 5])
def test_gqa_local_window(rng, window):
    gqa(rng, _inputs(rng, 3, 5), {"local_window_size": window})


def test_gqa_local_window_first_prompt(rng):
    gqa(rng, _inputs(rng, 6, 0), {"local_window_size": 2})


@pytest.mark.parametrize("attrs", [{"softcap": 2.0}, {"scale": 0.2}, {"smooth_softmax": 1}])
def test_gqa_softmax_variants(rng, attrs):
    gqa(rng, _inputs(rng, 2, 4), attrs)


def test_gqa_head_sink(rng):
    gqa(rng, _inputs(rng, 2, 4, head_sink=rand(rng, NQ)), {"smooth_softmax": 1})


def test_gqa_attention_bias(rng):
    gqa(rng, _inputs(rng, 1, 4, attention_bias=rand(rng, B, 1, 1, 5)))


def test_gqa_non_causal_first_prompt(rng):
    gqa(rng, _inputs(rng, 4, 0), {"causal": 0})


def test_gqa_qk_norm_refused_as_by_onnxruntime_cpu(rng):
    ins = _inputs(rng, 1, 3, q_norm=rand(rng, HD), k_norm=rand(rng, HD))
    model, feeds = node_model("GroupQueryAttention", ins, 3, {"num_heads": NQ, "kv_num_heads": NKV},
                              output_types=[(F32, [None] * 3), (F32, [None] * 4), (F32, [None] * 4)])
    with pytest.raises(NotImplementedOp, match="q_norm_weight"):
        run_ours(model, feeds)


@pytest.mark.parametrize("mode", [1, 2])
def test_gqa_output_qk(rng, mode):
    gqa(rng, _inputs(rng, 2, 3), {"qk_output": mode}, n_out=4)


def test_gqa_position_ids(rng):
    pid = np.array([[7], [2]], np.int64)
    gqa(rng, _inputs(rng, 1, 4, rotary=True, position_ids=pid), {"do_rotary": 1})
