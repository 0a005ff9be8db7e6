"""Small stateful real-time models (~1 ms a run) in the shape of Silero VAD v5, random weights.

A 576-sample chunk (64 samples of context + 512 new ones) and the recurrent state (2, 1, 128) come
in; an `If` on the sample rate picks the 16 kHz or the 8 kHz branch; each branch runs an STFT as a
strided Conv, the magnitude, four Conv+Relu encoder layers, one LSTM (or GRU) step (hidden 128) on
the state, and a Conv+Sigmoid decoder. The new state goes back in with the next chunk
(`benchmarks/realtime_models.py` streams it; the suite in `benchmarks/cpu_vs_onnxruntime.py`
times one chunk with a fixed state).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HID = 128


class _Weights:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, shape, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        self.inits.append(numpy_helper.from_array(self.rng.uniform(-s, s, shape).astype(np.float32), name))
        return name

    def ints(self, name: str, values) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name


def _branch(w: _Weights, tag: str, cell: str, n_fft: int, hop: int) -> onnx.GraphProto:
    """One sample-rate branch: reads the outer `x` (1, 576) and `state` (2, 1, 128)."""
    p = f"{tag}."
    bins = n_fft // 2 + 1
    nodes = []

    def op(kind, ins, outs, **attrs):
        nodes.append(helper.make_node(kind, ins, outs, name=p + outs[0], **attrs))
        return outs[0]

    x3 = op("Unsqueeze", ["x", w.ints(p + "ax1", [1])], [p + "x3"])
    spec = op("Conv", [x3, w.add(p + "stft", (2 * bins, 1, n_fft))], [p + "spec"], strides=[hop])
    re = op("Slice", [spec, w.ints(p + "s0", [0]), w.ints(p + "s1", [bins]), w.ints(p + "sa", [1])], [p + "re"])
    im = op("Slice", [spec, w.ints(p + "s2", [bins]), w.ints(p + "s3", [2 * bins]), w.ints(p + "sb", [1])],
            [p + "im"])
    mag = op("Sqrt", [op("Add", [op("Mul", [re, re], [p + "re2"]), op("Mul", [im, im], [p + "im2"])],
                         [p + "pow"])], [p + "mag"])
    h = mag
    for k, (cin, cout, stride) in enumerate(((bins, 128, 1), (128, 64, 2), (64, 64, 2), (64, 128, 1))):
        h = op("Conv", [h, w.add(f"{p}enc{k}.w", (cout, cin, 3)), w.add(f"{p}enc{k}.b", (cout,))],
               [f"{p}enc{k}"], pads=[1, 1], strides=[stride])
        h = op("Relu", [h], [f"{p}enc{k}.relu"])
    # (1, 128, T) -> the last frame as a one-step sequence (1, 1, 128)
    last = op("Slice", [h, w.ints(p + "l0", [-1]), w.ints(p + "l1", [2**62]), w.ints(p + "l2", [2])], [p + "last"])
    seq = op("Transpose", [last], [p + "seq"], perm=[2, 0, 1])
    g = 4 if cell == "LSTM" else 3
    h0 = op("Slice", ["state", w.ints(p + "h0a", [0]), w.ints(p + "h0b", [1]), w.ints(p + "h0c", [0])], [p + "h0"])
    c0 = op("Slice", ["state", w.ints(p + "c0a", [1]), w.ints(p + "c0b", [2]), w.ints(p + "c0c", [0])], [p + "c0"])
    rnn_in = [seq, w.add(p + "W", (1, g * HID, HID)), w.add(p + "R", (1, g * HID, HID)),
              w.add(p + "B", (1, 2 * g * HID)), "", h0]
    if cell == "LSTM":
        rnn_in.append(c0)
        nodes.append(helper.make_node("LSTM", rnn_in, [p + "Y", p + "Yh", p + "Yc"], name=p + "lstm",
                                      hidden_size=HID))
        new_c = p + "Yc"
    else:
        nodes.append(helper.make_node("GRU", rnn_in, [p + "Y", p + "Yh"], name=p + "gru", hidden_size=HID,
                                      linear_before_reset=1))
        new_c = c0   # a GRU has no cell state: carried unchanged
    state_out = op("Concat", [p + "Yh", new_c], [p + "state_out"], axis=0)
    y = op("Relu", [op("Reshape", [p + "Y", w.ints(p + "yshape", [1, HID, 1])], [p + "y3"])], [p + "yrelu"])
    dec = op("Conv", [y, w.add(p + "dec.w", (1, HID, 1)), w.add(p + "dec.b", (1,))], [p + "dec"])
    prob = op("Sigmoid", [op("Reshape", [dec, w.ints(p + "pshape", [1, 1])], [p + "dec2"])], [p + "prob"])
    outs = [helper.make_tensor_value_info(prob, TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info(state_out, TensorProto.FLOAT, [2, 1, HID])]
    # The branch's weights live in the branch (as torch.onnx exports them), so its kernels see them
    # as constants of their graph.
    return helper.make_graph(nodes, f"{tag}_branch", [], outs, initializer=w.inits)


def vad_model(cell: str = "LSTM", seed: int = 0) -> onnx.ModelProto:
    then_g = _branch(_Weights(seed), "sr16k", cell, 256, 128)
    else_g = _branch(_Weights(seed + 1), "sr8k", cell, 128, 64)
    w = _Weights(seed + 2)
    nodes = [
        helper.make_node("Equal", ["sr", w.ints("sr16000", 16000)], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["prob", "stateN"], name="rate", then_branch=then_g,
                         else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, f"vad_{cell.lower()}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 576]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, 1, HID]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, 1, HID])],
        initializer=w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model



def vad_lstm(seed: int = 0) -> onnx.ModelProto:
    return vad_model("LSTM", seed)


def vad_gru(seed: int = 0) -> onnx.ModelProto:
    return vad_model("GRU", seed)


def chunk_feeds(seed: int = 1) -> dict[str, np.ndarray]:
    """One 16 kHz chunk with a non-zero state (as mid-stream)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, 576)).astype(np.float32) * np.float32(0.1),
            "state": rng.standard_normal((2, 1, HID)).astype(np.float32) * np.float32(0.3),
            "sr": np.array(16000, np.int64)}
