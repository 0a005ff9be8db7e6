"""Kernels inside If/Loop bodies see the enclosing graph's constants as constant inputs
(`ctx.constant_input`), so their weights are prepared when the session is built; a feed or a
value computed at run time never is, and a body's own value of the same name wins."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import executor

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

H = 8


def _if_lstm_model(weights_as_inputs: bool) -> bytes:
    """An If whose branches run an LSTM on weights W, R, B defined in the outer graph."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-0.3, 0.3, (1, 4 * H, 5)).astype(np.float32)
    r = rng.uniform(-0.3, 0.3, (1, 4 * H, H)).astype(np.float32)
    b = rng.uniform(-0.3, 0.3, (1, 8 * H)).astype(np.float32)

    def branch(tag: str, scale: float) -> object:
        nodes = [helper.make_node("Mul", ["x", f"{tag}_s"], [f"{tag}_xs"]),
                 helper.make_node("LSTM", [f"{tag}_xs", "W", "R", "B"], [f"{tag}_y", f"{tag}_h"],
                                  hidden_size=H, name=f"{tag}_lstm")]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_h", TensorProto.FLOAT,
                                                                                [1, 2, H])],
                                 initializer=[numpy_helper.from_array(np.float32(scale), f"{tag}_s")])

    nodes = [helper.make_node("If", ["cond"], ["h"], then_branch=branch("then", 1.0),
                              else_branch=branch("else", -1.0))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 5]),
              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    if weights_as_inputs:   # overridable initializers: feeds may replace them, never constants
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
                   for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("h", TensorProto.FLOAT,
                                                                                 [1, 2, H])],
                              initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _body_constants(monkeypatch, data: bytes) -> tuple[ep_core.InferenceSession, dict]:
    made: dict[str, set[int]] = {}
    real_make = executor._make_kernel

    def make(node, *args, **kwargs):
        k = real_make(node, *args, **kwargs)
        ctx = getattr(k, "ctx", None)
        if ctx is not None:
            made[node.name] = set(ctx.constant_inputs)
        return k

    monkeypatch.setattr(executor, "_make_kernel", make)
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    return sess, made


def test_outer_constants_reach_body_kernels(monkeypatch):
    data = _if_lstm_model(weights_as_inputs=False)
    sess, made = _body_constants(monkeypatch, data)
    assert made["then_lstm"] >= {1, 2, 3} and made["else_lstm"] >= {1, 2, 3}
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 2, 5)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        np.testing.assert_allclose(sess.run(None, feeds)[0], ref.run(None, feeds)[0], rtol=1e-5, atol=1e-6)


def test_overridable_outer_initializers_stay_run_time_values(monkeypatch):
    data = _if_lstm_model(weights_as_inputs=True)
    sess, made = _body_constants(monkeypatch, data)
    assert not made["then_lstm"] & {1, 2, 3}
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((3, 2, 5)).astype(np.float32), "cond": np.array(True),
             "R": rng.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32)}
    np.testing.assert_allclose(sess.run(None, feeds)[0], ref.run(None, feeds)[0], rtol=1e-5, atol=1e-6)
