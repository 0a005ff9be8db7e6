"""NaN and +-Inf through every activation and min/max-like op of the CPU provider.

onnxruntime is the oracle for element-wise ops. Where onnxruntime's result depends on the order of
the values (its max-reductions, pools and arg-reductions skip a NaN unless it comes first) the
rule is the one the ONNX reference implementation, numpy and PyTorch share: a NaN in a max/min
window makes the result NaN, and ArgMax/ArgMin/Hardmax pick the first NaN (the last with
`select_last_index`).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from opt_helpers import ops, options

import ep_core
from ep_cpu import gemm as G
from ep_cpu.gemm_epilogue import ACTIVATIONS, CHUNK

NAN, INF = np.nan, np.inf
X = np.array([NAN, 1.0, INF, -1.5, -INF, -0.5, 0.0, 0.5, 1.5, 3.0, -NAN], np.float32)
X2 = np.array([[1, NAN, 3, -INF, 2], [INF, 0, NAN, 5, -1], [1, 2, 3, 4, 5], [-INF] * 5,
               [NAN, -INF, INF, 0, 1]], np.float32)
X4 = np.array([[[[1, NAN, 3, -INF, 0], [INF, 0, -2, 5, 1], [1, 2, 3, 4, -1], [-INF] * 5,
                 [2, 2, NAN, 1, INF]]]], np.float32)
_ELEM = {"float": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16}


def _model(op, x, attrs=None, extra=(), opset=21, n_out=1, domain=""):
    names, inits = ["x"], []
    for i, e in enumerate(extra):
        if e is None:
            names.append("")
            continue
        inits.append(numpy_helper.from_array(np.asarray(e), f"c{i}"))
        names.append(f"c{i}")
    outs = [f"y{i}" for i in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outs, domain=domain, **(attrs or {}))], "nan_inf",
        [helper.make_tensor_value_info("x", _ELEM[str(x.dtype)] if str(x.dtype) in _ELEM else
                                       TensorProto.FLOAT, list(x.shape))],
        [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def _ours(m, x, level=None):
    so = options() if level is None else options(level)
    return ep_core.InferenceSession(m.SerializeToString(), so, providers=["cpu"]).run(None, {"x": x})


def _ort(m, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _same(got, want, rtol=1e-5, atol=1e-6):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if g.dtype.kind in "fc":
            assert np.array_equal(np.isnan(g), np.isnan(w)), f"NaN positions differ:\n{g}\n{w}"
            assert np.array_equal(np.isinf(g) & (g > 0), np.isinf(w) & (w > 0)), f"+inf differ:\n{g}\n{w}"
            assert np.array_equal(np.isinf(g) & (g < 0), np.isinf(w) & (w < 0)), f"-inf differ:\n{g}\n{w}"
        np.testing.assert_allclose(g.astype(np.float64) if g.dtype.kind == "f" else g,
                                   w.astype(np.float64) if w.dtype.kind == "f" else w,
                                   rtol=rtol, atol=atol, equal_nan=True)


F = np.float32
# (op, attrs, constant extra inputs, input)
VS_ORT = [
    ("Relu", {}, (), X), ("Relu", {}, (), X2),
    ("LeakyRelu", {"alpha": 0.1}, (), X), ("PRelu", {}, (F(0.2),), X), ("PRelu", {}, (F(NAN),), X),
    ("Elu", {}, (), X), ("Elu", {"alpha": 0.5}, (), X), ("Selu", {}, (), X), ("Celu", {}, (), X),
    ("ThresholdedRelu", {}, (), X), ("HardSigmoid", {}, (), X), ("HardSwish", {}, (), X),
    ("Softplus", {}, (), X), ("Softsign", {}, (), X), ("Gelu", {}, (), X),
    ("Gelu", {"approximate": "tanh"}, (), X), ("Mish", {}, (), X), ("Sigmoid", {}, (), X),
    ("Tanh", {}, (), X), ("Shrink", {}, (), X), ("Shrink", {"lambd": 1.0, "bias": 0.5}, (), X),
    ("Clip", {}, (F(-1), F(1)), X), ("Clip", {}, (F(0), F(6)), X2),
    ("Max", {}, (F(0),), X), ("Min", {}, (F(0),), X), ("Max", {}, (X2[::-1].copy(),), X2),
    ("Min", {}, (X2[::-1].copy(),), X2), ("Max", {}, (X2.T.copy(), F(1)), X2),
    ("Min", {}, (X2.T.copy(), F(1)), X2), ("Mean", {}, (X2.T.copy(),), X2), ("Sum", {}, (X2.T.copy(),), X2),
    ("Sign", {}, (), X), ("Abs", {}, (), X), ("Neg", {}, (), X), ("Ceil", {}, (), X), ("Floor", {}, (), X),
    ("Round", {}, (), X), ("Sqrt", {}, (), X), ("Exp", {}, (), X), ("Log", {}, (), X),
    ("Reciprocal", {}, (), X), ("Erf", {}, (), X), ("Sin", {}, (), X), ("Cos", {}, (), X),
    ("Tan", {}, (), X), ("Asin", {}, (), X), ("Acos", {}, (), X), ("Atan", {}, (), X), ("Sinh", {}, (), X),
    ("Cosh", {}, (), X), ("Asinh", {}, (), X), ("Acosh", {}, (), X), ("Atanh", {}, (), X),
    ("IsNaN", {}, (), X), ("IsInf", {}, (), X), ("IsInf", {"detect_negative": 0}, (), X),
    ("Mod", {"fmod": 1}, (F(2),), X), ("Pow", {}, (F(2),), X), ("Pow", {}, (F(0.5),), X),
    ("Softmax", {"axis": 1}, (), X2), ("LogSoftmax", {"axis": 1}, (), X2), ("Softmax", {"axis": 0}, (), X2),
    ("ReduceSum", {"keepdims": 0}, (np.array([1]),), X2), ("ReduceMean", {}, (np.array([0]),), X2),
    ("ReduceLogSumExp", {}, (np.array([1]),), X2), ("ReduceL1", {}, (np.array([1]),), X2),
    ("ReduceL2", {}, (np.array([1]),), X2), ("ReduceSumSquare", {}, (np.array([1]),), X2),
    ("ReduceProd", {}, (np.array([1]),), X2), ("CumSum", {}, (np.int64(1),), X2),
    ("AveragePool", {"kernel_shape": [2, 2]}, (), X4), ("LpPool", {"kernel_shape": [2, 2]}, (), X4),
    ("GlobalAveragePool", {}, (), X4),
]


@pytest.mark.parametrize("op,attrs,extra,x", VS_ORT, ids=[f"{c[0]}{i}" for i, c in enumerate(VS_ORT)])
def test_float32_against_onnxruntime(op, attrs, extra, x):
    m = _model(op, x, attrs, extra)
    _same(_ours(m, x), _ort(m, x))


def test_relu_keeps_nan_regression():
    # Relu(NaN) used to return 0 (a `where(x > 0, x, 0)`).
    m = _model("Relu", X)
    y = _ours(m, X)[0]
    assert np.isnan(y[0]) and np.isnan(y[-1]) and y[2] == INF and y[4] == 0


ACTS = ["Relu", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
        "Gelu", "Mish", "Sigmoid", "Tanh", "Abs", "Sign", "ThresholdedRelu", "Shrink"]


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("op", ACTS)
def test_other_float_types_follow_float32(op, dtype):
    """float64 / float16 give the float32 path's NaN / Inf pattern (onnxruntime has kernels for
    only a few of these types, so the float32 result, computed the same way, is the oracle)."""
    x = X.astype(dtype)
    m32, m = _model(op, X), _model(op, x)
    want = _ours(m32, X)[0].astype(dtype)
    got = _ours(m, x)[0]
    _same([got], [want], rtol=1e-3 if dtype == np.float16 else 1e-5, atol=1e-3)


# ---------------------------------------------------------------- the NaN rule where ORT is order-dependent
def _windows_max(x4, k, pads=(0, 0, 0, 0)):
    xp = np.pad(x4, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=-INF)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win.max(axis=(-1, -2))   # np.max propagates NaN


NAN_RULE = [
    ("ReduceMax", {"keepdims": 0}, (np.array([1]),), X2, lambda x: x.max(axis=1)),
    ("ReduceMin", {"keepdims": 0}, (np.array([1]),), X2, lambda x: x.min(axis=1)),
    ("ReduceMax", {"keepdims": 0}, (np.array([0]),), X2, lambda x: x.max(axis=0)),
    ("ReduceMax", {"keepdims": 1}, (), X2, lambda x: x.max(keepdims=True)),
    ("ReduceMin", {"keepdims": 0}, (np.array([0]),), X2, lambda x: x.min(axis=0)),
    ("ArgMax", {"axis": 1}, (), X2, lambda x: x.argmax(axis=1)[:, None]),
    ("ArgMin", {"axis": 1}, (), X2, lambda x: x.argmin(axis=1)[:, None]),
    ("ArgMax", {"axis": 0, "keepdims": 0}, (), X2, lambda x: x.argmax(axis=0)),
    ("ArgMax", {"axis": 1, "select_last_index": 1}, (), X2,
     lambda x: (x.shape[1] - 1 - x[:, ::-1].argmax(axis=1))[:, None]),
    ("ArgMin", {"axis": 1, "select_last_index": 1}, (), X2,
     lambda x: (x.shape[1] - 1 - x[:, ::-1].argmin(axis=1))[:, None]),
    ("Hardmax", {"axis": 1}, (), X2, lambda x: np.eye(5, dtype=np.float32)[x.argmax(axis=1)]),
    ("MaxPool", {"kernel_shape": [2, 2]}, (), X4, lambda x: _windows_max(x, 2)),
    ("MaxPool", {"kernel_shape": [3, 3]}, (), X4, lambda x: _windows_max(x, 3)),
    ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}, (), X4, lambda x: _windows_max(x, 2, (1, 1, 1, 1))),
    ("GlobalMaxPool", {}, (), X4, lambda x: x.max(axis=(2, 3), keepdims=True)),
    ("GlobalMaxPool", {}, (), X4[..., 2:, :], lambda x: x.max(axis=(2, 3), keepdims=True)),
]


@pytest.mark.parametrize("op,attrs,extra,x,rule", NAN_RULE, ids=[f"{c[0]}{i}" for i, c in enumerate(NAN_RULE)])
def test_nan_wins_in_max_like_ops(op, attrs, extra, x, rule):
    m = _model(op, x, attrs, extra)
    _same(_ours(m, x), [np.asarray(rule(x))])


def test_maxpool_indices_point_at_the_nan():
    m = _model("MaxPool", X4, {"kernel_shape": [2, 2]}, n_out=2)
    y, idx = _ours(m, X4)
    _same([y], [_windows_max(X4, 2)])
    flat = X4.reshape(-1)
    np.testing.assert_array_equal(np.isnan(flat[idx]), np.isnan(y))
    np.testing.assert_array_equal(flat[idx][~np.isnan(y)], y[~np.isnan(y)])


@pytest.mark.parametrize("extra", [(F(0),), (None, F(1)), (F(NAN), F(1)), (F(-1), F(NAN))])
def test_clip_bounds_follow_the_reference(extra):
    """A missing Clip bound leaves +-inf as it is and a NaN bound gives NaN, as in the ONNX
    reference implementation. (onnxruntime clamps +-inf to +-FLT_MAX when a bound is missing and
    ignores a NaN bound.)"""
    m = _model("Clip", X, {}, extra)
    _same(_ours(m, X), ReferenceEvaluator(m).run(None, {"x": X}))


# ---------------------------------------------------------------- fused epilogues
_ACT_AS_ONNX = {  # epilogue name -> (ONNX op, attrs, params given to the epilogue)
    "Relu": ("Relu", {}, {}), "Sigmoid": ("Sigmoid", {}, {}), "Tanh": ("Tanh", {}, {}),
    "LeakyRelu": ("LeakyRelu", {"alpha": 0.2}, {"alpha": 0.2}),
    "Gelu": ("Gelu", {}, {}), "FastGelu": ("Gelu", {"approximate": "tanh"}, {}),
    "HardSigmoid": ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, {"alpha": 0.3, "beta": 0.4}),
    "HardSwish": ("HardSwish", {}, {}), "Elu": ("Elu", {"alpha": 0.7}, {"alpha": 0.7}),
}


def _act_oracle(name, params, y):
    if name == "Clip":
        m = _model("Clip", y, {}, (F(params["min"]), F(params["max"])))
    elif name == "Silu":  # x * sigmoid(x)
        graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y0"])],
                                  "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(y.shape))],
                                  [helper.make_tensor_value_info("y0", TensorProto.FLOAT, list(y.shape))])
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    else:
        op, attrs, _ = _ACT_AS_ONNX[name]
        m = _model(op, y, attrs)
    return _ort(m, y)[0]


_EPILOGUES = sorted(ACTIVATIONS)
_PARAMS = {name: spec[2] for name, spec in _ACT_AS_ONNX.items()} | {"Clip": {"min": -0.5, "max": 2.0}}


def _specials(shape, seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal(shape).astype(np.float32) * 3
    flat = y.reshape(-1)
    for v in (NAN, INF, -INF):
        flat[rng.choice(flat.size, max(3, flat.size // 50), replace=False)] = v
    return y


def test_every_epilogue_is_covered():
    assert set(_EPILOGUES) <= set(_ACT_AS_ONNX) | {"Clip", "Silu"}


@pytest.mark.parametrize("size", [(7, 11), (3, CHUNK + 123)])   # direct and chunked paths
@pytest.mark.parametrize("name", _EPILOGUES)
def test_epilogue_in_place_against_onnxruntime(name, size):
    y = _specials(size, 1)
    got = y.copy()
    ACTIVATIONS[name](got, dict(_PARAMS.get(name, {})))
    _same([got], [_act_oracle(name, _PARAMS.get(name, {}), y)], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("mnk", [(8, 40, 16), (1024, 1024, 16)])   # one BLAS call / threaded tiles
@pytest.mark.parametrize("name", _EPILOGUES)
def test_gemm_epilogue_passes_nan_and_inf(name, mnk):
    m, n, k = mnk
    residual = _specials((m, n), 2)   # A @ B = 0: Y is act(residual), specials included
    y = G.gemm(np.zeros((m, k), np.float32), np.ones((k, n), np.float32), residual=residual,
               activation=name, activation_params=dict(_PARAMS.get(name, {})))
    _same([y], [_act_oracle(name, _PARAMS.get(name, {}), residual)], rtol=1e-5, atol=2e-6)


def _fused_model(kind):
    rng = np.random.default_rng(3)
    vi = helper.make_tensor_value_info
    if kind == "conv":
        w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
        inits, shape, oshape = [numpy_helper.from_array(w, "w")], [1, 1, 5, 5], [1, 4, 5, 5]
    elif kind == "gemm":
        w = rng.standard_normal((5, 6)).astype(np.float32)
        b = rng.standard_normal(6).astype(np.float32)
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"]), helper.make_node("LeakyRelu", ["g"], ["y"], alpha=0.1)]
        inits, shape, oshape = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")], [5, 5], [5, 6]
    elif kind == "matmul":
        w = rng.standard_normal((5, 6)).astype(np.float32)
        b = rng.standard_normal(6).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
                 helper.make_node("Relu", ["a"], ["y"])]
        inits, shape, oshape = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")], [2, 5, 5], [2, 5, 6]
    else:  # add
        b = _specials((5, 5), 4)
        nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
        inits, shape, oshape = [numpy_helper.from_array(b, "b")], [5, 5], [5, 5]
    graph = helper.make_graph(nodes, kind, [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, oshape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), shape


@pytest.mark.parametrize("kind,fused", [("conv", "FusedConv"), ("gemm", "FusedGemm"),
                                        ("matmul", "FusedMatMul"), ("add", "FusedAdd")])
def test_fused_kernels_against_onnxruntime(kind, fused):
    m, shape = _fused_model(kind)
    x = X4[:, :, :, :].reshape(shape) if kind == "conv" else _specials(shape, 5)
    sess = ep_core.InferenceSession(m.SerializeToString(), options(), providers=["cpu"])
    assert fused in ops(sess)
    _same(sess.run(None, {"x": x}), _ort(m, x), rtol=1e-5, atol=1e-5)


def test_attention_keeps_a_nan_row_nan():
    # A NaN query row used to come out as zeros (the masked softmax zeroed NaNs).
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    q[0, 0, 1, 2] = NAN
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)], "att",
                              [vi(n, TensorProto.FLOAT, [1, 2, 3, 4]) for n in "qkv"],
                              [vi("y", TensorProto.FLOAT, [1, 2, 3, 4])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]).SerializeToString()
    feeds = {"q": q, "k": k, "v": v}
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    _same(ours, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(ours[0][0, 0, 1]).all()
