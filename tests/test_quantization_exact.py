"""The integer GEMM path of the CPU provider (ep_cpu/kernels/quantize.py, contrib_quantized.py):
int8 x int8 products through the float32 GEMM in K-blocks that keep every partial sum exact,
checked on worst-case values where one float32 GEMM over all of K would round."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_cpu.kernels.quantize import EXACT_F32, _conv_channel_blocks, exact_int_matmul, exact_k_blocks


def _session(nodes, inputs, outputs, inits, ms=False):
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return ep_core.InferenceSession(helper.make_model(g, opset_imports=imports).SerializeToString(), providers=["cpu"])


def test_k_blocks_bound_every_partial_sum():
    rng = np.random.default_rng(0)
    b = np.clip(np.rint(rng.standard_normal((3072, 64)) * 30), -127, 127).astype(np.float32)
    blocks = exact_k_blocks(b, 255.0)
    assert blocks[0][0] == 0 and blocks[-1][1] == 3072 and all(x[1] == y[0] for x, y in zip(blocks, blocks[1:]))
    assert len(blocks) <= 3     # column sums, not the product of maxima (that would need 6 blocks)
    for k0, k1 in blocks:
        assert 255.0 * np.abs(b[k0:k1]).sum(axis=0).max() < EXACT_F32


def test_worst_case_products_are_exact():
    a = np.full((3, 3000), 255, np.float32)
    a[1, ::2] = -255
    b = np.full((3000, 5), 127, np.float32)
    b[7, 2] = 126
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert np.abs(want).max() > EXACT_F32          # a single float32 GEMM would round here
    np.testing.assert_array_equal(exact_int_matmul(a, b), want)
    np.testing.assert_array_equal(exact_int_matmul(a, b, blocks=exact_k_blocks(b, 255.0)), want)


def test_dynamic_quantize_matmul_constant_weight_exact():
    """Constant B (the fast path) at the int8 extremes, K long: equal to the float64 reference."""
    rng = np.random.default_rng(1)
    k, n = 2048, 16
    b = rng.choice(np.array([-128, 127], np.int8), size=(k, n))
    b_scale = np.float32(0.01)
    a = rng.choice(np.array([-1.0, 1.0], np.float32), size=(4, k))
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "bs", "bz"], ["Y"], domain="com.microsoft")
    sess = _session([node], [helper.make_tensor_value_info("A", TensorProto.FLOAT, [4, k])],
                    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, n])],
                    {"B": b, "bs": b_scale, "bz": np.int8(0)}, ms=True)
    y = sess.run(None, {"A": a})[0]
    scale = np.float32(2.0 / 255.0)
    zp = int(np.rint(np.float32(1.0) / scale))
    q = np.clip(np.rint(a / scale) + zp, 0, 255) - zp
    acc = q.astype(np.int64) @ b.astype(np.int64)
    want = (acc * np.float64(np.float32(scale) * b_scale)).astype(np.float32)
    assert len(np.unique(want)) > 8 and (want < 255).mean() > 0.9   # spread, hardly saturated
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("k", [64, 1500])
def test_matmul_integer_exact(k):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (5, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (k, 7)).astype(np.int8)
    a[:, :] = np.where(rng.random((5, k)) < 0.5, 0, 255)
    node = helper.make_node("MatMulInteger", ["A", "B", "az"], ["Y"])
    sess = _session([node], [helper.make_tensor_value_info("A", TensorProto.UINT8, [5, k]),
                             helper.make_tensor_value_info("B", TensorProto.INT8, [k, 7])],
                    [helper.make_tensor_value_info("Y", TensorProto.INT32, [5, 7])], {"az": np.uint8(0)})
    y = sess.run(None, {"A": a, "B": b})[0]
    np.testing.assert_array_equal(y, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("shape", [(3, 5, 100), (7, 1000)])
def test_dynamic_quantize_matmul_constant_path_equals_general_path(shape):
    """B as a session constant (fast path) and B fed at run time (general path): identical."""
    rng = np.random.default_rng(3)
    k, n = shape[-1], 12
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    scale = (rng.random(n) * 0.01 + 0.001).astype(np.float32)
    zp = rng.integers(-3, 4, n).astype(np.int8)
    bias = rng.standard_normal(n).astype(np.float32)
    a = (rng.standard_normal(shape) * 3 + 0.5).astype(np.float32)
    node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "bs", "bz", "bias"], ["Y"], domain="com.microsoft")
    a_in = helper.make_tensor_value_info("A", TensorProto.FLOAT, list(shape))
    y_out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(shape[:-1]) + [n])
    consts = {"B": b, "bs": scale, "bz": zp, "bias": bias}
    fast = _session([node], [a_in], [y_out], consts, ms=True).run(None, {"A": a})[0]
    general = _session([node], [a_in, helper.make_tensor_value_info("B", TensorProto.INT8, [k, n])], [y_out],
                       {key: v for key, v in consts.items() if key != "B"}, ms=True).run(None, {"A": a, "B": b})[0]
    np.testing.assert_array_equal(fast, general)


def _conv_int64(x, w, pad, group=1):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    y = np.zeros((n, m, oh, ow), np.int64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for i in range(oh):
            for j in range(ow):
                y[:, o, i, j] = (xp[:, g * cg:(g + 1) * cg, i:i + kh, j:j + kw] * w[o]).sum(axis=(1, 2, 3))
    return y


@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("constant_w", [True, False])
def test_qlinear_conv_float32_blocks_exact(group, constant_w):
    """Worst-case uint8 x int8 values and 600 input channels: the float32 conv needs several
    channel blocks (group 1) or falls back to float64 (group 2); both equal the int64 reference."""
    rng = np.random.default_rng(4)
    c, m = 600, 4
    x = np.where(rng.random((1, c, 4, 4)) < 0.9, 255, 0).astype(np.uint8)
    w = np.where(rng.random((m, c // group, 3, 3)) < 0.9, 127, -127).astype(np.int8)
    bias = rng.integers(-1000, 1000, m).astype(np.int32)
    xs, ws, ys = np.float32(0.02), np.full(m, 0.001, np.float32), np.float32(40.0)
    xz, wz, yz = np.uint8(0), np.zeros(m, np.int8), np.uint8(128)
    acc = _conv_int64(x.astype(np.int64), w.astype(np.int64), 1, group) + bias.reshape(1, -1, 1, 1)
    assert np.abs(acc).max() > EXACT_F32
    blocks = _conv_channel_blocks(w.astype(np.float32), group)
    assert (blocks is None) if group == 2 else len(blocks) > 1
    mult = (np.float64(xs) * ws.astype(np.float64) / np.float64(ys)).astype(np.float32).astype(np.float64)
    want = np.clip(np.rint(acc * mult.reshape(1, -1, 1, 1)) + 128, 0, 255).astype(np.uint8)
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            pads=[1, 1, 1, 1], group=group)
    consts = {"xs": xs, "xz": xz, "ws": ws, "wz": wz, "ys": ys, "yz": yz, "b": bias}
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))]
    feeds = {"x": x}
    if constant_w:
        consts["w"] = w
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.INT8, list(w.shape)))
        feeds["w"] = w
    y = _session([node], inputs, [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], consts).run(None, feeds)[0]
    assert len(np.unique(want)) > 8 and (want < 255).mean() > 0.9   # spread, hardly saturated
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype,elem", [(np.uint8, TensorProto.UINT8), (np.int8, TensorProto.INT8)])
def test_quantize_linear_of_a_scalar_matches_onnxruntime(dtype, elem):
    """A 0-d input (np.rint gives a scalar there, which cannot take `out=`)."""
    ort = pytest.importorskip("onnxruntime")
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", elem, [])],
                              initializer=[helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                                           helper.make_tensor("z", elem, [], [3])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    for value in (2.26, -100.0, 1e9):
        feeds = {"x": np.array(value, np.float32)}
        ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)[0]
        want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert ours.shape == () and ours.dtype == dtype
        np.testing.assert_array_equal(ours, want)
