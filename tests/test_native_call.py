"""`ep_cpu.native_call`: C callbacks called by address from numba code (`call_void`), the
parallel runner over them, and `check_args`, which the argument tuples the real callers build
(GEMM, implicit conv) must pass: a wrong C type there would be read as garbage, not refused."""
from __future__ import annotations

import numpy as np
import pytest

from ep_cpu import gemm_compiled, microkernel, native_call

pytestmark = pytest.mark.skipif(not microkernel.available(),
                                reason="the compiled microkernel needs numba and an AVX-512 CPU")


def test_check_args_refuses_wrong_types_and_counts():
    cb = microkernel.gemm_range()
    ints = tuple(range(11))
    good = ints + (np.float32(0), np.float32(1)) + (0,) * 6
    native_call.check_args(cb, good)
    with pytest.raises(TypeError, match="argument 11"):
        native_call.check_args(cb, ints + (0.0, np.float32(1)) + (0,) * 6)   # a Python float
    with pytest.raises(TypeError, match="argument 0"):
        native_call.check_args(cb, (np.float32(0),) + good[1:])
    with pytest.raises(TypeError, match="arguments"):
        native_call.check_args(cb, good[:-1])


@pytest.mark.parametrize("by_columns", [True, False])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_run_parts_calls_every_range_once(by_columns, parts):
    """The parallel runner over the GEMM callback gives the product whatever the split."""
    rng = np.random.default_rng(parts)
    a = rng.standard_normal((37, 70)).astype(np.float32)
    b = rng.standard_normal((70, 101)).astype(np.float32)
    bp = gemm_compiled.pack(b)
    y = np.zeros((37, 101), np.float32)
    zeros = np.zeros(101, np.float32)
    mr = microkernel.choose_mr(37)
    args = (a.ctypes.data, 37, 70, bp.ctypes.data, bp.shape[0], 101, mr, zeros.ctypes.data, 0,
            y.ctypes.data, 0, np.float32(-np.inf), np.float32(np.inf), microkernel.EPILOGUE,
            y.ctypes.data)
    native_call.check_args(microkernel.gemm_range(), args + (0, 1, 0, 1))
    native_call.run_parts(microkernel.gemm_range().address, args, bp.shape[0], -(-37 // mr), parts,
                          by_columns)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)


def test_callers_build_arguments_of_the_callbacks_types(monkeypatch):
    """gemm_compiled.matmul and conv_implicit.conv2d hand run_ranges tuples that match the C
    signatures (checked here, as call_void cannot)."""
    from ep_cpu import conv_implicit
    seen = []
    real = microkernel.run_ranges

    def checking(callback, args, cols, rows, workers, by_columns, pool):
        native_call.check_args(callback, tuple(args) + (0, cols, 0, rows))
        seen.append(callback)
        return real(callback, args, cols, rows, workers, by_columns, pool)

    monkeypatch.setattr(microkernel, "run_ranges", checking)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    y = np.empty((20, 40), np.float32)
    gemm_compiled.matmul(a, gemm_compiled.pack(b), 40, rng.standard_normal(40).astype(np.float32),
                         None, (0.0, 6.0), y, 1, None)
    x = rng.standard_normal((1, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    conv_implicit.conv2d(x, conv_implicit.pack_weight(w), 8, (3, 3), (1, 1), (1, 1), (1, 1), (1, 1),
                         (9, 9), None, None, None, 1, None)
    assert seen == [microkernel.gemm_range(), microkernel.conv_range()]
