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


@pytest.mark.parametrize("n", [1, 16, 37, 128])
def test_softmax_rows_match_float64(n):
    """`softmax_last_axis`: rows of any length (tails through the pad) against float64; a row
    of -inf is NaN (0 / 0, as the ONNX reference) or, with empty_zero, zeros (attention's masked
    rows); a NaN makes its row NaN; +inf takes the whole row's weight (NaN there, 0 elsewhere)."""
    from ep_cpu import jit_tier
    assert jit_tier.ready("softmax", vm.compile_softmax)
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((9, n)) * 6).astype(np.float32)
    x[1, -1] = -1e4                     # far below exp's range: exactly 0
    y = x.copy()
    assert vm.softmax_last_axis(y)
    ref = np.exp(x - x.max(axis=1, keepdims=True).astype(np.float64))
    np.testing.assert_allclose(y, ref / ref.sum(axis=1, keepdims=True), rtol=3e-6, atol=1e-12)
    edge = np.zeros((4, n), np.float32)
    edge[0] = -np.inf
    edge[1, 0], edge[2, 0], edge[3] = np.nan, np.inf, 1.0
    for empty_zero in (False, True):
        e = edge.copy()
        assert vm.softmax_last_axis(e, empty_zero)
        assert (e[0] == 0).all() if empty_zero else np.isnan(e[0]).all()
        assert np.isnan(e[1]).all()
        assert np.isnan(e[2, 0]) and (e[2, 1:] == 0).all()
        np.testing.assert_allclose(e[3], 1.0 / n, rtol=1e-6)
    assert not vm.softmax_last_axis(x.astype(np.float64))
    assert not vm.softmax_last_axis(np.asfortranarray(x)) or n == 1
