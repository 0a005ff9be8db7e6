"""The class-major LinearClassifier path (several classes, SOFTMAX / NONE), the column-folded
Normalizer and the one-pass Scaler against onnxruntime: labels exactly, scores at float32
rounding, zero rows left unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")
ML = "ai.onnx.ml"


def _model(nodes, inputs, outputs):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, 3)])
    m.ir_version = 9
    return m.SerializeToString()


def _both(data: bytes, feeds: dict) -> tuple[list, list]:
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    return ours, ref


@pytest.mark.parametrize("transform", ["SOFTMAX", "NONE"])
@pytest.mark.parametrize("classes", [3, 5, 20])
@pytest.mark.parametrize("strings", [False, True])
def test_linear_classifier_multi_class(transform, classes, strings):
    rng = np.random.default_rng(classes)
    feats = 7
    labels = {"classlabels_strings": [f"c{i}" for i in range(classes)]} if strings else \
        {"classlabels_ints": list(range(10, 10 + classes))}
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain=ML,
                            coefficients=rng.normal(size=classes * feats).tolist(),
                            intercepts=rng.normal(size=classes).tolist(), multi_class=1,
                            post_transform=transform, **labels)
    data = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, feats])],
                  [helper.make_tensor_value_info("label", TensorProto.STRING if strings else TensorProto.INT64,
                                                 [None]),
                   helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, classes])])
    x = (rng.normal(size=(33, feats)) * 3).astype(np.float32)
    (lab, sc), (rlab, rsc) = _both(data, {"x": x})
    np.testing.assert_array_equal(lab, rlab)
    assert sc.shape == rsc.shape and sc.dtype == np.float32 and sc.flags.c_contiguous
    np.testing.assert_allclose(sc, rsc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
@pytest.mark.parametrize("cols", [1, 3, 40])
def test_normalizer_rows(norm, cols):
    rng = np.random.default_rng(cols)
    x = rng.normal(size=(9, cols)).astype(np.float32)
    x[2] = 0.0   # a zero divisor leaves its row unchanged
    node = helper.make_node("Normalizer", ["x"], ["y"], domain=ML, norm=norm)
    data = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, cols])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])])
    (y,), (ry,) = _both(data, {"x": x})
    np.testing.assert_allclose(y, ry, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype,elem", [(np.float32, TensorProto.FLOAT), (np.float64, TensorProto.DOUBLE),
                                        (np.int64, TensorProto.INT64)])
def test_scaler_dtypes(dtype, elem):
    x = np.arange(12, dtype=dtype).reshape(3, 4)
    node = helper.make_node("Scaler", ["x"], ["y"], domain=ML, offset=[1.0, 2.0, 3.0, 4.0],
                            scale=[0.5, 2.0, -1.0, 3.0])
    data = _model([node], [helper.make_tensor_value_info("x", elem, [3, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])])
    (y,), (ry,) = _both(data, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ry, rtol=1e-6)


@pytest.mark.parametrize("classes", [2, 3, 5, 17])
def test_argmax_over_classes_equals_numpy(classes):
    """The class-loop arg-max of LinearClassifier equals np.argmax: ties take the first class,
    and the first NaN wins."""
    from ep_cpu.kernels.ml_linear import _argmax_rows
    rng = np.random.default_rng(classes)
    st = rng.standard_normal((classes, 1000))
    st[rng.integers(0, classes, 50), rng.integers(0, 1000, 50)] = np.nan
    st[:, 7] = 1.0
    np.testing.assert_array_equal(_argmax_rows(st), st.argmax(axis=0))


@pytest.mark.parametrize("kind", ["SOFTMAX", "NONE"])
@pytest.mark.parametrize("classes", [2, 3, 9])
def test_compiled_linear_scores_equal_the_numpy_path(monkeypatch, kind, classes):
    """`ml_jit.linear_scores` against the numpy path on rows with ties, NaN and inf: the same
    labels, the same NaN rows, scores within 1e-6 (the compiled softmax's exponentials are
    float32, of float64 scores)."""
    from ep_cpu import ml_jit
    from ep_cpu.kernels import ml_linear
    if not ml_jit.available():
        pytest.skip("needs numba")
    rng = np.random.default_rng(classes)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    x[3] = np.nan
    x[5, 2] = np.inf
    x[7] = 0.0
    coef = rng.normal(size=(classes, 6))
    coef[1] = coef[0]                      # ties: the first class wins
    k = ml_linear.LinearClassifier.__new__(ml_linear.LinearClassifier)
    k.labels, k.is_str = list(range(classes)), False
    k.intercepts = np.zeros(classes)
    k.label_table = np.arange(classes)
    lab, sc = k._multi_class(x, coef, kind)
    monkeypatch.setattr(ml_jit, "available", lambda: False)
    with np.errstate(all="ignore"):   # inf - inf in the numpy path (a run sets this too)
        rlab, rsc = k._multi_class(x, coef, kind)
    np.testing.assert_array_equal(lab, rlab)
    np.testing.assert_array_equal(np.isnan(sc), np.isnan(rsc))
    np.testing.assert_allclose(sc, rsc, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_compiled_normalizer_nan_and_zero_rows(monkeypatch, norm):
    from ep_cpu import ml_jit
    from ep_cpu.kernels import ml
    if not ml_jit.available():
        pytest.skip("needs numba")
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    x[1] = 0.0
    x[2, 3] = np.nan
    x[4] = -1.0
    k = ml.Normalizer.__new__(ml.Normalizer)
    k.norm = norm
    y = k.compute(x)
    monkeypatch.setattr(ml_jit, "available", lambda: False)
    np.testing.assert_array_equal(y, k.compute(x))
