"""The compiled Sigmoid/SiLU/Gelu/Tanh of `ep_cpu.vector_math` (vectorized exp in LLVM IR) against
float64 references, with NaN/inf, signed zeros, tails shorter than a vector, and the numpy
fallback for layouts it does not take."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from ep_cpu import vector_math as vm
from ep_cpu.gemm_epilogue import ACTIVATIONS, sigmoid

pytestmark = pytest.mark.skipif(not vm.available(), reason="needs numba and an AVX-512 CPU")

REFS = {
    "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Silu": lambda x: x / (1 + np.exp(-x)),
    "Gelu": lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
    "Tanh": np.tanh,
}


@pytest.mark.parametrize("size", [vm.FAST_MIN, vm.FAST_MIN + 7, 100_003])
@pytest.mark.parametrize("name", sorted(REFS))
def test_matches_float64(name, size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 8).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, -100.0]
    y = x.copy()
    assert vm.apply(y, name)
    with np.errstate(all="ignore"):
        ref = REFS[name](x.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=2e-6, atol=5e-7)


def test_not_taken_where_it_does_not_apply():
    x = np.ones((200, 200), np.float32)
    assert not vm.apply(x[:, ::2], "Silu")          # strided
    assert not vm.apply(x.astype(np.float64), "Silu")
    assert not vm.apply(np.ones(16, np.float32), "Silu")   # below FAST_MIN
    assert not vm.apply(x, "Relu")


def test_tanh_relative_error_near_zero_and_at_the_switch():
    # the Taylor branch below |x| = 0.3 and the exp branch above: relative error, not only absolute
    x = np.concatenate([np.geomspace(1e-30, 20, 20000), [0.2999999, 0.3, 0.3000001]]).astype(np.float32)
    x = np.concatenate([x, -x])
    y = x.copy()
    assert vm.apply(y, "Tanh")
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), rtol=4e-7, atol=0)


@pytest.mark.parametrize("name", ["Sigmoid", "Silu", "Gelu"])
def test_activation_table_uses_it_and_falls_back(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    expect = REFS[name](x.astype(np.float64))
    whole = x.copy()
    ACTIVATIONS[name](whole, {})
    strided = x.copy().T     # not C-contiguous: the numpy passes
    ACTIVATIONS[name](strided, {})
    np.testing.assert_allclose(whole, expect, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(strided.T, expect, rtol=1e-5, atol=1e-6)


def test_sigmoid_into_strided_out():
    x = np.random.default_rng(1).standard_normal((8, 4096)).astype(np.float32)
    out = np.empty((8, 8192), np.float32)[:, ::2]
    assert sigmoid(x, out=out) is out
    np.testing.assert_allclose(out, REFS["Sigmoid"](x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    y = sigmoid(x)
    assert y is not x and y.dtype == np.float32
    np.testing.assert_allclose(y, REFS["Sigmoid"](x.astype(np.float64)), rtol=2e-6, atol=1e-6)
