"""QLinear* contrib ops vs onnxruntime (uint8 and int8). Quantized results may differ by one
step where float32 rounding lands on the other side of a .5 (different summation order or
fused multiply-adds in onnxruntime's kernels); the tests allow that (int_tol=1) and at most
2% of the values doing so."""
from __future__ import annotations

import numpy as np
import pytest

from test_contrib_common import node_model, run_ort, run_ours, typed_outputs, compare

TYPES = [np.uint8, np.int8]


def _q(rng, dtype, *shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _zp(dtype, v):
    return np.array(v if dtype == np.uint8 else v - 128, dtype)


def qcheck(op, inputs, attrs=None, consts=(), int_tol=1, max_off=0.02):
    model, feeds = node_model(op, inputs, 1, attrs, consts=consts)
    refs = run_ort(model, feeds)
    ours = run_ours(typed_outputs(model, refs), feeds)
    compare(op, ours, refs, int_tol=int_tol)
    off = np.count_nonzero(ours[0] != refs[0]) / max(refs[0].size, 1)
    assert off <= max_off, f"{op}: {off:.1%} of the values are one step off"


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("b_shape", [(2, 3, 8), (8,), (1, 3, 1)])
def test_qlinear_binary(rng, dtype, op, b_shape):
    ins = [("a", _q(rng, dtype, 2, 3, 8)), ("a_scale", np.float32(0.02)), ("a_zp", _zp(dtype, 130)),
           ("b", _q(rng, dtype, *b_shape)), ("b_scale", np.float32(0.05)), ("b_zp", _zp(dtype, 120)),
           ("c_scale", np.float32(0.07 if op == "QLinearAdd" else 0.4)), ("c_zp", _zp(dtype, 128))]
    qcheck(op, ins)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_binary_without_output_zero_point(rng, op):
    """(onnxruntime's type inference wants A's and B's zero points, optional as they are.)"""
    ins = [("a", _q(rng, np.uint8, 4, 5)), ("a_scale", np.float32(0.01)), ("a_zp", np.uint8(3)),
           ("b", _q(rng, np.uint8, 4, 5)), ("b_scale", np.float32(0.02)), ("b_zp", np.uint8(200)),
           ("c_scale", np.float32(0.03 if op == "QLinearAdd" else 1.0)), ("c_zp", None)]
    qcheck(op, ins)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {}),
                                      ("QLinearLeakyRelu", {"alpha": 0.3})])
def test_qlinear_unary(rng, dtype, op, attrs):
    x = np.arange(np.iinfo(dtype).min, int(np.iinfo(dtype).max) + 1).astype(dtype).reshape(16, 16)
    ins = [("x", x), ("x_scale", np.float32(0.05)), ("x_zp", _zp(dtype, 100)),
           ("y_scale", np.float32(0.004 if op == "QLinearSigmoid" else 0.03)), ("y_zp", _zp(dtype, 20))]
    qcheck(op, ins, attrs)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("opset,axis", [(13, None), (13, 1), (11, None), (11, 2)])
def test_qlinear_softmax(rng, dtype, opset, axis):
    attrs = {"opset": opset}
    if axis is not None:
        attrs["axis"] = axis
    ins = [("x", _q(rng, dtype, 2, 4, 6)), ("x_scale", np.float32(0.05)), ("x_zp", _zp(dtype, 128)),
           ("y_scale", np.float32(1 / 256)), ("y_zp", _zp(dtype, 0))]
    qcheck("QLinearSoftmax", ins, attrs)


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_qlinear_concat(rng, dtype, axis):
    ins = [("y_scale", np.float32(0.05)), ("y_zp", _zp(dtype, 128)),
           ("x0", _q(rng, dtype, 2, 3, 4)), ("s0", np.float32(0.05)), ("z0", _zp(dtype, 128)),   # same params
           ("x1", _q(rng, dtype, 2, 3, 4)), ("s1", np.float32(0.02)), ("z1", _zp(dtype, 100)),
           ("x2", _q(rng, dtype, 2, 3, 4)), ("s2", np.float32(0.11)), ("z2", _zp(dtype, 140))]
    qcheck("QLinearConcat", ins, {"axis": axis}, consts=("s0", "z0", "s1", "z1", "s2", "z2"))


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 9)])
def test_qlinear_global_average_pool(rng, dtype, channels_last, shape):
    # Scales whose ratio makes exact .5 ties rare: onnxruntime's channels-last path breaks such
    # ties away from zero, its channels-first path to even.
    ins = [("x", _q(rng, dtype, *shape)), ("x_scale", np.float32(0.05)), ("x_zp", _zp(dtype, 128)),
           ("y_scale", np.float32(0.0213)), ("y_zp", _zp(dtype, 120))]
    qcheck("QLinearGlobalAveragePool", ins, {"channels_last": channels_last})


@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3]},
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 2], "strides": [2, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "channels_last": 1},
])
def test_qlinear_average_pool(rng, dtype, attrs):
    ins = [("x", _q(rng, dtype, 2, 3, 7, 8)), ("x_scale", np.float32(0.05)), ("x_zp", _zp(dtype, 128)),
           ("y_scale", np.float32(0.03)), ("y_zp", _zp(dtype, 110))]
    qcheck("QLinearAveragePool", ins, attrs)
