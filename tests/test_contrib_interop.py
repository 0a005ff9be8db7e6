"""Models optimized by us and saved (SessionOptions.optimized_model_filepath) run in onnxruntime:
our fusions write onnxruntime's ops (com.microsoft FusedConv, FusedGemm, Gelu, FastGelu,
BiasGelu, SkipLayerNormalization, Attention; the ONNX-domain LayerNormalization below opset 17).

Our FusedMatMul (MatMul + bias [+ activation] in one GEMM) has no onnxruntime counterpart: a
model meant for onnxruntime is optimized with FuseMatMulBiasActivation disabled (then Add of the
bias + Gelu becomes BiasGelu)."""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import ep_core
from opt_helpers import F32, init, model, options, randn
from test_contrib_common import compare, ort

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.models import transformer as T  # noqa: E402
from ep_core import GraphOptimizationLevel as L  # noqa: E402


def optimized_by_us(m: onnx.ModelProto, path: Path, disabled=()) -> tuple[onnx.ModelProto, ep_core.InferenceSession]:
    sess = ep_core.InferenceSession(m.SerializeToString(), options(L.ORT_ENABLE_ALL, disabled,
                                                                   optimized_model_filepath=str(path)),
                                    providers=["cpu"])
    return onnx.load(str(path)), sess


def domains(m: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((n.domain or "ai.onnx", n.op_type) for n in m.graph.node)


def run_in_onnxruntime(path: Path, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # run our graph as is
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def check_round_trip(m, feeds, path, name, disabled=(), rtol=1e-4, atol=1e-5) -> collections.Counter:
    saved, ours = optimized_by_us(m, path, disabled)
    found = domains(saved)
    assert not any(d == "com.ep_core" for d, _ in found), f"{name}: our own domain left: {found}"
    refs = run_in_onnxruntime(path, feeds)
    compare(name, ours.run(None, feeds), refs, rtol=rtol, atol=atol)
    reloaded = ep_core.InferenceSession(str(path), providers=["cpu"]).run(None, feeds)   # and here again
    compare(name + "/reloaded", reloaded, refs, rtol=rtol, atol=atol)
    unoptimized = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    compare(name + "/vs-unoptimized", refs, unoptimized, rtol=rtol, atol=atol)
    return found


def test_conv_net_fusions_run_in_onnxruntime(rng, tmp_path):
    inits = [init("w1", randn(rng, 8, 3, 3, 3)), init("w2", randn(rng, 8, 8, 3, 3)), init("w3", randn(rng, 4, 8, 1, 1)),
             init("wf", randn(rng, 4 * 6 * 6, 5)), init("bf", randn(rng, 5)), init("shape", np.array([1, -1], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a2"]),
             helper.make_node("LeakyRelu", ["a2"], ["r2"], alpha=0.2),
             helper.make_node("Conv", ["r2", "w3"], ["c3"]),
             helper.make_node("HardSigmoid", ["c3"], ["r3"]),
             helper.make_node("Reshape", ["r3", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["g"]),
             helper.make_node("Elu", ["g"], ["y"], alpha=0.5)]
    m = model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 5])], inits)
    found = check_round_trip(m, {"x": randn(rng, 1, 3, 6, 6)}, tmp_path / "net.onnx", "conv-net")
    assert found[("com.microsoft", "FusedConv")] == 3 and found[("com.microsoft", "FusedGemm")] == 1


@pytest.mark.parametrize("opset", [13, 17])
def test_gelu_and_layer_norm_fusions_run_in_onnxruntime(rng, tmp_path, opset):
    """Decomposed LayerNorm (the ONNX-domain LayerNormalization at opset 13 too), Erf Gelu,
    Tanh Gelu."""
    from opt_helpers import layer_norm_nodes
    c = {"two": 2, "eps": 1e-5, "sqrt2": np.sqrt(2), "one": 1, "half": 0.5, "three": 3, "k044": 0.044715, "k": np.sqrt(2 / np.pi)}
    inits = [init(n, np.float32(v)) for n, v in c.items()]
    nodes = layer_norm_nodes("x", "ln", 6, inits, rng)
    nodes += [helper.make_node("Div", ["ln", "sqrt2"], ["e_div"]), helper.make_node("Erf", ["e_div"], ["e_erf"]),
              helper.make_node("Add", ["e_erf", "one"], ["e_add"]), helper.make_node("Mul", ["ln", "e_add"], ["e_mul"]),
              helper.make_node("Mul", ["e_mul", "half"], ["g1"]),
              helper.make_node("Pow", ["g1", "three"], ["t_pow"]), helper.make_node("Mul", ["t_pow", "k044"], ["t_w"]),
              helper.make_node("Add", ["g1", "t_w"], ["t_v"]), helper.make_node("Mul", ["t_v", "k"], ["t_u"]),
              helper.make_node("Tanh", ["t_u"], ["t_t"]), helper.make_node("Add", ["t_t", "one"], ["t_a"]),
              helper.make_node("Mul", ["t_a", "g1"], ["t_m"]), helper.make_node("Mul", ["t_m", "half"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3, 6])], [("y", F32, [2, 3, 6])], inits, opset=opset)
    found = check_round_trip(m, {"x": randn(rng, 2, 3, 6)}, tmp_path / "g.onnx", f"gelu-ln-{opset}")
    assert found[("ai.onnx", "LayerNormalization")] == 1
    assert found[("com.microsoft", "Gelu")] == 1 and found[("com.microsoft", "FastGelu")] == 1


def test_bert_optimized_by_us_runs_in_onnxruntime(tmp_path):
    cfg = dict(layers=2, hidden=64, heads=4, ffn=128, vocab=200, max_pos=64, seq=16)
    feeds = T.bert_feeds(seq=cfg["seq"], batch=2)
    feeds["input_ids"] %= cfg["vocab"]
    found = check_round_trip(T.bert_base(**cfg), feeds, tmp_path / "bert.onnx", "bert/ours",
                             disabled=["FuseMatMulBiasActivation"])
    assert found[("com.microsoft", "Attention")] == cfg["layers"]
    assert found[("com.microsoft", "SkipLayerNormalization")] == 2 * cfg["layers"]
    assert found[("com.microsoft", "BiasGelu")] == cfg["layers"]


def test_bert_default_optimization_keeps_our_fused_matmul(tmp_path):
    """Without disabling it, MatMul + bias + Gelu is our FusedMatMul (one GEMM with its epilogue),
    which onnxruntime cannot run; the rest is still onnxruntime's ops."""
    cfg = dict(layers=1, hidden=32, heads=2, ffn=64, vocab=50, max_pos=16, seq=8)
    saved, _ = optimized_by_us(T.bert_base(**cfg), tmp_path / "bert.onnx")
    found = domains(saved)
    assert found[("com.ep_core", "FusedMatMul")] > 0 and found[("com.microsoft", "Attention")] == 1
