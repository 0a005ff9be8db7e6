"""The CUDA provider inside sessions: placement, copy insertion with host-memory inputs/outputs,
fallback, fused groups (tests taking `provider` run on the CPU emulator's provider, `emu`, and on
a GPU, `gpu`); provider options, arena, transfers and streams (GPU only, marked `cuda`). GPU tests
skip without a usable GPU, and fail instead under EP_REQUIRE_GPU=1."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_cuda import CUDAExecutionProvider
from ep_cuda.testing import backends, require_gpu, session_provider

F = TensorProto.FLOAT


@pytest.fixture(params=backends())
def provider(request):
    """'cuda' on a GPU, the emulated CUDA provider's name on the emulator."""
    return session_provider(request.param)


@pytest.fixture
def gpu():
    require_gpu()


def model(nodes, inputs, outputs, inits=(), opset=17):
    """Value infos as (name, elem_type, shape); the checker needs a shape (None dims allowed)."""
    vi = lambda n, t, s: helper.make_tensor_value_info(n, t, s)  # noqa: E731
    g = helper.make_graph(nodes, "m", [vi(*i) for i in inputs], [vi(*o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, n) for n, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def both(m, feeds, provider="cuda", **kw):
    ours = ep_core.InferenceSession(m, providers=[provider, "cpu"], **kw)
    cpu = ep_core.InferenceSession(m, providers=["cpu"])
    return ours, ours.run(None, feeds), cpu.run(None, feeds)


def mlp():
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1),
             helper.make_node("Shape", ["z"], ["s"]),
             helper.make_node("Reshape", ["z", "s"], ["z2"])]
    return model(nodes, [("x", F, [None, 8])], [("y", F, [None, 4]), ("s", TensorProto.INT64, [2]),
                                                ("z2", F, [None, 4])],
                 [("w1", w1), ("b1", b1), ("w2", w2)])


def test_mlp_matches_cpu_and_runs_on_gpu(provider):
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    sess, got, want = both(mlp(), {"x": x}, provider)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    placement = sess.get_placement()
    where = {op: p for _, op, p in placement["nodes"] if not op.startswith("Memcpy")}
    assert where["MatMul"] == "cuda" and where["Softmax"] == "cuda" and where["Shape"] == "cuda"
    assert placement["copy_nodes"] >= 2  # feed to the device, fetches back (Shape's output is host)


def test_conv_model_fp16(provider):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    m = model(nodes, [("x", TensorProto.FLOAT16, [1, 3, 8, 8])], [("y", TensorProto.FLOAT16, [1, 4, 1, 1])],
              [("w", w)])
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float16)
    _, got, want = both(m, {"x": x}, provider)
    np.testing.assert_allclose(got[0].astype(np.float32), want[0].astype(np.float32), rtol=2e-2, atol=2e-2)


def test_unsupported_dtype_falls_back_to_cpu(provider):
    m = model([helper.make_node("Relu", ["x"], ["y"])], [("x", TensorProto.DOUBLE, [3])],
              [("y", TensorProto.DOUBLE, [3])])
    sess, got, want = both(m, {"x": np.array([-1.0, 0.5, 2.0])}, provider)
    assert [p for _, _, p in sess.get_placement()["nodes"]] == ["cpu"]
    np.testing.assert_array_equal(got[0], want[0])


def test_host_inputs_from_device_producers(provider):
    # Slice's starts come from a device computation: the session must copy them to the host.
    nodes = [helper.make_node("Abs", ["st"], ["st_abs"]),
             helper.make_node("Slice", ["x", "st_abs", "en"], ["y"])]
    m = model(nodes, [("x", F, [6, 4]), ("st", TensorProto.INT64, [1])], [("y", F, [None, 4])],
              [("en", np.array([5], np.int64))])
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    _, got, want = both(m, {"x": x, "st": np.array([-2], np.int64)}, provider)
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("strategy", ["kNextPowerOfTwo", "kSameAsRequested"])
@pytest.mark.cuda
def test_provider_options_and_arena(strategy, gpu):
    ep = CUDAExecutionProvider(device_id=0, gpu_mem_limit=str(256 << 20), arena_extend_strategy=strategy,
                               do_copy_in_default_stream="0", use_tf32=0)
    assert ep.allocator.strategy == strategy and ep.allocator.limit == 256 << 20
    a = ep.get_allocator().empty((1000,), np.float32)
    assert a.nbytes == 4000 and ep.allocator.used_bytes() >= 4000
    if strategy == "kNextPowerOfTwo":
        assert ep.allocator.round(4000) == 4096
    del a
    ep.on_run_end()
    ep.allocator.release_unused()
    assert ep.allocator.total_bytes() == 0


@pytest.mark.cuda
def test_memory_limit_is_enforced(gpu):
    ep = CUDAExecutionProvider(gpu_mem_limit=1 << 20)
    with pytest.raises(Exception):
        ep.get_allocator().empty((1 << 20,), np.float32)  # 4 MiB > 1 MiB


@pytest.mark.cuda
def test_bad_options(gpu):
    with pytest.raises(ep_core.errors.InvalidArgument):
        CUDAExecutionProvider(device_id=999)
    with pytest.raises(ep_core.errors.InvalidArgument):
        CUDAExecutionProvider(arena_extend_strategy="kBogus")


@pytest.mark.parametrize("copy_default", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.bool_, np.uint8, np.float64])
@pytest.mark.cuda
def test_data_transfer_roundtrip(copy_default, dtype, gpu):
    import cupy
    ep = CUDAExecutionProvider(do_copy_in_default_stream=copy_default)
    t = ep.get_data_transfer()
    from ep_core.provider import HOST
    assert t.can_copy(HOST, ep.device) and t.can_copy(ep.device, HOST)
    x = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    for src in (x, x[:, ::2, 1:], np.zeros((0, 3), dtype)):
        d = t.copy(src, ep.device)
        assert isinstance(d, cupy.ndarray) and d.shape == src.shape
        back = t.copy(d, HOST)
        assert isinstance(back, np.ndarray)
        np.testing.assert_array_equal(back, src)
    view = t.copy(x, ep.device)[:, ::-1, ::2]   # non-contiguous device value back to the host
    np.testing.assert_array_equal(t.copy(view, HOST), x[:, ::-1, ::2])


@pytest.mark.cuda
def test_arena_shrink_on_run_end(gpu):
    ep = CUDAExecutionProvider()
    buf = ep.get_allocator().empty((1 << 18,), np.float32)
    del buf
    assert ep.allocator.total_bytes() > 0
    opts = ep_core.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0;gpu:0")
    ep.on_run_end(opts)
    assert ep.allocator.total_bytes() == 0


@pytest.mark.cuda
def test_kernels_run_on_provider_stream(gpu):
    import cupy
    ep = CUDAExecutionProvider()
    with ep.scope():
        assert cupy.cuda.get_current_stream().ptr == ep.stream.ptr
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"])]
    m = model(nodes, [("x", F, [64, 64])], [("y", F, [64, 64])])
    _, got, want = both(m, {"x": x})
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)


def test_repeated_runs_are_stable(provider):
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    sess = ep_core.InferenceSession(mlp(), providers=[provider, "cpu"])
    first = sess.run(None, {"x": x})
    for _ in range(3):
        for a, b in zip(first, sess.run(None, {"x": x})):
            np.testing.assert_array_equal(a, b)


def test_optimized_graph_with_fusions_stays_on_gpu(provider):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["y"])]
    m = model(nodes, [("x", F, [1, 3, 6, 6])], [("y", F, [1, 8, 6, 6])], [("w", w), ("b", b)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    sess, got, want = both(m, {"x": x}, provider)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    compute = [(op, p) for _, op, p in sess.get_placement()["nodes"] if not op.startswith("Memcpy")]
    assert all(p == "cuda" for _, p in compute), compute


@pytest.mark.cuda
def test_user_device_arrays_are_adopted_in_order(gpu):
    """Issue 13 bug 6 on a GPU: a CuPy array still being written on the legacy default stream,
    and a DLPack producer, are used in place after the caller's work completes."""
    import cupy
    ep = CUDAExecutionProvider()
    with cupy.cuda.Stream.null:
        x = cupy.arange(1 << 22, dtype=cupy.float32)
        x *= 2                                   # still in flight on the default stream
    d = ep.to_device(x)
    assert d is x
    np.testing.assert_array_equal(ep.to_host(d[-3:]), (np.arange((1 << 22) - 3, 1 << 22) * 2).astype(np.float32))

    class DLPackOnly:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None):
            return self.a.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()
    y = ep.to_device(DLPackOnly(cupy.ones(5, cupy.float32)))
    assert isinstance(y, cupy.ndarray) and ep.to_host(y).tolist() == [1.0] * 5


def test_session_kernels_see_their_constant_weights(monkeypatch):
    """Kernels learn constness from their context only (issue 12): the Conv of a session must
    see its initializer weight as constant (it then keeps the re-laid-out weights)."""
    from ep_cuda.kernels.conv import Conv
    seen = []
    init = Conv.__init__

    def spy(self, node, ctx):
        init(self, node, ctx)
        seen.append(ctx.is_constant(1))
    monkeypatch.setattr(Conv, "__init__", spy)
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", F, [1, 3, 5, 5])],
              [("y", F, [1, 4, 3, 3])], [("w", w)])
    x = np.random.default_rng(1).standard_normal((1, 3, 5, 5)).astype(np.float32)
    _, got, want = both(m, {"x": x}, session_provider("emu"))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert seen == [True]
