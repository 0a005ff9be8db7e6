"""CUDA provider logic that needs a GPU to run for real, checked here with stand-ins for CuPy's
streams, pools and arrays (no GPU): stream ordering of user device arrays (issue 13 bug 6),
pinned staging buffers under concurrent runs (bug 7), FusedGemm not mutating shared state
(bug 7), arena helpers acting on the provider's own device (bug 8)."""
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from ep_cuda.provider import CUDAExecutionProvider, CudaAllocator


class FakeEvent:
    def __init__(self, stream):
        self.stream = stream


class FakeStream:
    def __init__(self, ptr):
        self.ptr, self.waited, self.synced = ptr, [], 0

    def record(self):
        return FakeEvent(self)

    def wait_event(self, ev):
        self.waited.append(ev.stream.ptr)

    def synchronize(self):
        self.synced += 1


class FakeCupyArray:
    def __init__(self, device=0, shape=(3,)):
        self.device = SimpleNamespace(id=device)
        self.shape, self.dtype = shape, np.dtype(np.float32)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<f4", "data": (1234, False), "version": 3}


class FakeDevice:
    current = [0]

    def __init__(self, index=None):
        self.index = self.current[0] if index is None else index
        self.id = self.index

    def __enter__(self):
        self.saved = self.current[0]
        self.current[0] = self.index
        return self

    def __exit__(self, *exc):
        self.current[0] = self.saved


def fake_cupy(current_stream):
    calls = []
    cuda = SimpleNamespace(get_current_stream=lambda: current_stream[0], Device=FakeDevice)

    def from_dlpack(obj):
        calls.append(("from_dlpack", current_stream[0].ptr))
        return FakeCupyArray()

    def asarray(obj):
        calls.append(("asarray", current_stream[0].ptr))
        return FakeCupyArray()

    return SimpleNamespace(ndarray=FakeCupyArray, cuda=cuda, from_dlpack=from_dlpack,
                           asarray=asarray, array=lambda a, copy=True: FakeCupyArray(), calls=calls)


@pytest.fixture
def fake(monkeypatch):
    """A provider on device 0 whose stream is FakeStream(7); the caller's current stream is the
    legacy default stream (ptr 0) until scope() makes ours current."""
    current = [FakeStream(0)]
    cp = fake_cupy(current)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    ep = object.__new__(CUDAExecutionProvider)
    ep.device_id, ep.stream = 0, FakeStream(7)
    ep.copy_stream = ep.stream

    import contextlib

    @contextlib.contextmanager
    def scope():
        saved = current[0]
        current[0] = ep.stream
        try:
            yield
        finally:
            current[0] = saved
    ep.scope = scope
    return SimpleNamespace(ep=ep, cp=cp, current=current)


def test_user_cupy_array_is_ordered_after_the_callers_stream(fake):
    x = FakeCupyArray()
    assert fake.ep.to_device(x) is x
    assert fake.ep.stream.waited == [0], "our non-blocking stream must wait for the caller's work"


def test_same_stream_needs_no_wait(fake):
    fake.current[0] = fake.ep.stream
    fake.ep.to_device(FakeCupyArray())
    assert fake.ep.stream.waited == []


def test_dlpack_and_cuda_array_interface_inputs_are_accepted(fake):
    class Torchish:   # a CUDA tensor seen through DLPack only
        def __dlpack__(self, stream=None):
            raise AssertionError("consumed through cupy.from_dlpack")

        def __dlpack_device__(self):
            return (2, 0)   # kDLCUDA, device 0

    class Numbaish:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (1, False), "version": 3}

    out1, out2 = fake.ep.to_device(Torchish()), fake.ep.to_device(Numbaish())
    assert isinstance(out1, FakeCupyArray) and isinstance(out2, FakeCupyArray)
    # imported while our stream is current: DLPack's producer orders its stream with ours
    assert fake.cp.calls == [("from_dlpack", 7), ("asarray", 7)]
    assert fake.ep.stream.waited == [0, 0]


def test_sync_keeps_staging_buffers_another_run_appends_meanwhile(fake):
    """Bug 7: sync() synchronizes, then clears the staging list; a buffer another thread's run
    staged after the synchronize started belongs to a copy still in flight and must be kept."""
    ep = fake.ep
    ep._staging, ep._staging_lock = ["mine"], threading.Lock()

    class Racing(FakeStream):
        def synchronize(self):
            ep._staging.append("other run's buffer")   # appended while we wait

    ep.stream = ep.copy_stream = Racing(7)
    ep.sync()
    assert ep._staging == ["other run's buffer"]


def _gemm_group():
    from onnx import TensorProto, helper

    from ep_core.graph import graph_from_proto
    from ep_cuda.fusion import Analysis, plan_gemm_groups
    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Gemm", ["a", "b"], ["g"], beta=0.5), helper.make_node("Add", ["g", "r"], ["y"])],
        "g", [helper.make_tensor_value_info(n, f, s) for n, s in (("a", [2, 3]), ("b", [3, 4]), ("r", [2, 4]))],
        [helper.make_tensor_value_info("y", f, [2, 4])])
    import onnx
    m = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    graph = graph_from_proto(m.graph, {"": 17})
    an = Analysis(graph)
    (group,) = plan_gemm_groups(an, graph.nodes, set())
    return group


def test_fused_gemm_run_does_not_mutate_the_kernel():
    """Bug 7: FusedGemm.run set the shared Gemm kernel's beta to 1 during a call, so a concurrent
    run of the same node could compute with the wrong beta."""
    from ep_cuda.compiled import FusedGemm
    fg = FusedGemm(None, _gemm_group())
    seen = []

    def spy(a, b, c=None, act=-1, p0=0.0, p1=0.0, r=None, beta=None):
        seen.append((fg.gemm.beta, beta, c))
        return "y"

    fg.gemm.gemm = spy
    assert fg.run("A", "B", "R") == ("y",)
    assert seen == [(0.5, 1.0, "R")], seen   # beta of the add passed per call; kernel untouched


def test_arena_helpers_act_on_the_providers_device(fake):
    """Bug 8: cupy.cuda.MemoryPool's free_all_blocks/used_bytes/total_bytes act on the *current*
    device's pool; a provider on device 1 must enter its device first."""
    from ep_core.provider import Device
    seen = []

    class Pool:
        def free_all_blocks(self):
            seen.append(("free", FakeDevice.current[0]))

        def used_bytes(self):
            seen.append(("used", FakeDevice.current[0]))
            return 0

        def total_bytes(self):
            seen.append(("total", FakeDevice.current[0]))
            return 0

    alloc = object.__new__(CudaAllocator)
    alloc.device, alloc.pool = Device("cuda", 1), Pool()
    FakeDevice.current[0] = 0
    alloc.release_unused()
    alloc.used_bytes()
    alloc.total_bytes()
    assert seen == [("free", 1), ("used", 1), ("total", 1)]
    assert FakeDevice.current[0] == 0   # the caller's device is restored
