"""Feeds as onnxruntime takes them: each case runs through onnxruntime (the oracle) and ep_core.

Where onnxruntime accepts a feed, ep_core gives the same output (dtype, shape, values); where it
refuses one, ep_core raises InvalidArgument. The few deliberate differences are listed in LENIENT
with the reason (docs/compatibility.md, "Feeds").
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

import ep_core
from ep_core.errors import InvalidArgument


def model(et, shape) -> bytes:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", et, shape)],
                          [helper.make_tensor_value_info("y", et, shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


CASES = {
    "list float -> float": (T.FLOAT, [None], [1.0, 2.0]),
    "list int -> float": (T.FLOAT, [None], [1, 2]),
    "list int -> int32": (T.INT32, [None], [1, 2]),
    "list float -> int32 (truncates)": (T.INT32, [None], [1.5, 2]),
    "list int -> int64": (T.INT64, [None], [1, 2]),
    "list bool -> bool": (T.BOOL, [None], [True, False]),
    "list int -> bool": (T.BOOL, [None], [1, 0]),
    "list int -> float16": (T.FLOAT16, [None], [1, 2]),
    "list int -> double": (T.DOUBLE, [None], [1, 2]),
    "list int -> uint8": (T.UINT8, [None], [1, 2]),
    "list str -> string": (T.STRING, [None], ["a", "b"]),
    "list int -> string": (T.STRING, [None], [1, 2]),
    "nested list -> float 2-D": (T.FLOAT, [None, None], [[1, 2], [3, 4]]),
    "empty list -> float": (T.FLOAT, [None], []),
    "ragged list": (T.FLOAT, [None, None], [[1, 2], [3]]),
    "list 2**40 -> int32": (T.INT32, [None], [2**40]),
    "list -1 -> uint8": (T.UINT8, [None], [-1]),
    "list numeric str -> float": (T.FLOAT, [None], ["1.5"]),
    "list word -> float": (T.FLOAT, [None], ["abc"]),
    "list None -> float": (T.FLOAT, [None], [None]),
    "float64 array -> float": (T.FLOAT, [None], np.array([1.0, 2.0])),
    "float32 array -> double": (T.DOUBLE, [None], np.array([1.0, 2.0], np.float32)),
    "int64 array -> int32": (T.INT32, [None], np.array([1, 2])),
    "int32 array -> int64": (T.INT64, [None], np.array([1, 2], np.int32)),
    "float16 array -> float": (T.FLOAT, [None], np.array([1], np.float16)),
    "bool array -> float": (T.FLOAT, [None], np.array([True])),
    "bool array -> int64": (T.INT64, [None], np.array([True])),
    "int64 array -> string": (T.STRING, [None], np.array([1, 2])),
    "unicode array -> string": (T.STRING, [None], np.array(["a", "b"])),
    "object str array -> string": (T.STRING, [None], np.array(["a", "b"], dtype=object)),
    "object int array -> string": (T.STRING, [None], np.array([1, 2], dtype=object)),
    "object float array -> float": (T.FLOAT, [None], np.array([1.0, 2.0], dtype=object)),
    "non-contiguous float": (T.FLOAT, [None], np.arange(6, dtype=np.float32)[::2]),
    "transposed float 2-D": (T.FLOAT, [None, None], np.arange(6, dtype=np.float32).reshape(2, 3).T),
    "declared -1, fed 5": (T.FLOAT, [-1], np.zeros(5, np.float32)),
    "declared -1 x 3, fed 5 x 3": (T.FLOAT, [-1, 3], np.zeros((5, 3), np.float32)),
    "declared 0, fed 5": (T.FLOAT, [0], np.zeros(5, np.float32)),
    "declared 0, fed 0": (T.FLOAT, [0], np.zeros(0, np.float32)),
    "declared 3, fed 5": (T.FLOAT, [3], np.zeros(5, np.float32)),
    "symbolic, fed 5": (T.FLOAT, ["N"], np.zeros(5, np.float32)),
    "rank 2 for rank 1": (T.FLOAT, [None], np.zeros((2, 2), np.float32)),
    "dict for a tensor": (T.FLOAT, [None], {"a": 1}),
    "list float -> bool": (T.BOOL, [None], [1.0]),
}

# ep_core accepts these where onnxruntime 1.32 does not (why: docs/compatibility.md, "Feeds").
LENIENT = {
    "big-endian float": (T.FLOAT, [None], np.arange(3, dtype=">f4")),   # ORT reads the bytes as native
    "big-endian int64": (T.INT64, [None], np.arange(3, dtype=">i8")),
    "python float scalar": (T.FLOAT, [], 1.5),             # ORT: "Unable to handle object of type"
    "python int -> int64 scalar": (T.INT64, [], 3),
    "numpy float32 scalar": (T.FLOAT, [], np.float32(1.0)),
    "tuple -> float": (T.FLOAT, [None], (1.0, 2.0)),
    "bytes array -> string": (T.STRING, [None], np.array([b"a", b"b"])),  # ORT: UnicodeDecodeError
}
LENIENT_WANT = {
    "big-endian float": np.arange(3, dtype=np.float32),
    "big-endian int64": np.arange(3, dtype=np.int64),
    "python float scalar": np.array(1.5, np.float32),
    "python int -> int64 scalar": np.array(3, np.int64),
    "numpy float32 scalar": np.array(1.0, np.float32),
    "tuple -> float": np.array([1.0, 2.0], np.float32),
    "bytes array -> string": np.array(["a", "b"], dtype=object),
}


def run_ort(m, v):
    try:
        return ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": v})[0]
    except Exception as e:  # noqa: BLE001 - any refusal of onnxruntime's is a refusal
        return e


@pytest.mark.parametrize("case", sorted(CASES))
def test_feed_matches_onnxruntime(case):
    et, shape, value = CASES[case]
    m = model(et, shape)
    want = run_ort(m, value)
    sess = ep_core.InferenceSession(m, providers=["cpu"])
    if isinstance(want, Exception):
        with pytest.raises(InvalidArgument):
            sess.run(None, {"x": value})
        return
    got = sess.run(None, {"x": value})[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", sorted(LENIENT))
def test_lenient_feeds(case):
    et, shape, value = LENIENT[case]
    got = ep_core.InferenceSession(model(et, shape), providers=["cpu"]).run(None, {"x": value})[0]
    want = LENIENT_WANT[case]
    assert got.dtype == want.dtype and got.shape == want.shape and got.tolist() == want.tolist()


def test_lenient_cases_are_still_refused_or_wrong_in_onnxruntime():
    """If onnxruntime starts taking one of these the same way, it belongs in CASES."""
    for case, (et, shape, value) in LENIENT.items():
        out = run_ort(model(et, shape), value)
        same = (not isinstance(out, Exception) and out.dtype == LENIENT_WANT[case].dtype
                and out.tolist() == LENIENT_WANT[case].tolist())
        assert not same, case


def test_negative_dim_is_dynamic_through_the_optimizer():
    """A declared -1 must not be folded as a static size: Shape(x) reports the fed size."""
    g = helper.make_graph([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("Reshape", ["r", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [-1, 3])],
                          [helper.make_tensor_value_info("s", T.INT64, [2]),
                           helper.make_tensor_value_info("y", T.FLOAT, [-1, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.ones((5, 3), np.float32)
    s, y = ep_core.InferenceSession(m, providers=["cpu"]).run(None, {"x": x})
    assert s.tolist() == [5, 3] and y.shape == (5, 3)


def test_node_arg_shapes_as_onnxruntime_reports_them():
    """-1 and unnamed dims are None, names are str, 0 is 0 (also for shapes shape inference filled)."""
    from ep_core import onnxruntime as compat
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", T.FLOAT, [-1, "N", None, 0, 3])],
                          [helper.make_tensor_value_info("y", T.FLOAT, [-1, "M", None, 0, 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    o = ort.InferenceSession(m, providers=["CPUExecutionProvider"])
    e = compat.InferenceSession(m, providers=["CPUExecutionProvider"])
    for a, b in zip(o.get_inputs() + o.get_outputs(), e.get_inputs() + e.get_outputs()):
        assert (a.name, a.type, a.shape) == (b.name, b.type, b.shape)


def test_converted_feed_does_not_alias_caller_buffer_when_converted():
    x = np.arange(6, dtype=np.float32)[::2]
    y = ep_core.InferenceSession(model(T.FLOAT, [None]), providers=["cpu"]).run(None, {"x": x})[0]
    assert y.flags.c_contiguous and y.tolist() == [0.0, 2.0, 4.0]


def test_plain_feeds_pass_through_and_anything_else_is_checked():
    """Feeds exactly as declared (C-contiguous host arrays, declared dtype and static shape) go
    to the run as they are (`plain_feeds`); any other feed takes the full check, which converts
    or refuses it as before."""
    from ep_core.feeds import plain_feeds
    sess = ep_core.InferenceSession(model(T.FLOAT, [2, 3]), providers=["cpu"])
    spec = sess._feed_spec
    x = np.ones((2, 3), np.float32)
    feeds = {"x": x}
    assert plain_feeds(feeds, spec) is feeds
    for other in ({"x": x.astype(np.float64)}, {"x": np.ones((3, 2), np.float32)},
                  {"x": np.asfortranarray(np.ones((2, 3), np.float32))}, {"x": x.tolist()},
                  {"x": x, "z": x}, {}):
        assert plain_feeds(other, spec) is None
    np.testing.assert_array_equal(sess.run(None, {"x": x.tolist()})[0], x)
    np.testing.assert_array_equal(sess.run(None, {"x": np.asfortranarray(x)})[0], x)
    with pytest.raises(InvalidArgument, match="dtype|type"):
        sess.run(None, {"x": x.astype(np.float64)})
    with pytest.raises(InvalidArgument, match="shape"):
        sess.run(None, {"x": np.ones((3, 2), np.float32)})
    with pytest.raises(InvalidArgument, match="z"):
        sess.run(None, {"x": x, "z": x})
    assert plain_feeds(feeds, ep_core.InferenceSession(model(T.FLOAT, [None, 3]),
                                                       providers=["cpu"])._feed_spec) is None
