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
