"""Run-time limits in CPU kernels: shape data they cannot accept is Fail naming the node,
and outputs whose size comes from input data are refused above SessionOptions.max_tensor_bytes
before anything is allocated, with the session still usable afterwards."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core.errors import Fail, ResourceLimit

GB = 1 << 30
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _np_elem(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def _session(op, feeds, attrs=None, consts=(), opset=21, limit=0, name="n0"):
    """One-node model; `feeds` are graph inputs (name -> example array) and `consts`
    initializers ((name, array)), in the node in that order. Output types come from shape
    inference (a symbolic dim where the size depends on the data)."""
    inputs = [helper.make_tensor_value_info(k, _np_elem(v), list(v.shape)) for k, v in feeds.items()]
    inits = [numpy_helper.from_array(np.asarray(c[1]), c[0]) for c in consts]
    node = helper.make_node(op, list(feeds) + [c[0] for c in consts], ["y"], name=name, **(attrs or {}))
    graph = helper.make_graph([node], "limits", inputs, [helper.make_empty_tensor_value_info("y")], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    out = model.graph.output[0].type.tensor_type
    if not out.HasField("shape"):   # rank unknown to inference: any rank-1 shape, the runtime does not check
        out.elem_type = out.elem_type or F32
        out.shape.dim.add().dim_param = "n"
    so = ep_core.SessionOptions()
    so.max_tensor_bytes = limit
    return ep_core.InferenceSession(model.SerializeToString(), so, providers=["cpu"])


def _run_err(sess, feeds, err=Fail, match=None):
    with pytest.raises(err, match=match) as info:
        sess.run(None, feeds)
    assert "node 'n0'" in str(info.value), str(info.value)
    if err is Fail:   # bad shape data, not a refused allocation
        assert not isinstance(info.value, ResourceLimit)
    return info.value


# ---------------------------------------------------------------- shape data a kernel cannot accept
def _ints(*v):
    return np.array(v, np.int64)


X23 = np.arange(6, dtype=np.float32).reshape(2, 3)

BAD_SHAPES = [
    ("Reshape", {"x": X23, "s": _ints(-2, 3)}, {}, "below -1"),
    ("Reshape", {"x": X23, "s": _ints(-1, -1)}, {}, "more than one -1"),
    ("Reshape", {"x": X23, "s": _ints(4, 2)}, {}, "cannot reshape"),
    ("Reshape", {"x": X23, "s": _ints(-1, 4)}, {}, "cannot reshape"),
    ("Reshape", {"x": X23, "s": _ints(0, 0, 0)}, {}, "copies dim 2"),
    ("Reshape", {"x": X23, "s": _ints(0, -1)}, {"allowzero": 1}, "both 0 and -1"),
    ("Expand", {"x": X23, "s": _ints(2, -3)}, {}, "negative"),
    ("Expand", {"x": X23, "s": _ints(2, 4)}, {}, "does not broadcast"),
    ("Tile", {"x": X23, "r": _ints(2, -1)}, {}, "non-negative"),
    ("Tile", {"x": X23, "r": _ints(2, 1, 1)}, {}, "non-negative"),
    ("ConstantOfShape", {"s": _ints(3, -1)}, {}, "negative"),
    ("Range", {"a": np.array(0, np.int64), "b": np.array(5, np.int64), "d": np.array(0, np.int64)}, {}, "delta is 0"),
    ("Range", {"a": np.array(0, np.float32), "b": np.array(np.inf, np.float32), "d": np.array(1, np.float32)}, {},
     "finite"),
    ("Range", {"a": np.array(0, np.float32), "b": np.array(5, np.float32), "d": np.array(np.nan, np.float32)}, {},
     "finite"),
    ("Slice", {"x": X23, "st": _ints(0), "en": _ints(2), "ax": _ints(0), "sp": _ints(0)}, {}, "0"),
    ("Slice", {"x": X23, "st": _ints(0, 0), "en": _ints(2)}, {}, "differ in length"),
    ("Slice", {"x": X23, "st": _ints(0, 1), "en": _ints(2, 2), "ax": _ints(1, -1)}, {}, "repeat"),
    ("Split", {"x": X23, "sp": _ints(-1, 4)}, {"axis": 1}, "non-negative"),
    ("Pad", {"x": X23, "p": _ints(1, 1)}, {}, "2 x rank"),
    ("Pad", {"x": X23, "p": _ints(0, -2, 0, -2)}, {}, "below zero"),
    ("OneHot", {"i": _ints(1, 2), "d": np.array(-3, np.int64), "v": np.array([0, 1], np.float32)}, {}, "negative"),
    ("Resize", {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([1, np.nan], np.float32)}, {}, "finite"),
    ("Resize", {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([1, 0], np.float32)}, {}, "positive"),
    ("Resize", {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([1], np.float32)}, {}, "2 finite"),
    ("CenterCropPad", {"x": X23, "s": _ints(2, -1)}, {}, "non-negative"),
    ("Col2Im", {"x": np.zeros((1, 4, 4), np.float32), "i": _ints(3, 3), "b": _ints(0, 2)}, {}, "positive"),
    ("HannWindow", {"n": np.array(-4, np.int64)}, {}, "negative"),
    ("DFT", {"x": np.zeros((1, 8, 1), np.float32), "n": np.array(-1, np.int64)}, {}, "positive"),
    ("STFT", {"x": np.zeros((1, 32, 1), np.float32), "s": np.array(0, np.int64), "w": np.ones(8, np.float32)}, {},
     "positive"),
]


@pytest.mark.parametrize("op,feeds,attrs,match", BAD_SHAPES, ids=[f"{c[0]}{i}" for i, c in enumerate(BAD_SHAPES)])
def test_bad_shape_data_is_fail_naming_the_node(op, feeds, attrs, match):
    sess = _session(op, feeds, attrs)
    err = _run_err(sess, feeds, Fail, match)
    assert "Error:" not in str(err)   # our message, not a wrapped ValueError / ZeroDivisionError


def test_reshape_minus_two_regression():
    # Reshape to [-2, 3] used to be accepted.
    feeds = {"x": X23, "s": _ints(-2, 3)}
    err = _run_err(_session("Reshape", feeds), feeds, Fail)
    assert "[-2, 3]" in str(err)


def test_good_shape_data_still_works():
    sess = _session("Reshape", {"x": X23, "s": _ints(3, -1)})
    assert sess.run(None, {"x": X23, "s": _ints(3, -1)})[0].shape == (3, 2)
    sess = _session("Slice", {"x": X23, "st": _ints(2, 0), "en": _ints(-10, 3), "ax": _ints(1, 0), "sp": _ints(-1, 1)})
    y = sess.run(None, {"x": X23, "st": _ints(2, 0), "en": _ints(-10, 3), "ax": _ints(1, 0), "sp": _ints(-1, 1)})[0]
    np.testing.assert_array_equal(y, X23[:, ::-1])


# ---------------------------------------------------------------- allocation bombs
def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_200_gb_constant_of_shape_is_refused_before_allocating():
    sess = _session("ConstantOfShape", {"s": _ints(1, 1)}, limit=GB)
    before = _rss()
    err = _run_err(sess, {"s": _ints(50_000, 1_000_000)}, ResourceLimit, "max_tensor_bytes")   # 200 GB
    assert "200000000000 bytes" in str(err)
    # A size the machine could allocate (600 MB) is refused by the limit too, and RSS stays put.
    sess_small = _session("ConstantOfShape", {"s": _ints(1, 1)}, limit=64 << 20)
    _run_err(sess_small, {"s": _ints(150, 1_000_000)}, ResourceLimit)
    assert _rss() - before < 100 << 20
    # Both sessions still run normally afterwards.
    np.testing.assert_array_equal(sess.run(None, {"s": _ints(2, 3)})[0], np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(sess_small.run(None, {"s": _ints(1, 4)})[0], np.zeros((1, 4), np.float32))


def test_without_a_limit_an_output_above_the_machines_memory_is_refused():
    """No max_tensor_bytes: an output larger than the machine's memory (which the kernel would
    overcommit and the OOM killer end) is ResourceLimit naming the node, before allocating;
    the session stays usable."""
    from ep_core.kernel import _PHYSICAL_BYTES
    sess = _session("ConstantOfShape", {"s": _ints(1, 1)})
    rows = _PHYSICAL_BYTES // 4 // 1000 + 1
    err = _run_err(sess, {"s": _ints(rows, 1000)}, ResourceLimit, "machine's memory")
    assert f"{rows * 4000} bytes" in str(err)
    assert sess.run(None, {"s": _ints(3, 1)})[0].shape == (3, 1)


def test_a_memory_error_in_a_kernel_is_a_typed_error(monkeypatch):
    """numpy's MemoryError inside a kernel surfaces as ResourceLimit (a Fail) naming the node."""
    from ep_cpu.kernels.generate import ConstantOfShape

    def no_memory(*a, **k):
        raise MemoryError("Unable to allocate")
    monkeypatch.setattr(ConstantOfShape, "compute", no_memory)
    sess = _session("ConstantOfShape", {"s": _ints(1, 1)})
    err = _run_err(sess, {"s": _ints(3, 1)}, ResourceLimit)
    assert "MemoryError" in str(err)


HUGE = 1 << 40   # elements: 4 TB of float32
BOMBS = [
    ("ConstantOfShape", {"s": _ints(HUGE)}, {}, {"s": _ints(2)}),
    ("Expand", {"x": np.ones((1, 1), np.float32), "s": _ints(1 << 20, 1 << 20)}, {},
     {"x": np.ones((1, 1), np.float32), "s": _ints(2, 2)}),
    ("Tile", {"x": X23, "r": _ints(1 << 20, 1 << 20)}, {}, {"x": X23, "r": _ints(2, 1)}),
    ("Range", {"a": np.array(0, np.int64), "b": np.array(HUGE, np.int64), "d": np.array(1, np.int64)}, {},
     {"a": np.array(0, np.int64), "b": np.array(3, np.int64), "d": np.array(1, np.int64)}),
    ("Range", {"a": np.array(0, np.float32), "b": np.array(1e12, np.float32), "d": np.array(1, np.float32)}, {},
     {"a": np.array(0, np.float32), "b": np.array(3, np.float32), "d": np.array(1, np.float32)}),
    ("Resize", {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([1e6, 1e6], np.float32)}, {},
     {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([2, 2], np.float32)}),
    ("Resize", {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([1e6, 1e6], np.float32)}, {"mode": "linear"},
     {"x": X23, "roi": np.zeros(0, np.float32), "sc": np.array([2, 2], np.float32)}),
    ("Pad", {"x": X23, "p": _ints(0, 0, 1 << 20, 1 << 20)}, {}, {"x": X23, "p": _ints(1, 1, 1, 1)}),
    ("OneHot", {"i": np.zeros(1 << 10, np.int64), "d": np.array(1 << 30, np.int64), "v": np.array([0, 1], np.float32)},
     {}, {"i": np.zeros(1 << 10, np.int64), "d": np.array(3, np.int64), "v": np.array([0, 1], np.float32)}),
    ("CenterCropPad", {"x": X23, "s": _ints(1 << 20, 1 << 20)}, {}, {"x": X23, "s": _ints(4, 4)}),
    ("Col2Im", {"x": np.zeros((1, 4, 1), np.float32), "i": _ints(1 << 20, 1 << 20), "b": _ints(2, 2)},
     {"strides": [1 << 20, 1 << 20]}, None),
    ("AffineGrid", {"t": np.zeros((1, 2, 3), np.float32), "s": _ints(1, 1, 1 << 20, 1 << 20)}, {},
     {"t": np.zeros((1, 2, 3), np.float32), "s": _ints(1, 1, 2, 2)}),
    ("HannWindow", {"n": np.array(HUGE, np.int64)}, {}, {"n": np.array(4, np.int64)}),
    ("DFT", {"x": np.zeros((1, 8, 1), np.float32), "n": np.array(HUGE, np.int64)}, {},
     {"x": np.zeros((1, 8, 1), np.float32), "n": np.array(8, np.int64)}),
    ("MelWeightMatrix", {"b": np.array(1 << 20, np.int64), "n": np.array(1 << 20, np.int64),
                         "r": np.array(16000, np.int64), "lo": np.array(0, np.float32), "hi": np.array(8000, np.float32)},
     {}, None),
    ("MaxUnpool", {"x": np.ones((1, 1, 1, 1), np.float32), "i": np.zeros((1, 1, 1, 1), np.int64),
                   "o": _ints(1, 1, 1 << 20, 1 << 20)}, {"kernel_shape": [1, 1]}, None),
]


@pytest.mark.parametrize("op,feeds,attrs,ok", BOMBS, ids=[f"{c[0]}{i}" for i, c in enumerate(BOMBS)])
def test_allocation_bombs_are_refused_and_the_session_survives(op, feeds, attrs, ok):
    sess = _session(op, feeds, attrs, limit=GB)
    _run_err(sess, feeds, ResourceLimit, "max_tensor_bytes")
    if ok is not None:
        sess.run(None, ok)


def test_random_normal_with_a_huge_shape_attribute_is_refused_at_build():
    graph = helper.make_graph([helper.make_node("RandomNormal", [], ["y"], name="n0", shape=[1 << 20, 1 << 20])],
                              "g", [], [helper.make_tensor_value_info("y", F32, [1 << 20, 1 << 20])])
    so = ep_core.SessionOptions()
    so.max_tensor_bytes = GB
    with pytest.raises(ResourceLimit, match="node 'n0'"):
        ep_core.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
                                 .SerializeToString(), so, providers=["cpu"])


def test_conv_transpose_with_huge_strides_is_refused():
    w = np.ones((1, 1, 2, 2), np.float32)
    sess = _session("ConvTranspose", {"x": np.ones((1, 1, 3, 3), np.float32)}, {"strides": [1 << 20, 1 << 20]},
                    consts=[("w", w)], limit=GB)
    _run_err(sess, {"x": np.ones((1, 1, 3, 3), np.float32)}, ResourceLimit)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels (the pixel data is not there)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_image_decoder_refuses_a_huge_image_from_its_header():
    pytest.importorskip("PIL")
    data = np.frombuffer(_png_header(9000, 9000), np.uint8)   # 243 MB of RGB once decoded
    sess = _session("ImageDecoder", {"x": data}, limit=64 << 20, opset=20)
    _run_err(sess, {"x": data}, ResourceLimit, "max_tensor_bytes")


def test_constant_folding_respects_the_limit():
    """A ConstantOfShape of a constant shape is not folded into a 400 MB constant at session build
    when the session's limit is 64 MB: the run refuses it instead."""
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["s"], ["y"], name="n0")], "g", [],
                              [helper.make_tensor_value_info("y", F32, [100, 1_000_000])],
                              [numpy_helper.from_array(_ints(100, 1_000_000), "s")])
    so = ep_core.SessionOptions()
    so.max_tensor_bytes = 64 << 20
    before = _rss()
    sess = ep_core.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
                                    .SerializeToString(), so, providers=["cpu"])
    assert _rss() - before < 100 << 20
    _run_err(sess, {}, ResourceLimit)
