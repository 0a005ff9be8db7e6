"""Recurrent sequence classifiers as torch.onnx exports nn.LSTM / nn.GRU.

Input (batch, seq, features) is transposed to ONNX's (seq, batch, features); layer 1 is
bidirectional, its two directions are concatenated into the features of layer 2
(unidirectional); the last hidden state goes through a Linear head. Weights are
U(-1/sqrt(H), 1/sqrt(H)) as torch initialises them. The GRU uses linear_before_reset=1 (torch's
formulation).
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from .common import F32, GraphBuilder

RNN = dict(batch=4, seq=100, features=64, hidden=256, classes=10)


def _recurrent(kind: str, seed: int, **over) -> onnx.ModelProto:
    c = {**RNN, **over}
    hsz, gates = c["hidden"], (4 if kind == "LSTM" else 3)
    g = GraphBuilder(kind.lower() + "_classifier", seed)
    x = g.input("input", F32, ["batch", "sequence", c["features"]])
    y = g.op("Transpose", [x], name="to_time_major", perm=[1, 0, 2])
    bound = 1.0 / math.sqrt(hsz)
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    d_in = c["features"]
    for layer, dirs in ((0, 2), (1, 1)):
        p = f"{kind.lower()}.l{layer}"
        w = g.uniform(f"{p}.W", (dirs, gates * hsz, d_in), -bound, bound)
        r = g.uniform(f"{p}.R", (dirs, gates * hsz, hsz), -bound, bound)
        b = g.uniform(f"{p}.B", (dirs, 2 * gates * hsz), -bound, bound)
        outs = g.op(kind, [y, w, r, b], n_out=2 if kind == "GRU" else 3, name=p, hidden_size=hsz,
                    direction="bidirectional" if dirs == 2 else "forward", **extra)
        seq_out, last_h = outs[0], outs[1]
        if dirs == 2:
            # Y: (seq, dirs, batch, H) -> (seq, batch, dirs * H)
            seq_out = g.op("Transpose", [seq_out], name=f"{p}/transpose", perm=[0, 2, 1, 3])
            y = g.op("Reshape", [seq_out, g.ints(f"{p}.shape", [0, 0, dirs * hsz])], name=f"{p}/reshape")
        d_in = dirs * hsz
    h = g.op("Squeeze", [last_h, g.ints("squeeze.axes", [0])], name="last_hidden")
    w = g.normal("head.weight", (c["classes"], hsz), 1.0 / math.sqrt(hsz))
    logits = g.op("Gemm", [h, w, g.normal("head.bias", (c["classes"],), 0.02)], name="head", transB=1)
    g.output(logits, "logits", F32, ["batch", c["classes"]])
    g.output(y, "layer1_output", F32, ["sequence", "batch", 2 * hsz])
    return g.model(doc=f"2-layer {kind} sequence classifier, random weights")


def lstm_classifier(seed: int = 0, **over) -> onnx.ModelProto:
    return _recurrent("LSTM", seed, **over)


def gru_classifier(seed: int = 0, **over) -> onnx.ModelProto:
    return _recurrent("GRU", seed, **over)


def sequence_feeds(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((RNN["batch"], RNN["seq"], RNN["features"]), dtype=np.float32)}
