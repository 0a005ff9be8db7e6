"""The emulator's device memory has CuPy's host boundary (issue 13, blind spot: "emulated device
arrays must refuse host reads"): a kernel that reads device data on the host without declaring a
host-memory input fails without a GPU, as tests/foreign_provider.py does for the core."""
import numpy as np
import pytest

from ep_cuda import emulator
from ep_cuda.emulator import EmuArray
from ep_cuda.launch import host_ints, host_scalar, to_host
from ep_cuda.testing import make_model, node_of, run_cuda

pytestmark = pytest.mark.skipif(not emulator.available()[0], reason="no C++ compiler for the emulator")


def test_device_arrays_refuse_host_reads():
    d = EmuArray(np.arange(6, dtype=np.int64).reshape(2, 3))
    for read in (np.asarray, lambda a: np.add(a, 1), lambda a: np.concatenate([a]), list, int,
                 lambda a: a.tolist(), lambda a: a + 1):
        with pytest.raises(TypeError):
            read(d)
    assert d.T.shape == (3, 2) and d.reshape(-1)[1:].shape == (5,)   # views stay on the device
    np.testing.assert_array_equal(d.get(), np.arange(6).reshape(2, 3))   # the explicit copy
    np.testing.assert_array_equal(to_host(d), np.arange(6).reshape(2, 3))


class _CupyLike:
    """Stands for a cupy.ndarray: `.get()` would copy it to the host."""
    def get(self):
        return np.array([2, 3])


@pytest.mark.parametrize("value", [EmuArray(np.array([2, 3])), _CupyLike()], ids=["emu", "cupy"])
def test_host_helpers_do_not_fetch_device_arrays(value):
    with pytest.raises(TypeError, match="host_inputs"):
        host_ints(value)
    with pytest.raises(TypeError, match="host_inputs"):
        host_scalar(value)
    assert host_ints(np.array([2, 3])) == [2, 3] and host_scalar(np.float32(1.5)) == 1.5


def test_missing_host_declaration_fails_in_the_emulator():
    # Reshape declares its shape input host_inputs=(1,): handed a device array instead (what a
    # kernel without the declaration would get), it must fail instead of reading it back.
    x, shape = np.arange(6, dtype=np.float32), np.array([2, 3], np.int64)
    node = node_of(make_model("Reshape", [x, shape], consts=[1]))
    np.testing.assert_array_equal(run_cuda(node, [x, shape])[0], x.reshape(2, 3))
    from ep_cuda.testing import cuda_kernel_def
    kdef = cuda_kernel_def(node)
    with emulator.enabled(), pytest.raises(TypeError, match="device array"):
        kdef.factory(node, None).compute(EmuArray(x.copy()), EmuArray(shape.copy()))


def test_host_array_passed_as_device_pointer_is_refused():
    from ep_cuda.launch import launch, i64, storage, strided
    with emulator.enabled(), pytest.raises(TypeError, match="host numpy array"):
        src = np.zeros(4, np.float32)
        dst = emulator._NumpyDevice.empty((4,), np.float32)
        launch("tensor", f"copy_strided<{storage(np.float32)}>", 4,
               (src, dst, i64(4), strided([4], [[1], [1]])))
