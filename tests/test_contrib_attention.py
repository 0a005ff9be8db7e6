"""com.microsoft Attention, MultiHeadAttention and RotaryEmbedding vs onnxruntime's CPU kernels:
mask formats, causality, past/present, attention_bias, custom scale, rotary layouts."""
from __future__ import annotations

import numpy as np
import pytest

from onnx import TensorProto

from ep_core.errors import NotImplemented as NotImplementedOp
from test_contrib_common import check, node_model, rand, run_ours, typed_outputs

F32 = TensorProto.FLOAT

B, S, D, N = 2, 4, 16, 2
TOL = dict(rtol=1e-4, atol=1e-5)


def _attention_inputs(rng, s=S, d_in=D, sizes=(D, D, D), mask=None, past=None, attention_bias=None,
                      with_bias=True):
    total = sum(sizes)
    return [("x", rand(rng, B, s, d_in)), ("w", rand(rng, d_in, total, scale=0.3)),
            ("bias", rand(rng, total, scale=0.1) if with_bias else None), ("mask", mask), ("past", past),
            ("attention_bias", attention_bias)]


def _masks(rng, s, total):
    return {
        "key_len": np.array([total, total - 2], np.int32),
        "end_start": np.array([total, total - 1, 0, 1], np.int32),
        "raw_2d": np.array([[1] * total, [1] * (total - 1) + [0]], np.int32),
        "raw_3d": (rng.random((B, s, total)) > 0.3).astype(np.int32),
        "fully_masked_row": np.array([[1] * total, [0] * total], np.int32),
    }


@pytest.mark.parametrize("mask", [None, "key_len", "end_start", "raw_2d", "raw_3d", "fully_masked_row"])
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_attention_masks(rng, mask, unidirectional):
    m = None if mask is None else _masks(rng, S, S)[mask]
    check("Attention", _attention_inputs(rng, mask=m), attrs={"num_heads": N, "unidirectional": unidirectional},
          consts=("w", "bias"), **TOL)


def test_attention_megatron_mask_refused_as_by_onnxruntime_cpu(rng):
    model, feeds = node_model("Attention", _attention_inputs(rng, mask=np.ones((B, 1, 8, 8), np.int32)),
                              attrs={"num_heads": N}, consts=("w", "bias"))
    with pytest.raises(NotImplementedOp, match="4-D"):
        run_ours(typed_outputs(model, [np.zeros((B, S, D), np.float32)]), feeds)


@pytest.mark.parametrize("sizes", [(D, D, 8), (8, 8, D)])
def test_attention_qkv_hidden_sizes(rng, sizes):
    check("Attention", _attention_inputs(rng, sizes=sizes), attrs={"num_heads": N, "qkv_hidden_sizes": list(sizes)},
          consts=("w", "bias"), **TOL)


@pytest.mark.parametrize("unidirectional", [0, 1])
@pytest.mark.parametrize("s,past_len", [(1, 5), (3, 2)])
@pytest.mark.parametrize("mask", [False, True])
def test_attention_past_present(rng, unidirectional, s, past_len, mask):
    past = rand(rng, 2, B, N, past_len, D // N)
    m = np.array([[1] * (past_len + s), [0] + [1] * (past_len + s - 1)], np.int32) if mask else None
    check("Attention", _attention_inputs(rng, s=s, mask=m, past=past), 2,
          attrs={"num_heads": N, "unidirectional": unidirectional}, consts=("w", "bias"), **TOL)


@pytest.mark.parametrize("bias_shape", [(1, N, S, S), (B, 1, S, S), (B, N, S, S)])
def test_attention_bias_input(rng, bias_shape):
    check("Attention", _attention_inputs(rng, attention_bias=rand(rng, *bias_shape)), attrs={"num_heads": N},
          consts=("w", "bias"), **TOL)


@pytest.mark.parametrize("attrs", [{"scale": 0.5}, {"mask_filter_value": -50.0}, {}])
def test_attention_scale_and_filter_value(rng, attrs):
    m = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], np.int32)
    check("Attention", _attention_inputs(rng, mask=m, with_bias=False), attrs=dict(attrs, num_heads=N),
          consts=("w",), **TOL)


def test_attention_input_hidden_size_differs(rng):
    check("Attention", _attention_inputs(rng, d_in=10), attrs={"num_heads": N}, consts=("w", "bias"), **TOL)


# --------------------------------------------------------------------------- MultiHeadAttention
def _mha_inputs(rng, s=S, kv=5, hv=D, layout="bsh", bias=True, mask=None, attention_bias=None, past=0):
    ins = [("q", rand(rng, B, s, D))]
    if layout == "bsh":
        ins += [("k", rand(rng, B, kv, D)), ("v", rand(rng, B, kv, hv))]
    else:
        ins += [("k", rand(rng, B, N, kv, D // N)), ("v", rand(rng, B, N, kv, hv // N))]
    ins += [("bias", rand(rng, D + D + hv, scale=0.1) if bias else None), ("mask", mask),
            ("attention_bias", attention_bias)]
    if past:
        ins += [("past_key", rand(rng, B, N, past, D // N)), ("past_value", rand(rng, B, N, past, hv // N))]
    return ins


@pytest.mark.parametrize("layout", ["bsh", "bnsh"])
@pytest.mark.parametrize("bias", [False, True])
def test_mha_layouts(rng, layout, bias):
    if layout == "bnsh" and bias:
        pytest.skip("onnxruntime adds no K/V bias to K/V given in heads")
    check("MultiHeadAttention", _mha_inputs(rng, layout=layout, bias=bias), attrs={"num_heads": N}, **TOL)


@pytest.mark.parametrize("mask", ["key_len", "raw_2d", "raw_3d", "fully_masked_row"])
def test_mha_key_padding_mask(rng, mask):
    m = _masks(rng, S, 5)[mask]
    check("MultiHeadAttention", _mha_inputs(rng, mask=m), attrs={"num_heads": N}, **TOL)


@pytest.mark.parametrize("bias_shape", [(1, 1, S, 5), (B, N, S, 5)])
def test_mha_attention_bias(rng, bias_shape):
    check("MultiHeadAttention", _mha_inputs(rng, attention_bias=rand(rng, *bias_shape)), attrs={"num_heads": N},
          **TOL)


@pytest.mark.parametrize("unidirectional", [0, 1])
def test_mha_past_present_self_attention(rng, unidirectional):
    ins = _mha_inputs(rng, s=2, kv=2, past=3)
    check("MultiHeadAttention", ins, 3, attrs={"num_heads": N, "unidirectional": unidirectional}, **TOL)


def test_mha_different_v_size_and_scale(rng):
    check("MultiHeadAttention", _mha_inputs(rng, hv=8), attrs={"num_heads": N, "scale": 0.3}, **TOL)


def test_mha_qk_output(rng):
    ins = _mha_inputs(rng, s=2, kv=2, past=3, mask=np.array([5, 4], np.int32))
    check("MultiHeadAttention", ins, 4, attrs={"num_heads": N}, output_types=[(F32, None)] * 4, **TOL)


# --------------------------------------------------------------------------- RotaryEmbedding
def _caches(rng, max_seq, half):
    ang = rng.random((max_seq, half)) * 6
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


@pytest.mark.parametrize("layout", ["bsh", "bnsh"])
@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("positions", ["offset", "per_token"])
def test_rotary_embedding(rng, layout, interleaved, positions):
    s, hd = 5, 8
    x = rand(rng, B, s, N * hd) if layout == "bsh" else rand(rng, B, N, s, hd)
    pid = np.array([3], np.int64) if positions == "offset" else rng.integers(0, 12, (B, s)).astype(np.int64)
    cos, sin = _caches(rng, 12, hd // 2)
    attrs = {"interleaved": interleaved}
    if layout == "bsh":
        attrs["num_heads"] = N
    check("RotaryEmbedding", [("x", x), ("pid", pid), ("cos", cos), ("sin", sin)], attrs=attrs,
          consts=("cos", "sin"), **TOL)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_partial_dim(rng, interleaved):
    s, hd, rd = 3, 16, 8
    cos, sin = _caches(rng, 8, rd // 2)
    check("RotaryEmbedding", [("x", rand(rng, B, s, N * hd)), ("pid", np.array([0], np.int64)), ("cos", cos),
                              ("sin", sin)],
          attrs={"num_heads": N, "rotary_embedding_dim": rd, "interleaved": interleaved}, consts=("cos", "sin"), **TOL)


def test_rotary_embedding_head_size_from_cache(rng):
    cos, sin = _caches(rng, 8, 4)
    check("RotaryEmbedding", [("x", rand(rng, B, 3, N * 8)), ("pid", np.array([1], np.int64)), ("cos", cos),
                              ("sin", sin)], consts=("cos", "sin"), **TOL)


@pytest.mark.parametrize("nq, nkv", [(12, 12), (8, 2), (6, 3)])
def test_heads_split_between_threads_match_one_thread(monkeypatch, nq, nkv):
    """With two intra-op threads `attend` splits the key/value heads (and their query heads)
    between them: the same outputs, scores and probabilities as on one thread, with per-head and
    broadcast biases and per-head sinks."""
    from ep_cpu.kernels import contrib_attention as ca
    rng = np.random.default_rng(nq + nkv)
    q = rng.standard_normal((2, nq, 5, 8)).astype(np.float32)
    k, v = (rng.standard_normal((2, nkv, 7, 8)).astype(np.float32) for _ in range(2))
    for bias, sink in ((rng.standard_normal((2, 1, 5, 7)).astype(np.float32), None),
                       (rng.standard_normal((1, nq, 5, 7)).astype(np.float32),
                        rng.standard_normal((1, nq, 1, 1)).astype(np.float32))):
        monkeypatch.setattr(ca, "get_num_threads", lambda: 1)
        one = ca.attend(q, k, v, 0.3, bias, sink=sink, want_scores=True)
        monkeypatch.setattr(ca, "get_num_threads", lambda: 2)
        monkeypatch.setattr(ca, "ATTEND_SPLIT_MIN_MACS", 0)
        calls = []
        real = ca._attend_heads
        monkeypatch.setattr(ca, "_attend_heads", lambda *a: calls.append(a[0].shape[1]) or real(*a))
        two = ca.attend(q, k, v, 0.3, bias, sink=sink, want_scores=True)
        monkeypatch.setattr(ca, "_attend_heads", real)
        assert sorted(calls) == sorted([nq // 2, nq - nq // 2]) if nkv % 2 == 0 else len(calls) == 2
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a, b)
