"""Transformers written the way torch.onnx exports HuggingFace models (opset 17).

* `bert_base`: 12-layer BERT-base encoder (hidden 768, 12 heads, FFN 3072), sequence 128.
  MatMul/Add projections, Reshape/Transpose heads, scaled QK^T + additive mask, Softmax,
  LayerNormalization ops, Gelu written out with Erf, a Tanh pooler.
* `gpt2_decoder_step`: GPT-2-small (12 layers, 768, 12 heads, vocab 50257) generating one token
  with a KV cache: past key/value inputs per layer, present outputs (past ++ new).
  Layer norms are the decomposed ReduceMean/Sub/Pow/Sqrt/Div pattern of older exports,
  Conv1D c_attn + Split, gelu_new with Tanh, LM head tied to the token embedding (Gemm transB).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from .common import F32, I64, GraphBuilder

BERT = dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_pos=512, seq=128)
GPT2 = dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=50257, max_pos=1024, past=127)


def _layer_norm(g: GraphBuilder, x: str, d: int, name: str) -> str:
    gamma = g.uniform(f"{name}.weight", (d,), 0.9, 1.1)
    beta = g.normal(f"{name}.bias", (d,), 0.02)
    return g.op("LayerNormalization", [x, gamma, beta], name=name, axis=-1, epsilon=1e-12)


def _layer_norm_decomposed(g: GraphBuilder, x: str, d: int, name: str, eps: float = 1e-5) -> str:
    mean = g.op("ReduceMean", [x], name=f"{name}/mean", axes=[-1], keepdims=1)
    xc = g.op("Sub", [x, mean], name=f"{name}/sub")
    var = g.op("ReduceMean", [g.op("Pow", [xc, g.scalar(f"{name}.two", 2.0)], name=f"{name}/pow")],
               name=f"{name}/var", axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [var, g.scalar(f"{name}.eps", eps)], name=f"{name}/add_eps")],
               name=f"{name}/sqrt")
    y = g.op("Div", [xc, std], name=f"{name}/div")
    y = g.op("Mul", [y, g.uniform(f"{name}.weight", (d,), 0.9, 1.1)], name=f"{name}/mul")
    return g.op("Add", [y, g.normal(f"{name}.bias", (d,), 0.02)], name=f"{name}/add")


def _split_heads(g: GraphBuilder, x: str, heads: int, dh: int, perm: list[int], name: str) -> str:
    shape = g.ints(f"{name}.shape", [0, 0, heads, dh])
    return g.op("Transpose", [g.op("Reshape", [x, shape], name=f"{name}/reshape")],
                name=f"{name}/transpose", perm=perm)


def _merge_heads(g: GraphBuilder, x: str, d: int, name: str) -> str:
    x = g.op("Transpose", [x], name=f"{name}/transpose", perm=[0, 2, 1, 3])
    return g.op("Reshape", [x, g.ints(f"{name}.shape", [0, 0, d])], name=f"{name}/reshape")


def _gelu_erf(g: GraphBuilder, x: str, name: str) -> str:
    """0.5 * x * (1 + erf(x / sqrt(2))), as torch exports nn.GELU() before opset 20."""
    e = g.op("Erf", [g.op("Div", [x, g.scalar(f"{name}.sqrt2", math.sqrt(2.0))], name=f"{name}/div")],
             name=f"{name}/erf")
    e = g.op("Add", [e, g.scalar(f"{name}.one", 1.0)], name=f"{name}/add")
    y = g.op("Mul", [x, e], name=f"{name}/mul")
    return g.op("Mul", [y, g.scalar(f"{name}.half", 0.5)], name=f"{name}/mul_half")


def _gelu_tanh(g: GraphBuilder, x: str, name: str) -> str:
    """GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x3 = g.op("Pow", [x, g.scalar(f"{name}.three", 3.0)], name=f"{name}/pow")
    inner = g.op("Add", [x, g.op("Mul", [x3, g.scalar(f"{name}.c", 0.044715)], name=f"{name}/mul_c")],
                 name=f"{name}/add")
    inner = g.op("Mul", [inner, g.scalar(f"{name}.k", math.sqrt(2.0 / math.pi))], name=f"{name}/mul_k")
    t = g.op("Add", [g.op("Tanh", [inner], name=f"{name}/tanh"), g.scalar(f"{name}.one", 1.0)],
             name=f"{name}/add1")
    half = g.op("Mul", [x, g.scalar(f"{name}.half", 0.5)], name=f"{name}/half")
    y = g.op("Mul", [half, t], name=f"{name}/mul")
    return y


def _additive_mask(g: GraphBuilder, mask: str, name: str) -> str:
    """(1 - mask) * -10000 broadcast over heads and query positions: [B, 1, 1, S]."""
    m = g.op("Unsqueeze", [mask, g.ints(f"{name}.axes", [1, 2])], name=f"{name}/unsqueeze")
    m = g.op("Cast", [m], name=f"{name}/cast", to=F32)
    m = g.op("Sub", [g.scalar(f"{name}.one", 1.0), m], name=f"{name}/sub")
    return g.op("Mul", [m, g.scalar(f"{name}.neg", -10000.0)], name=f"{name}/mul")


def bert_base(seed: int = 0, **over) -> onnx.ModelProto:
    c = {**BERT, **over}
    d, h, dh = c["hidden"], c["heads"], c["hidden"] // c["heads"]
    g = GraphBuilder("bert_base", seed)
    ids = g.input("input_ids", I64, ["batch", "sequence"])
    mask = g.input("attention_mask", I64, ["batch", "sequence"])
    types = g.input("token_type_ids", I64, ["batch", "sequence"])
    word = g.op("Gather", [g.normal("embeddings.word_embeddings.weight", (c["vocab"], d), 0.02), ids],
                name="embeddings/word")
    pos_ids = g.const("embeddings.position_ids", np.arange(c["seq"], dtype=np.int64)[None])
    pos = g.op("Gather", [g.normal("embeddings.position_embeddings.weight", (c["max_pos"], d), 0.02),
                          pos_ids], name="embeddings/pos")
    tok = g.op("Gather", [g.normal("embeddings.token_type_embeddings.weight", (2, d), 0.02), types],
               name="embeddings/type")
    x = g.op("Add", [g.op("Add", [word, pos], name="embeddings/add0"), tok], name="embeddings/add1")
    x = _layer_norm(g, x, d, "embeddings.LayerNorm")
    amask = _additive_mask(g, mask, "extended_attention_mask")
    for i in range(c["layers"]):
        p = f"encoder.layer.{i}"
        # q/k a little wider than BERT's 0.02 init so the softmax is not uniform
        q = _split_heads(g, g.linear(x, d, d, f"{p}.attention.self.query", std=0.06), h, dh,
                         [0, 2, 1, 3], f"{p}/q")
        k = _split_heads(g, g.linear(x, d, d, f"{p}.attention.self.key", std=0.06), h, dh,
                         [0, 2, 3, 1], f"{p}/k")
        v = _split_heads(g, g.linear(x, d, d, f"{p}.attention.self.value"), h, dh,
                         [0, 2, 1, 3], f"{p}/v")
        s = g.op("MatMul", [q, k], name=f"{p}/scores")
        s = g.op("Div", [s, g.scalar(f"{p}.scale", math.sqrt(dh))], name=f"{p}/scale")
        s = g.op("Add", [s, amask], name=f"{p}/mask")
        pr = g.op("Softmax", [s], name=f"{p}/softmax", axis=-1)
        ctx = _merge_heads(g, g.op("MatMul", [pr, v], name=f"{p}/context"), d, f"{p}/merge")
        o = g.linear(ctx, d, d, f"{p}.attention.output.dense", std=0.02)
        x = _layer_norm(g, g.op("Add", [o, x], name=f"{p}/residual1"), d,
                        f"{p}.attention.output.LayerNorm")
        f = _gelu_erf(g, g.linear(x, d, c["ffn"], f"{p}.intermediate.dense"), f"{p}/gelu")
        f = g.linear(f, c["ffn"], d, f"{p}.output.dense", std=0.02)
        x = _layer_norm(g, g.op("Add", [f, x], name=f"{p}/residual2"), d, f"{p}.output.LayerNorm")
    g.output(x, "last_hidden_state", F32, ["batch", "sequence", d])
    first = g.op("Gather", [x, g.const("pooler.index", np.array(0, dtype=np.int64))],
                 name="pooler/first", axis=1)
    pooled = g.op("Tanh", [g.linear(first, d, d, "pooler.dense")], name="pooler/tanh")
    g.output(pooled, "pooler_output", F32, ["batch", d])
    return g.model(doc="BERT-base-shaped encoder, random weights")


def bert_feeds(seed: int = 1, seq: int = BERT["seq"], batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[:, seq - seq // 8:] = 0   # padded tail
    return {"input_ids": rng.integers(0, BERT["vocab"], (batch, seq), dtype=np.int64),
            "attention_mask": mask,
            "token_type_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int64).repeat(batch, 0)}


def gpt2_decoder_step(seed: int = 0, **over) -> onnx.ModelProto:
    c = {**GPT2, **over}
    d, h, dh = c["hidden"], c["heads"], c["hidden"] // c["heads"]
    g = GraphBuilder("gpt2_decoder_step", seed)
    ids = g.input("input_ids", I64, ["batch", 1])
    pos_ids = g.input("position_ids", I64, ["batch", 1])
    mask = g.input("attention_mask", I64, ["batch", "total_sequence"])
    wte = g.normal("transformer.wte.weight", (c["vocab"], d), 0.02)
    x = g.op("Add", [g.op("Gather", [wte, ids], name="wte"),
                     g.op("Gather", [g.normal("transformer.wpe.weight", (c["max_pos"], d), 0.01),
                                     pos_ids], name="wpe")], name="embed")
    amask = _additive_mask(g, mask, "attn_mask")
    split = g.ints("qkv.split", [d, d, d])
    presents = []
    for i in range(c["layers"]):
        p = f"transformer.h.{i}"
        past_k = g.input(f"past_key_values.{i}.key", F32, ["batch", h, "past_sequence", dh])
        past_v = g.input(f"past_key_values.{i}.value", F32, ["batch", h, "past_sequence", dh])
        a = _layer_norm_decomposed(g, x, d, f"{p}.ln_1")
        qkv = g.linear(a, d, 3 * d, f"{p}.attn.c_attn", std=0.04)
        q, k, v = g.op("Split", [qkv, split], n_out=3, name=f"{p}/split", axis=2)
        q = _split_heads(g, q, h, dh, [0, 2, 1, 3], f"{p}/q")
        k = _split_heads(g, k, h, dh, [0, 2, 1, 3], f"{p}/k")
        v = _split_heads(g, v, h, dh, [0, 2, 1, 3], f"{p}/v")
        k = g.op("Concat", [past_k, k], name=f"{p}/present_key", axis=2)
        v = g.op("Concat", [past_v, v], name=f"{p}/present_value", axis=2)
        presents.append((k, v))
        kt = g.op("Transpose", [k], name=f"{p}/kT", perm=[0, 1, 3, 2])
        s = g.op("MatMul", [q, kt], name=f"{p}/scores")
        s = g.op("Div", [s, g.scalar(f"{p}.scale", math.sqrt(dh))], name=f"{p}/scale")
        pr = g.op("Softmax", [g.op("Add", [s, amask], name=f"{p}/mask")], name=f"{p}/softmax", axis=-1)
        ctx = _merge_heads(g, g.op("MatMul", [pr, v], name=f"{p}/context"), d, f"{p}/merge")
        x = g.op("Add", [x, g.linear(ctx, d, d, f"{p}.attn.c_proj", std=0.02)], name=f"{p}/residual1")
        m = _layer_norm_decomposed(g, x, d, f"{p}.ln_2")
        m = _gelu_tanh(g, g.linear(m, d, c["ffn"], f"{p}.mlp.c_fc"), f"{p}/gelu")
        x = g.op("Add", [x, g.linear(m, c["ffn"], d, f"{p}.mlp.c_proj", std=0.02)], name=f"{p}/residual2")
    x = _layer_norm_decomposed(g, x, d, "transformer.ln_f")
    # Tied LM head: logits = h @ wte^T (Gemm with transB shares the embedding initializer).
    x2 = g.op("Reshape", [x, g.ints("lm_head.flat", [-1, d])], name="lm_head/flatten")
    logits = g.op("Gemm", [x2, wte], name="lm_head", transB=1)
    logits = g.op("Reshape", [logits, g.ints("lm_head.shape", [-1, 1, c["vocab"]])], name="lm_head/reshape")
    g.output(logits, "logits", F32, ["batch", 1, c["vocab"]])
    for i, (k, v) in enumerate(presents):
        g.output(k, f"present.{i}.key", F32, ["batch", h, "total_sequence", dh])
        g.output(v, f"present.{i}.value", F32, ["batch", h, "total_sequence", dh])
    return g.model(doc="GPT-2-small-shaped decoder step with KV cache, random weights")


def gpt2_feeds(seed: int = 1, past: int = GPT2["past"], batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = GPT2
    dh = c["hidden"] // c["heads"]
    feeds = {"input_ids": rng.integers(0, c["vocab"], (batch, 1), dtype=np.int64),
             "position_ids": np.full((batch, 1), past, dtype=np.int64),
             "attention_mask": np.ones((batch, past + 1), dtype=np.int64)}
    for i in range(c["layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (batch, c["heads"], past, dh), dtype=np.float32)
    return feeds
