"""Kernels that pick a specialised compute from their node's declared dtypes (a bare ufunc for
float32, ...) give exactly what the generic path gives: same dtype, an ndarray for 0-d results,
NaN/inf/wrap-around as onnxruntime computes them. Each case runs with the rank declared (the bare
ufunc), the rank unknown (the 0-d-safe wrapper) and the element type unknown (the generic path)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ep_cpu.kernels  # noqa: F401 - registers the kernels
from ep_core.graph import Node
from ep_core.kernel import KernelContext
from ep_cpu.provider import CPUExecutionProvider
from ep_cpu.registry import registry

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

NAN, INF = np.nan, np.inf
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
         np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int32): TensorProto.INT32,
         np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int8): TensorProto.INT8,
         np.dtype(bool): TensorProto.BOOL}


def _values(dt: np.dtype, shape) -> np.ndarray:
    if dt.kind == "f":
        base = np.array([NAN, 1.5, INF, -2.0, -INF, -0.0, 0.0, 3.25, 6e4], dt)
    elif dt == bool:
        base = np.array([True, False, True, True, False], bool)
    else:
        info = np.iinfo(dt)
        base = np.array([info.min, info.max, -3, 0, 7, 1, -1], dt)
    n = int(np.prod(shape, dtype=np.int64))
    return np.resize(base, n).reshape(shape)


def _oracle(op, dtypes, out_dtype, attrs, feeds):
    names = [f"x{i}" for i in range(len(dtypes))]
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, _ELEM[np.dtype(d)], None) for n, d in zip(names, dtypes)],
        [helper.make_tensor_value_info("y", _ELEM[np.dtype(out_dtype)], None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _kernel(op, dtypes, out_dtype, attrs, declared: str, shape):
    """The CPU kernel built for a node whose types are declared with their rank ('rank'), with the
    element type only ('dtype': rank unknown) or not at all ('none': the generic path)."""
    proto = helper.make_node(op, [f"x{i}" for i in range(len(dtypes))], ["y"], **(attrs or {}))
    dims = list(shape) if declared == "rank" else None

    def tp(d):
        return helper.make_tensor_type_proto(_ELEM[np.dtype(d)], dims) if declared != "none" else None
    node = Node(op, list(proto.input), ["y"], name="n",
                attrs={a.name: helper.get_attribute_value(a) for a in proto.attribute},
                since_version=onnx.defs.get_schema(op, 17).since_version, opset=17,
                input_types=[tp(d) for d in dtypes], output_types=[tp(out_dtype)])
    kdef = registry.lookup(node)
    return kdef.factory(node, KernelContext(CPUExecutionProvider()))


CASES = [  # op, input dtypes, output dtype, attrs
    ("Neg", [np.float32], np.float32, None), ("Abs", [np.float64], np.float64, None),
    ("Neg", [np.int32], np.int32, None), ("Abs", [np.int8], np.int8, None),
    ("Sqrt", [np.float32], np.float32, None), ("Log", [np.float32], np.float32, None),
    ("Exp", [np.float32], np.float32, None), ("Reciprocal", [np.float32], np.float32, None),
    ("Sign", [np.int64], np.int64, None), ("Floor", [np.float64], np.float64, None),
    ("Relu", [np.float32], np.float32, None), ("Relu", [np.float64], np.float64, None),
    ("Relu", [np.float16], np.float16, None), ("Relu", [np.int8], np.int8, None),
    ("Sigmoid", [np.float32], np.float32, None), ("Sigmoid", [np.float64], np.float64, None),
    ("Tanh", [np.float32], np.float32, None), ("Tanh", [np.float16], np.float16, None),
    ("LeakyRelu", [np.float32], np.float32, {"alpha": 0.1}), ("Elu", [np.float32], np.float32, None),
    ("HardSigmoid", [np.float32], np.float32, None), ("Softsign", [np.float32], np.float32, None),
    ("Add", [np.float32, np.float32], np.float32, None), ("Mul", [np.float64, np.float64], np.float64, None),
    ("Sub", [np.int32, np.int32], np.int32, None), ("Mul", [np.int8, np.int8], np.int8, None),
    ("Div", [np.float32, np.float32], np.float32, None), ("Div", [np.int32, np.int32], np.int32, None),
    ("Add", [np.float16, np.float16], np.float16, None),
    ("Less", [np.float32, np.float32], bool, None), ("Equal", [np.int64, np.int64], bool, None),
    ("Greater", [np.float16, np.float16], bool, None),
    ("And", [bool, bool], bool, None), ("Xor", [bool, bool], bool, None), ("Not", [bool], bool, None),
    ("Max", [np.float32, np.float32], np.float32, None), ("Min", [np.float64, np.float64], np.float64, None),
    ("Sum", [np.float32, np.float32], np.float32, None),
    ("Where", [bool, np.float32, np.float32], np.float32, None),
    ("Cast", [np.float32], np.int32, {"to": TensorProto.INT32}),
    ("Cast", [np.int64], np.float32, {"to": TensorProto.FLOAT}),
    ("Cast", [np.float64], np.float16, {"to": TensorProto.FLOAT16}),
]


@pytest.mark.parametrize("shape", [(), (9,), (3, 3)], ids=["0d", "1d", "2d"])
@pytest.mark.parametrize("declared", ["rank", "dtype", "none"])
@pytest.mark.parametrize("op,dtypes,out_dtype,attrs", CASES,
                         ids=[f"{c[0]}-{np.dtype(c[1][-1]).name}" for c in CASES])
def test_specialised_paths_match_onnxruntime(op, dtypes, out_dtype, attrs, declared, shape):
    # float -> int of NaN/inf/out-of-range values is undefined in ONNX
    finite_only = op == "Cast" and np.dtype(dtypes[0]).kind == "f" and np.dtype(out_dtype).kind == "i"
    feeds = {}
    for i, d in enumerate(dtypes):
        v = _values(np.dtype(d), shape)
        if i == 1 and op == "Div" and np.dtype(d).kind == "i":
            v = np.where(v == 0, 3, v).astype(d)   # integer division by 0 is undefined
            v = np.where(v == -1, 2, v).astype(d)  # MIN / -1 overflows (undefined in C)
        if finite_only:
            v = np.nan_to_num(v, posinf=7.0, neginf=-7.0, nan=1.0)
            v = np.asarray(np.clip(v, -1000, 1000)).astype(d)
        if i == 0 and op == "Where":
            v = _values(np.dtype(bool), shape)
        feeds[f"x{i}"] = v
    want = _oracle(op, dtypes, out_dtype, attrs, feeds)
    k = _kernel(op, dtypes, out_dtype, attrs, declared, shape)
    with np.errstate(all="ignore"):   # as run_plan sets for every run
        got = k.compute(*feeds.values())
    assert type(got) is np.ndarray
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=1e-6 if want.dtype != np.float16 else 1e-3, equal_nan=True)
        np.testing.assert_array_equal(np.signbit(got[np.isnan(got)]) * 0, np.signbit(want[np.isnan(want)]) * 0)
    else:
        np.testing.assert_array_equal(got, want)


def test_declared_float32_binds_the_ufunc_itself():
    """The point of the fast path: no Python frame between the executor and numpy."""
    assert _kernel("Neg", [np.float32], np.float32, None, "rank", (4,)).compute is np.negative
    assert _kernel("Add", [np.float32] * 2, np.float32, None, "rank", (4,)).compute is np.add
    assert _kernel("Neg", [np.float32], np.float32, None, "dtype", (4,)).compute is not np.negative
    assert "compute" not in vars(_kernel("Neg", [np.float32], np.float32, None, "none", (4,)))


def test_cast_to_float8_keeps_its_saturation():
    """ml_dtypes' float8 reports kind 'f' like numpy's floats, but Cast to it saturates (a plain
    astype gives inf): the bound astype is for numpy's own types only."""
    import ml_dtypes
    k = _kernel("Cast", [np.float16], np.float16, {"to": TensorProto.FLOAT8E5M2}, "rank", (3,))
    got = k.compute(np.array([65000, -65000, 0.5], np.float16))   # rounds to inf unsaturated
    np.testing.assert_array_equal(got.astype(np.float32), [57344, -57344, 0.5])
    assert got.dtype == np.dtype(ml_dtypes.float8_e5m2)


@pytest.mark.parametrize("declared", ["rank", "dtype", "none"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [np.array([-1, 0, 2], np.int64), np.array(-2, np.int32),
                                     np.array([[1, -3]], np.int32)], ids=["1d", "0d", "2d"])
def test_gather_fast_path_matches_onnxruntime(declared, axis, indices):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = Node("Gather", ["x", "i"], ["y"], name="g", attrs={"axis": axis}, since_version=13, opset=17,
                input_types=[helper.make_tensor_type_proto(TensorProto.FLOAT, [3, 4] if declared == "rank" else None),
                             helper.make_tensor_type_proto(_ELEM[indices.dtype], None)][:2 if declared != "none" else 0],
                output_types=[helper.make_tensor_type_proto(TensorProto.FLOAT, None)])
    k = registry.lookup(node).factory(node, KernelContext(CPUExecutionProvider()))
    got = k.compute(x, indices)
    graph = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
                               helper.make_tensor_value_info("i", _ELEM[indices.dtype], None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "i": indices})[0]
    assert type(got) is np.ndarray and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexError):
        k.compute(x, np.array([3 if axis == 0 else 4], np.int64))
    with pytest.raises(IndexError):
        k.compute(x, np.array([-4 if axis == 0 else -5], np.int64))


@pytest.mark.parametrize("declared", ["rank", "none"])
@pytest.mark.parametrize("axis", [0, -1])
def test_concat_fast_path(declared, axis):
    xs = [np.arange(6, dtype=np.int64).reshape(2, 3) * k for k in range(1, 4)]
    types = [helper.make_tensor_type_proto(TensorProto.INT64, [2, 3]) for _ in xs] if declared == "rank" else []
    node = Node("Concat", ["a", "b", "c"], ["y"], name="c", attrs={"axis": axis}, since_version=13, opset=17,
                input_types=types, output_types=[])
    k = registry.lookup(node).factory(node, KernelContext(CPUExecutionProvider()))
    assert ("compute" in vars(k)) == (declared == "rank")
    got = k.compute(*xs)
    np.testing.assert_array_equal(got, np.concatenate(xs, axis=axis))
    assert got.dtype == np.int64
