"""Every kernel instantiation ep_cuda declares is launched by some emulator test (issue 13): the
CUDA kernel tests run again in a subprocess with launch logging (ep_cuda.kernel_coverage), and
any declared (file, name expression) never launched fails this test, named. Each must get a test
or leave its `loader.declare`."""
import pytest

from ep_cuda import emulator, kernel_coverage


@pytest.mark.skipif(not emulator.available()[0], reason="no C++ compiler for the emulator")
def test_every_declared_kernel_instantiation_is_launched():
    seen, status, tail = kernel_coverage.launched_by([*kernel_coverage.test_files(),
                                                      *kernel_coverage.DEFAULT_ARGS])
    assert status == 0, f"the emulator tests failed:\n{tail}"
    missing = kernel_coverage.unlaunched(seen)
    listed = "\n".join(f"  {f}.cu  {e}" for f, es in missing.items() for e in es)
    assert not missing, f"declared but never launched by an emulator test:\n{listed}"
