"""OrtValue and IOBinding: values bound on a device never pass through the host.

Proven on two providers without a GPU: the test provider whose device is a second memory space
(its arrays refuse host reads; its DataTransfer counts copies) and the emulated CUDA provider
(its to_device/to_host are counted). Host-side behaviour is compared with onnxruntime's.
"""
import numpy as np
import onnxruntime as real_ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import ep_core
import ep_core.onnxruntime as ort
from ep_core import errors, ortvalue
from ep_core.provider import Device
from foreign_provider import ForeignArray, ForeignProvider, ForeignTransfer

ep_core.register_provider("foreign", ForeignProvider)

W = np.array([1, -2, 3], np.float32)
# y = relu(x + w); s = shape(x) (a host output on both test providers)
MODEL = helper.make_model(helper.make_graph(
    [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], "g",
    [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
    [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
    initializer=[numpy_helper.from_array(W, "w")]),
    opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
X = np.array([[-5, 1, 2], [3, -9, 4]], np.float32)
WANT = np.maximum(X + W, 0)


@pytest.fixture
def foreign_copies(monkeypatch):
    """Counts every foreign<->host copy (by any ForeignTransfer)."""
    count = {"n": 0}
    orig = ForeignTransfer.copy

    def copy(self, value, dst, stream=None):
        count["n"] += 1
        return orig(self, value, dst, stream)
    monkeypatch.setattr(ForeignTransfer, "copy", copy)
    return count


@pytest.fixture
def emulated(monkeypatch):
    """The emulated CUDA provider as 'cuda_emu', owning OrtValues on cuda:0; counts its copies."""
    from ep_cuda import emulator
    from ep_cuda.testing import EmulatedCUDAProvider, register_emulated
    ok, why = emulator.available()
    if not ok:
        pytest.skip(f"CUDA emulator unavailable: {why}")
    name = register_emulated()
    calls = []
    for fn in ("to_device", "to_host"):
        orig = getattr(EmulatedCUDAProvider, fn)
        monkeypatch.setattr(EmulatedCUDAProvider, fn,
                            (lambda orig, fn: lambda self, *a, **k: (calls.append(fn), orig(self, *a, **k))[1])(orig, fn))
    previous = ortvalue.use_device_provider(EmulatedCUDAProvider())
    yield name, calls
    ortvalue.forget_device_provider(Device("cuda", 0))
    if previous is not None:
        ortvalue.use_device_provider(previous)


# ---- OrtValue --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.int8, np.bool_, np.float64, np.uint16])
def test_ortvalue_metadata_matches_onnxruntime(dtype):
    x = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    a, b = real_ort.OrtValue.ortvalue_from_numpy(x), ort.OrtValue.ortvalue_from_numpy(x)
    for f in ("shape", "data_type", "element_type", "device_name", "is_tensor", "has_value",
              "tensor_size_in_bytes", "is_sparse_tensor", "is_tensor_sequence"):
        assert getattr(a, f)() == getattr(b, f)(), f
    assert b.data_ptr() == x.ctypes.data == a.data_ptr()   # CPU values share the numpy buffer
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_shape_and_type_constructor_and_onnx_types():
    for et in (np.float32, T.FLOAT16, T.INT64):
        a = real_ort.OrtValue.ortvalue_from_shape_and_type([2, 5], et)
        b = ort.OrtValue.ortvalue_from_shape_and_type([2, 5], et)
        assert (a.shape(), a.data_type(), a.element_type()) == (b.shape(), b.data_type(), b.element_type())
    raw = np.array([0x3F80, 0x4000], np.uint16)               # 1.0 and 2.0 as bfloat16
    v = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, T.BFLOAT16)
    assert v.data_type() == "tensor(bfloat16)" and v.numpy().astype(np.float32).tolist() == [1.0, 2.0]
    with pytest.raises(errors.InvalidArgument):
        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, T.FLOAT)


def test_update_inplace_and_array_protocol():
    buf = np.zeros(3, np.float32)
    v = ort.OrtValue.ortvalue_from_numpy(buf)
    v.update_inplace(np.array([1, 2, 3], np.float32))
    assert buf.tolist() == [1, 2, 3] and np.asarray(v).tolist() == [1, 2, 3]
    with pytest.raises(errors.InvalidArgument):
        v.update_inplace(np.zeros(4, np.float32))


def test_dlpack_round_trip_is_zero_copy_on_host():
    x = np.arange(6, dtype=np.float32)
    v = ort.OrtValue.from_dlpack(x)
    assert v.data_ptr() == x.ctypes.data and v.device_name() == "cpu"
    back = np.from_dlpack(v)
    assert back.ctypes.data == x.ctypes.data
    theirs = real_ort.OrtValue.from_dlpack(x)
    assert theirs.data_ptr() == v.data_ptr()


# ---- foreign memory space ---------------------------------------------------------------------
def test_ortvalue_on_foreign_device(foreign_copies):
    v = ort.OrtValue.ortvalue_from_numpy(X, "foreign", 0)
    assert v.device_name() == "foreign" and isinstance(v.value, ForeignArray) and foreign_copies["n"] == 1
    assert v.shape() == [2, 3] and v.data_type() == "tensor(float)"
    np.testing.assert_array_equal(v.numpy(), X)               # one copy back
    assert foreign_copies["n"] == 2
    e = ort.OrtValue.ortvalue_from_shape_and_type([4], np.float32, "foreign", 0)
    assert e.device_name() == "foreign" and e.shape() == [4]


def test_iobinding_device_input_and_output_never_touch_the_host(foreign_copies):
    sess = ort.InferenceSession(MODEL, providers=["foreign", "CPUExecutionProvider"])
    xv = ort.OrtValue.ortvalue_from_numpy(X, "foreign", 0)
    b = sess.io_binding()
    b.bind_ortvalue_input("x", xv)
    b.bind_output("y", "foreign", 0)
    before = foreign_copies["n"]
    for _ in range(3):                                          # a binding is reusable
        sess.run_with_iobinding(b)
    assert foreign_copies["n"] == before                        # no copy at all in three runs
    out = b.get_outputs()[0]
    assert isinstance(out.value, ForeignArray) and out.device_name() == "foreign"
    np.testing.assert_array_equal(b.copy_outputs_to_cpu()[0], WANT)
    assert foreign_copies["n"] == before + 1                    # the one copy asked for


def test_iobinding_host_input_device_output(foreign_copies):
    sess = ort.InferenceSession(MODEL, providers=["foreign", "CPUExecutionProvider"])
    b = sess.io_binding()
    b.bind_cpu_input("x", X)
    b.bind_output("y", "foreign")
    before = foreign_copies["n"]
    sess.run_with_iobinding(b)
    assert foreign_copies["n"] == before + 1                    # the feed's MemcpyFromHost only
    assert isinstance(b.get_outputs()[0].value, ForeignArray)
    b.clear_binding_outputs()
    b.bind_output("y")                                          # cpu by default
    sess.run_with_iobinding(b)
    assert b.get_outputs()[0].device_name() == "cpu"
    np.testing.assert_array_equal(b.get_outputs()[0].numpy(), WANT)


def test_run_with_ort_values_takes_device_feeds_in_place(foreign_copies):
    sess = ort.InferenceSession(MODEL, providers=["foreign", "CPUExecutionProvider"])
    xv = ort.OrtValue.ortvalue_from_numpy(X, "foreign", 0)
    before = foreign_copies["n"]
    out = sess.run_with_ort_values(["y"], {"x": xv})
    assert foreign_copies["n"] == before + 1                    # the fetch's MemcpyToHost only
    assert out[0].device_name() == "cpu"
    np.testing.assert_array_equal(out[0].numpy(), WANT)
    np.testing.assert_array_equal(sess.run(None, {"x": xv})[0], WANT)


def test_device_value_on_a_cpu_only_session_is_copied_once(foreign_copies):
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    b = sess.io_binding()
    b.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(X, "foreign", 0))
    b.bind_output("y")
    before = foreign_copies["n"]
    sess.run_with_iobinding(b)
    assert foreign_copies["n"] == before + 1
    np.testing.assert_array_equal(b.copy_outputs_to_cpu()[0], WANT)


def test_device_feed_checked_without_reading_it():
    sess = ort.InferenceSession(MODEL, providers=["foreign", "CPUExecutionProvider"])
    b = sess.io_binding()
    b.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(X.astype(np.float64).astype(np.float32)[:, :2], "foreign"))
    b.bind_output("y", "foreign")
    with pytest.raises(errors.InvalidArgument, match="dimension 2 at axis 1"):
        sess.run_with_iobinding(b)
    b.clear_binding_outputs()
    with pytest.raises(errors.InvalidArgument, match="no output is bound"):
        sess.run_with_iobinding(b)


# ---- emulated CUDA provider -------------------------------------------------------------------
def test_emulated_cuda_bound_run_has_no_host_round_trip(emulated):
    name, calls = emulated
    sess = ort.InferenceSession(MODEL, providers=[name, "CPUExecutionProvider"])
    assert sess.get_providers()[0] == "CUDAExecutionProvider"
    calls.clear()                                               # the session placed w at build
    xv = ort.OrtValue.ortvalue_from_numpy(X, "cuda", 0)
    assert calls == ["to_device"] and xv.device_name() == "cuda"
    calls.clear()
    b = sess.io_binding()
    b.bind_ortvalue_input("x", xv)
    b.bind_output("y", "cuda", 0)
    sess.run_with_iobinding(b)
    b.synchronize_outputs()
    assert calls == []
    out = b.get_outputs()[0]
    assert out.device_name() == "cuda"
    np.testing.assert_array_equal(b.copy_outputs_to_cpu()[0], WANT)
    assert calls == ["to_host"]
    calls.clear()
    np.testing.assert_array_equal(sess.run(None, {"x": X})[0], WANT)
    assert sorted(calls) == ["to_device", "to_host"]             # plain run: one copy each way


def test_emulated_cuda_buffer_pointers(emulated):
    name, calls = emulated
    sess = ort.InferenceSession(MODEL, providers=[name, "CPUExecutionProvider"])
    xv = ort.OrtValue.ortvalue_from_numpy(X, "cuda", 0)
    yv = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32, "cuda", 0)
    calls.clear()
    b = sess.io_binding()
    b.bind_input("x", "cuda", 0, np.float32, [2, 3], xv.data_ptr())
    b.bind_output("y", "cuda", 0, np.float32, [2, 3], yv.data_ptr())
    b.synchronize_inputs()
    sess.run_with_iobinding(b)
    assert calls == []
    assert b.get_outputs()[0].data_ptr() == yv.data_ptr()       # written into the caller's buffer
    np.testing.assert_array_equal(yv.numpy(), WANT)


def test_emulated_cuda_preallocated_ortvalue_output(emulated):
    name, calls = emulated
    sess = ort.InferenceSession(MODEL, providers=[name, "CPUExecutionProvider"])
    yv = ort.OrtValue.ortvalue_from_shape_and_type([2, 3], np.float32, "cuda", 0)
    ptr = yv.data_ptr()
    b = sess.io_binding()
    b.bind_cpu_input("x", X)
    b.bind_ortvalue_output("y", yv)
    calls.clear()
    sess.run_with_iobinding(b)
    assert calls == ["to_device"]                               # the host feed; the output stays
    assert b.get_outputs()[0] is yv and yv.data_ptr() == ptr
    np.testing.assert_array_equal(yv.numpy(), WANT)
    small = ort.OrtValue.ortvalue_from_shape_and_type([1, 3], np.float32, "cuda", 0)
    b.bind_ortvalue_output("y", small)
    with pytest.raises(errors.InvalidArgument, match="bound buffer"):
        sess.run_with_iobinding(b)


# ---- host IOBinding compared with onnxruntime ---------------------------------------------------
def test_cpu_iobinding_matches_onnxruntime():
    outs = []
    for mod in (real_ort, ort):
        sess = mod.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
        b = sess.io_binding()
        b.bind_cpu_input("x", X)
        b.bind_output("y")
        sess.run_with_iobinding(b)
        outs.append((b.copy_outputs_to_cpu()[0], [o.device_name() for o in b.get_outputs()]))
        yv = mod.OrtValue.ortvalue_from_numpy(np.zeros((2, 3), np.float32))
        b.bind_ortvalue_output("y", yv)
        b.bind_input("x", "cpu", 0, np.float32, [2, 3], mod.OrtValue.ortvalue_from_numpy(X).data_ptr())
        sess.run_with_iobinding(b)
        outs.append((yv.numpy().copy(), [o.device_name() for o in b.get_outputs()]))
    np.testing.assert_array_equal(outs[0][0], outs[2][0])
    np.testing.assert_array_equal(outs[1][0], outs[3][0])
    assert outs[0][1] == outs[2][1] and outs[1][1] == outs[3][1]


# ---- CuPy / PyTorch zero-copy on a real GPU ---------------------------------------------------
@pytest.mark.cuda
def test_cupy_zero_copy_through_dlpack_and_cai():
    from ep_cuda import CUDAExecutionProvider
    ok, why = CUDAExecutionProvider.availability()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
    import cupy
    x = cupy.asarray(X)
    v = ort.OrtValue.from_dlpack(x)
    assert v.device_name() == "cuda" and v.data_ptr() == x.data.ptr
    w = ort.OrtValue.from_cuda_array_interface(x)
    assert w.data_ptr() == x.data.ptr
    sess = ort.InferenceSession(MODEL, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    b = sess.io_binding()
    b.bind_ortvalue_input("x", v)
    b.bind_output("y", "cuda", 0)
    sess.run_with_iobinding(b)
    out = b.get_outputs()[0]
    y = cupy.from_dlpack(out)
    assert y.data.ptr == out.data_ptr() and cupy.asarray(out).data.ptr == out.data_ptr()
    np.testing.assert_allclose(cupy.asnumpy(y), WANT)
    try:
        import torch
    except ImportError:
        return
    t = torch.from_dlpack(out)
    assert t.data_ptr() == out.data_ptr() and t.is_cuda


def test_emulated_cuda_device_array_feed_to_plain_run(emulated):
    """A device array (here the emulator's, which refuses host reads; on a GPU a CuPy array or a
    PyTorch CUDA tensor) given to `run` is used where it lives: no host->device copy for it."""
    name, calls = emulated
    sess = ep_core.InferenceSession(MODEL, providers=[name, "cpu"])
    xv = ort.OrtValue.ortvalue_from_numpy(X, "cuda", 0).value
    calls.clear()
    np.testing.assert_array_equal(sess.run(None, {"x": xv})[0], WANT)
    assert calls == ["to_host"]                                  # only the output comes back
