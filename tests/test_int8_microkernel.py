"""The int8 VNNI GEMM microkernel (`ep_cpu.microkernel_int8`) against numpy's int64 products,
and the integer ops that use it (MatMulInteger, QLinearMatMul, MatMulIntegerToFloat,
DynamicQuantizeMatMul with a constant B) against numpy / onnxruntime, taking that path."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_cpu import microkernel_int8 as mi
from ep_cpu.gemm import _get_pool
from ep_cpu.kernels.quantize import dynamic_quantize_uint8

needs_vnni = pytest.mark.skipif(not mi.available(), reason="CPU without AVX-512 VNNI: float32 path only")


def _ints(rng, dtype, *shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _reference(a, za, b, zb):
    return (a.astype(np.int64) - np.int64(za)) @ (b.astype(np.int64) - np.asarray(zb, np.int64))


SHAPES = [(1, 1, 1), (5, 7, 3), (13, 33, 45), (4, 4, 32), (12, 64, 64), (17, 5, 70), (40, 259, 97),
          (130, 130, 33)]


@needs_vnni
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("a_type", [np.uint8, np.int8])
@pytest.mark.parametrize("b_type", [np.int8, np.uint8])
@pytest.mark.parametrize("zero_points", ["none", "scalar", "per_column"])
def test_exact_int32(rng, m, k, n, a_type, b_type, zero_points):
    a, b = _ints(rng, a_type, m, k), _ints(rng, b_type, k, n)
    za = 0 if zero_points == "none" else int(_ints(rng, a_type))
    zb = {"none": None, "scalar": _ints(rng, b_type), "per_column": _ints(rng, b_type, n)}[zero_points]
    w = mi.pack_weight(b, zb)
    ap, rows = mi.pack_rows_u8(a, mi.choose_mr(m))
    y = np.full((m, n), -7, np.int32)
    mi.matmul(ap, rows, m, w, za + (128 if a_type == np.int8 else 0), None, None, y, 2, _get_pool)
    np.testing.assert_array_equal(y, _reference(a, za, b, 0 if zb is None else zb))


@needs_vnni
def test_symmetric_weights_skip_the_row_sums():
    """int8 B with zero point 0: B - zb fits int8, so no row-sum correction is needed (d = 0);
    uint8 B with zero point 200: it does not (d = 128 - 200 per column)."""
    b = np.arange(-64, 64, dtype=np.int8).reshape(8, 16)
    assert not mi.pack_weight(b, None).uses_rows
    assert mi.pack_weight(b.astype(np.uint8) + 100, np.uint8(200)).uses_rows


@needs_vnni
@pytest.mark.parametrize("threads", [1, 2])
def test_scaled_float_epilogue(rng, threads):
    """SCALED_FLOAT: float32(acc) * mult[j] + bias[j], the unfused Cast -> Mul -> Add in float32."""
    m, k, n = 70, 301, 130
    a, b = _ints(rng, np.uint8, m, k), _ints(rng, np.int8, k, n)
    mult = (rng.random(n) * 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    w = mi.pack_weight(b, None)
    ap, rows = mi.pack_rows_u8(a, mi.choose_mr(m))
    y = np.empty((m, n), np.float32)
    mi.matmul(ap, rows, m, w, 9, mult, bias, y.view(np.int32), threads, _get_pool)
    expect = _reference(a, 9, b, 0).astype(np.float32) * mult + bias
    np.testing.assert_array_equal(y, expect)


@needs_vnni
@pytest.mark.parametrize("m,k", [(1, 1), (3, 5), (13, 130), (64, 768)])
def test_quantize_pack_is_dynamic_quantize_linear(rng, m, k):
    x = rng.standard_normal((m, k)).astype(np.float32) * 3
    x.reshape(-1)[: min(x.size, 4)] = [0.5, -0.5, 1.5, 2.5][: min(x.size, 4)]
    q, scale, zp = dynamic_quantize_uint8(x)
    mr = mi.choose_mr(m)
    ap, rows, s2, z2 = mi.quantize_pack(x, mr)
    assert (s2, z2) == (scale, int(zp))
    ref_ap, ref_rows = mi.pack_rows_u8(q, mr)
    np.testing.assert_array_equal(ap, ref_ap)
    np.testing.assert_array_equal(rows[:m], q.astype(np.int64).sum(axis=1))


@needs_vnni
def test_quantize_pack_halfway_values_round_to_even():
    """x / scale exactly on .5: round half to even, as DynamicQuantizeLinear."""
    x = (np.arange(-255, 256, dtype=np.float32) / 2).reshape(1, -1)
    q, scale, zp = dynamic_quantize_uint8(x)
    ap, _, s2, z2 = mi.quantize_pack(x, 4)
    np.testing.assert_array_equal(ap, mi.pack_rows_u8(q, 4)[0])


# --------------------------------------------------------------------------- through sessions
def _model(op, inputs, consts, out_type, domain=""):
    names, graph_inputs, inits, feeds = [], [], [], {}
    for name, value in inputs:
        if value is None:
            names.append("")
            continue
        names.append(name)
        arr = np.asarray(value)
        if name in consts:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
            feeds[name] = arr
    node = helper.make_node(op, names, ["y"], domain=domain)
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("y", out_type, None)],
                              initializer=inits)
    imports = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports), feeds


@pytest.fixture
def int8_calls(monkeypatch):
    """Counts the microkernel's calls (proves the ops take the int8 path)."""
    calls = []
    real = mi.matmul

    def counting(*args, **kw):
        calls.append(args[2])
        return real(*args, **kw)

    monkeypatch.setattr(mi, "matmul", counting)
    return calls


def _ours(model, feeds):
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 2
    return ep_core.InferenceSession(model.SerializeToString(), opts, providers=["cpu"]).run(None, feeds)[0]


@needs_vnni
@pytest.mark.parametrize("a_shape", [(7, 37), (2, 5, 37), (37,)])
@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
def test_matmul_integer_constant_b_is_exact(rng, int8_calls, a_shape, a_type, b_type):
    n = 45
    a, b = _ints(rng, a_type, *a_shape), _ints(rng, b_type, 37, n)
    za, zb = _ints(rng, a_type), _ints(rng, b_type, n)
    model, feeds = _model("MatMulInteger", [("a", a), ("b", b), ("za", za), ("zb", zb)], ("b", "zb"),
                          TensorProto.INT32)
    y = _ours(model, feeds)
    assert int8_calls, "MatMulInteger with a constant B should run in the int8 microkernel"
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, _reference(a, za, b, zb))


@needs_vnni
def test_qlinear_matmul_constant_b_matches_onnxruntime(rng, int8_calls):
    ort = pytest.importorskip("onnxruntime")
    a, b = _ints(rng, np.uint8, 3, 9, 50), _ints(rng, np.int8, 50, 21)
    ins = [("a", a), ("sa", np.float32(0.02)), ("za", np.uint8(130)), ("b", b),
           ("sb", np.float32(0.01)), ("zb", np.int8(0)), ("sy", np.float32(0.3)), ("zy", np.uint8(120))]
    model, feeds = _model("QLinearMatMul", ins, ("b", "sb", "zb", "sy", "zy", "sa", "za"), TensorProto.UINT8)
    y = _ours(model, feeds)
    assert int8_calls
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(y.astype(np.int32) - theirs.astype(np.int32)).max() <= 1
    assert (y == theirs).mean() > 0.99


@needs_vnni
@pytest.mark.parametrize("op", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"])
def test_float_ops_same_as_the_float32_path(rng, int8_calls, monkeypatch, op):
    """The microkernel path and the float32 K-block path give the same float32 outputs."""
    k, n = 200, 70
    b, sb = _ints(rng, np.int8, k, n), (rng.random(n) * 0.01).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    if op == "DynamicQuantizeMatMul":
        ins = [("a", rng.standard_normal((2, 9, k)).astype(np.float32)), ("b", b), ("sb", sb),
               ("zb", np.zeros(n, np.int8)), ("bias", bias)]
    else:
        ins = [("a", _ints(rng, np.uint8, 2, 9, k)), ("b", b), ("sa", np.float32(0.05)), ("sb", sb),
               ("za", np.uint8(100)), ("zb", np.zeros(n, np.int8)), ("bias", bias)]
    model, feeds = _model(op, ins, ("b", "sb", "zb", "bias", "sa", "za"), TensorProto.FLOAT, "com.microsoft")
    fast = _ours(model, feeds)
    assert int8_calls
    monkeypatch.setitem(mi._state, "available", False)
    monkeypatch.setitem(mi._state, "checked", True)
    calls = len(int8_calls)
    slow = _ours(model, feeds)
    assert len(int8_calls) == calls, "with VNNI reported missing, the float32 path runs"
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- both operands per call
@needs_vnni
@pytest.mark.parametrize("batch,m,k,n", [((1,), 5, 7, 3), ((2, 3), 13, 64, 40), ((12,), 33, 5, 70)])
@pytest.mark.parametrize("a_type,b_type", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.int8)])
def test_batched_exact_int32(rng, batch, m, k, n, a_type, b_type):
    from ep_cpu.kernels.quantize import int8_batched_matmul
    a, b = _ints(rng, a_type, *batch, m, k), _ints(rng, b_type, *batch, k, n)
    za, zb = _ints(rng, a_type), _ints(rng, b_type)
    y = int8_batched_matmul(a, b, za, zb)
    assert y is not None and y.dtype == np.int32 and y.shape == batch + (m, n)
    np.testing.assert_array_equal(y, _reference(a, za, b, zb))
    f = int8_batched_matmul(a, b, za, zb, mult=0.01)
    np.testing.assert_array_equal(f, _reference(a, za, b, zb).astype(np.float32) * np.float32(0.01))


@needs_vnni
def test_attention_products_run_batched(rng, int8_calls, monkeypatch):
    """MatMulInteger / MatMulIntegerToFloat of two activations (no constant B) take the batched
    path (not `matmul`), with the same results as the float32 path."""
    batched = []
    real = mi.matmul_batched
    monkeypatch.setattr(mi, "matmul_batched", lambda *a, **kw: batched.append(1) or real(*a, **kw))
    a, b = _ints(rng, np.uint8, 1, 4, 16, 8), _ints(rng, np.uint8, 1, 4, 8, 16)
    ins = [("a", a), ("b", b), ("sa", np.float32(0.02)), ("sb", np.float32(0.03)),
           ("za", np.uint8(120)), ("zb", np.uint8(3))]
    model, feeds = _model("MatMulIntegerToFloat", ins, ("sa", "sb", "za", "zb"), TensorProto.FLOAT,
                          "com.microsoft")
    fast = _ours(model, feeds)
    model_i, feeds_i = _model("MatMulInteger", [ins[0], ins[1], ins[4], ins[5]], ("za", "zb"), TensorProto.INT32)
    exact = _ours(model_i, feeds_i)
    assert len(batched) == 2 and not int8_calls
    np.testing.assert_array_equal(exact, _reference(a, 120, b, 3))
    monkeypatch.setitem(mi._state, "available", False)
    monkeypatch.setitem(mi._state, "checked", True)
    np.testing.assert_allclose(fast, _ours(model, feeds), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(mi.numba is None, reason="numba missing")
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 12, 17, 9)])
def test_dynamic_quantize_linear_compiled_pass(rng, shape):
    """DynamicQuantizeLinear's compiled pass gives numpy's rint(x / scale) + zp, clipped."""
    from ep_cpu.kernels.quantize import dynamic_quantize_uint8
    x = rng.standard_normal(shape).astype(np.float32) * 4
    q, scale, zp = dynamic_quantize_uint8(x)
    expect = np.clip(np.rint(x / scale) + np.float32(zp), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(q, expect)
    halfway = (np.arange(-255, 256, dtype=np.float32) / 2)
    q, scale, zp = dynamic_quantize_uint8(halfway)
    np.testing.assert_array_equal(q, np.clip(np.rint(halfway / scale) + np.float32(zp), 0, 255).astype(np.uint8))


@needs_vnni
@pytest.mark.parametrize("m,k", [(300, 1000), (1024, 257)])
def test_quantize_pack_over_threads_is_the_same(rng, m, k):
    """Large A: its quantization split over the threads gives the one-thread panels."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    mr = mi.choose_mr(m)
    one = mi.quantize_pack(x, mr, 1)
    two = mi.quantize_pack(x, mr, 2)
    assert x.size >= mi.PAR_QUANTIZE_MIN
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
