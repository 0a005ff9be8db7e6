"""Quantized models through sessions with the CUDA provider (the emulated one without a GPU)
against the CPU provider: models made by ep_core.quantization (dynamic, static QOperator and
QDQ, 4-bit MatMulNBits) keep their integer ops on the device, and give the CPU's outputs; and
onnx's node cases of the quantization ops pass through [cuda, cpu] sessions exactly when they pass
on the CPU."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import ep_core
from ep_core.quantization import QuantFormat, quantize_dynamic, quantize_matmul_4bits, quantize_static
from ep_cuda import emulator
from ep_cuda.testing import session_provider
from quantization_models import (ListReader, attention_block, cnn_classifier, digit_batches, digits,
                                 gpt2_shaped_decoder, mlp_classifier)

QUANT_OPS = {"MatMulInteger", "QLinearMatMul", "QLinearConv", "ConvInteger", "QGemm", "QuantizeLinear",
             "DequantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
             "MatMulNBits"}


def _run(path, feeds, providers):
    sess = ep_core.InferenceSession(str(path), providers=providers)
    return sess, sess.run(None, feeds)[0]


def _compare(path, feeds, backend, rtol=1e-5, atol=1e-5) -> set[str]:
    """Run on [cuda, cpu] and [cpu]; outputs close; returns the quantization ops placed on CUDA."""
    prov = session_provider(backend)
    sess, got = _run(path, feeds, [prov, "cpu"])
    _, want = _run(path, feeds, ["cpu"])
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return {op for _, op, p in sess.get_placement()["nodes"] if p != "cpu" and op in QUANT_OPS}


def _feeds(n=64):
    return {"X": digits()[1][:n]}


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_model(backend, tmp_path, model, per_channel):
    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(mlp_classifier() if model == "mlp" else cnn_classifier(), str(src))
    quantize_dynamic(src, out, per_channel=per_channel)
    on_cuda = _compare(out, _feeds(), backend)
    assert "DynamicQuantizeMatMul" in on_cuda
    if model == "cnn":
        assert {"DynamicQuantizeLinear", "ConvInteger"} <= on_cuda


def test_dynamic_int8_attention_matmul_integer(backend, tmp_path):
    """MatMuls of two activations: DynamicQuantizeLinear + MatMulInteger on the device."""
    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(attention_block(), str(src))
    quantize_dynamic(src, out)
    x = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
    on_cuda = _compare(out, {"X": x}, backend)
    assert on_cuda & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


@pytest.mark.parametrize("fmt", [QuantFormat.QOperator, QuantFormat.QDQ])
def test_static_int8_cnn(backend, tmp_path, fmt):
    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(cnn_classifier(), str(src))
    quantize_static(src, out, ListReader(digit_batches(2)), quant_format=fmt, per_channel=True)
    # QDQ: float convolutions between DequantizeLinear / QuantizeLinear run on the device too
    # (float32 sums in another order: one quantization step may differ, so compare the logits loosely)
    on_cuda = _compare(out, _feeds(), backend, rtol=0, atol=0.05 if fmt is QuantFormat.QDQ else 1e-5)
    if fmt is QuantFormat.QOperator:
        assert {"QLinearConv", "QGemm", "QuantizeLinear"} <= on_cuda
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= on_cuda


@pytest.mark.parametrize("how", ["dynamic", "qoperator"])
def test_quantized_model_in_cuda_graphs(backend, tmp_path, how):
    """The integer kernels read nothing back on the host: the quantized graph is captured and
    replayed (enable_cuda_graph), with the CPU's outputs."""
    from ep_cuda import compiled
    src, out = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(mlp_classifier() if how == "dynamic" else cnn_classifier(), str(src))
    if how == "dynamic":
        quantize_dynamic(src, out)
    else:
        quantize_static(src, out, ListReader(digit_batches(2)), quant_format=QuantFormat.QOperator)
    prov = session_provider(backend)
    want = _run(out, _feeds(16), ["cpu"])[1]
    before = dict(compiled.GRAPH_STATS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the QOperator CNN is captured as two regions (a warning says so)
        sess = ep_core.InferenceSession(str(out), providers=[(prov, {"enable_cuda_graph": 1}), "cpu"])
    for _ in range(3):
        np.testing.assert_allclose(sess.run(None, _feeds(16))[0], want, rtol=1e-5, atol=1e-5)
    assert compiled.GRAPH_STATS["captured"] > before.get("captured", 0)
    assert compiled.GRAPH_STATS["replayed"] > before.get("replayed", 0)
    assert compiled.GRAPH_STATS["failed"] == before.get("failed", 0)


def test_4bit_decoder(backend, tmp_path):
    out = tmp_path / "q4.onnx"
    onnx.save(quantize_matmul_4bits(gpt2_shaped_decoder(d=64, layers=1, vocab=96), block_size=32), str(out))
    m = onnx.load(str(out))
    feeds = {i.name: np.array([[1, 5, 7]], np.int64) for i in m.graph.input}
    on_cuda = _compare(out, feeds, backend, rtol=1e-4, atol=1e-4)
    assert "MatMulNBits" in on_cuda


# ---------------------------------------------------------------- onnx node cases
def _quant_cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    picked = [c for c in cases if {n.op_type for n in c.model.graph.node} & QUANT_OPS]
    return [pytest.param(c, id=c.name) for c in sorted(picked, key=lambda c: c.name)]


@pytest.mark.skipif(not emulator.available()[0], reason="no C++ compiler for the emulator")
@pytest.mark.parametrize("case", _quant_cases())
def test_node_case_same_as_cpu(case):
    from ep_cuda.conformance import compare_sessions
    cpu, cuda = compare_sessions(case, "emu")
    assert (cpu is None) == (cuda is None), f"CPU-only: {cpu or 'pass'}; emulated cuda+cpu: {cuda or 'pass'}"
