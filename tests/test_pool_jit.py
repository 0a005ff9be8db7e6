"""The compiled 2-D MaxPools (`ep_cpu.depthwise_flat`'s flat planes, `ep_cpu.pool_jit`'s phase
planes, `ep_cpu.depthwise_direct`'s masked vectors) against onnxruntime and against the numpy path
(NaN handling): strides, dilations, asymmetric pads, ceil_mode, batches, thread splits."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core
from ep_cpu import depthwise_direct, depthwise_flat, native_call, pool_jit
from ep_cpu.kernels import pool

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

# (input, kernel, strides, pads, dilations, ceil_mode)
CASES = [
    ((1, 128, 10, 10), [5, 5], [1, 1], [2, 2, 2, 2], [1, 1], 0),    # YOLO SPPF
    ((1, 64, 56, 56), [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], 0),     # ResNet stem pool
    ((2, 3, 11, 9), [3, 2], [2, 1], [0, 1, 1, 0], [1, 2], 0),
    ((1, 4, 7, 7), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 1),        # ceil_mode: a partial window
    ((1, 5, 8, 9), [3, 3], [1, 2], [1, 1, 1, 1], [2, 1], 1),
    ((1, 32, 40, 40), [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 0),
]


def _model(shape, ks, strides, pads, dil, ceil):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=ks, strides=strides, pads=pads,
                            dilations=dil, ceil_mode=ceil)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture
def compiled_calls(monkeypatch):
    if pool_jit.numba is None:
        pytest.skip("numba missing")
    calls = []
    for module in (pool_jit, depthwise_direct, depthwise_flat):
        real = module.max_pool_2d
        monkeypatch.setattr(module, "max_pool_2d",
                            lambda *a, real=real, name=module.__name__, **k: calls.append(name) or real(*a, **k))
    return calls


def _route(case) -> str:
    shape, ks, strides, pads, dil, ceil = case
    out = [(shape[2 + i] + pads[i] + pads[2 + i] - dil[i] * (ks[i] - 1) - 1 + (strides[i] - 1) * ceil)
           // strides[i] + 1 for i in range(2)]
    if depthwise_flat.applies(shape, ks, strides, dil, pads[:2], out):
        return "flat"
    return "direct" if pool._direct_pool(ks, strides, out) else "planes"


def test_every_compiled_kernel_is_covered():
    """CASES run all three: outputs as wide as the input (or its phase planes) the flat planes,
    other 3-wide kernels the masked vectors, the rest the phase planes."""
    assert {_route(c) for c in CASES} == {"flat", "direct", "planes"} or not depthwise_direct.available()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + f"_k{c[1][0]}{c[1][1]}_c{c[5]}")
def test_matches_onnxruntime(monkeypatch, compiled_calls, case, threads):
    monkeypatch.setattr(pool_jit, "PAR_MIN_ELEMENTS", 1)   # the split runs with 2 threads
    monkeypatch.setattr(native_call, "HANDOFF_MACS_TBB", 1)
    monkeypatch.setattr(native_call, "HANDOFF_MACS_POOL", 1)
    data = _model(*case)
    x = np.random.default_rng(len(case[0])).standard_normal(case[0]).astype(np.float32)
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = threads
    ours = ep_core.InferenceSession(data, opts, providers=["cpu"]).run(None, {"x": x})[0]
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert compiled_calls
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "x".join(map(str, c[0])))
def test_nan_propagates_as_the_numpy_path(monkeypatch, compiled_calls, case):
    data = _model(*case)
    x = np.random.default_rng(0).standard_normal(case[0]).astype(np.float32)
    x.flat[::37] = np.nan
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    compiled = sess.run(None, {"x": x})[0]
    monkeypatch.setattr(pool, "COMPILED", False)
    numpy_path = sess.run(None, {"x": x})[0]
    assert len(compiled_calls) == 1 and np.isnan(compiled).any()
    np.testing.assert_array_equal(compiled, numpy_path)
