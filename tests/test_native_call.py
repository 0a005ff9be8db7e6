"""`ep_cpu.native_call`: range callbacks with packed arguments, called by address from numba
code (`call_void`), the parallel runner over them, and `check_args`, which the argument arrays
the real callers build (GEMM, implicit conv, thin conv, depthwise) must pass: a wrong count
would be read as garbage, not refused."""
from __future__ import annotations

import numpy as np
import pytest

from ep_cpu import gemm_compiled, microkernel, native_call, tile_shapes

pytestmark = pytest.mark.skipif(not microkernel.available(),
                                reason="the compiled microkernel needs numba and an AVX-512 CPU")


def test_pack_is_exact_for_addresses_sizes_and_float32_bounds():
    big = (1 << 52) + 12345           # addresses and sizes stay below 2^53
    args = native_call.pack(big, 7, True, -np.inf, np.float32(0.1), 6.0)
    assert args.dtype == np.float64 and int(args[0]) == big and args[2] == 1.0
    assert np.float32(args[4]) == np.float32(0.1) and np.isneginf(args[3])


def test_check_args_refuses_wrong_counts_and_types():
    cb = microkernel.gemm_range()
    native_call.check_args(cb, native_call.pack(*range(len(microkernel.GEMM_ARGS))))
    with pytest.raises(TypeError, match=f"reads {len(microkernel.GEMM_ARGS)}"):
        native_call.check_args(cb, native_call.pack(*range(14)))
    with pytest.raises(TypeError, match="float64"):
        native_call.check_args(cb, np.arange(15))


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
    mr = tile_shapes.choose_mr(37)
    args = native_call.pack(a.ctypes.data, 37, 70, bp.ctypes.data, bp.shape[0], 101, mr,
                            zeros.ctypes.data, 0, y.ctypes.data, 0, -np.inf, np.inf,
                            microkernel.EPILOGUE, y.ctypes.data, 0, 0, 0, 0)
    native_call.check_args(microkernel.gemm_range(), args)
    native_call.run_parts(microkernel.gemm_range().address, args.ctypes.data, bp.shape[0],
                          -(-37 // mr), parts, by_columns)
    np.testing.assert_allclose(y, a @ b, rtol=1e-5, atol=1e-4)


def test_callers_build_arguments_the_callbacks_read(monkeypatch):
    """gemm_compiled.matmul, conv_implicit.conv2d, conv_thin.conv, depthwise_padded and
    depthwise_direct hand run_ranges packed arguments of the count their callback reads."""
    from ep_cpu import conv_implicit, conv_thin, depthwise_direct, depthwise_padded
    from ep_cpu.kernels.conv import _tap_offsets
    seen = []
    real = native_call.run_ranges

    def checking(callback, args, cols, rows, workers, by_columns, pool):
        native_call.check_args(callback, args)
        seen.append(callback)
        return real(callback, args, cols, rows, workers, by_columns, pool)

    monkeypatch.setattr(native_call, "run_ranges", checking)
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
    offs = _tap_offsets((9, 9), (3, 3), (4, 4), (1, 1), (0, 0), (2, 2))
    # (two images: one image on one thread calls the callback from compiled code, `_one_image`)
    conv_thin.conv(np.concatenate([x, x]), conv_thin.PackedWeight(w), offs, None, None,
                   (-np.inf, np.inf), (2, 2))
    depthwise_padded.depthwise_2d(x, w[:3, :1], (1, 1), (1, 1), (9, 9), None, None, 1, None)
    depthwise_direct.depthwise_2d(x, w[:3, :1], (1, 1), (1, 1), (1, 1), (9, 9), None, None, 1, None)
    depthwise_direct.max_pool_2d(x, (3, 3), (2, 2), (1, 1), (1, 1), (5, 5), 1, None)
    assert seen == [microkernel.gemm_range(), microkernel.conv_range(), conv_thin.thin_conv(),
                    conv_thin.thin_conv(), depthwise_padded.padded_range(),
                    depthwise_direct.depthwise_range(), depthwise_direct.depthwise_range(True)]
