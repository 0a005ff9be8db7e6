"""The compiled GEMM (`ep_cpu.gemm_compiled` through `ep_cpu.gemm.gemm` with a packed constant B)
against numpy in float64: tile edges (rows 8/12 and last row panels of 4 or 8, columns 32, k
blocks of 256), fused epilogues
(bias per column, residual, Relu/Clip, Sigmoid/Silu/Gelu/Tanh on each tile) and the ones that
run as a pass after (alpha, other bias shapes), thread splits by columns and by rows, `out=`, leading axes of A."""
from __future__ import annotations

import numpy as np
import pytest
from compiled_threads import threads_via

from ep_cpu import gemm as G
from ep_cpu import gemm_compiled, microkernel

pytestmark = pytest.mark.skipif(not microkernel.available(),
                                reason="the compiled microkernel needs numba and an AVX2 or AVX-512 CPU")


@pytest.fixture(autouse=True)
def _tiles_over_blas(monkeypatch):
    """The GEMM goes through the tiles on AVX2 CPUs too (there BLAS is the faster route by
    default, `microkernel.beats_blas`), so these kernels are checked on every CPU they run on."""
    monkeypatch.setattr(microkernel, "beats_blas", lambda: True)

# (M, K, N); the last row panel of 12-row tiles is a 4- or 8-row tile where M leaves 4 or 8
# rows (128, 200, 40: run with the others), else a scratch tile (13, 37, 45); K = 3000 runs
# in k blocks
SHAPES = [(4, 16, 16), (13, 300, 70), (128, 768, 96), (37, 20, 33), (200, 513, 64), (24, 1000, 1),
          (40, 3000, 40), (45, 3000, 33)]



class _Calls(list):
    """The A shapes of the compiled GEMM's calls; `.activations`: each call's tile activation."""


@pytest.fixture
def compiled_calls(monkeypatch):
    calls = _Calls()
    real = gemm_compiled.matmul

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        activations.append(args[9] if len(args) > 9 else kwargs.get("activation", (0, 0)))
        return real(*args, **kwargs)

    activations = calls.activations = []

    monkeypatch.setattr(gemm_compiled, "matmul", counting)
    return calls


def _ref(a, b, bias=None, residual=None, act=None, alpha=1.0, beta=1.0, params=None):
    y = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if bias is not None:
        y = y + beta * bias
    if residual is not None:
        y = y + residual
    if act == "Relu":
        y = np.maximum(y, 0)
    elif act == "Clip":
        y = np.clip(y, params["min"], params["max"])
    elif act == "Gelu":
        from scipy.special import erf
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    elif act == "Sigmoid":
        y = 1 / (1 + np.exp(-y))
    elif act == "Silu":
        y = y / (1 + np.exp(-y))
    elif act == "Tanh":
        y = np.tanh(y)
    return y


@pytest.mark.parametrize("split", ["one_thread", "columns", "rows", "columns_pool", "rows_pool"])
@pytest.mark.parametrize("epilogue", ["none", "bias", "bias_residual_relu", "clip", "column_bias",
                                      "alpha_beta", "gelu", "bias_gelu", "bias_residual_sigmoid",
                                      "silu", "tanh", "alpha_gelu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_product(monkeypatch, compiled_calls, shape, epilogue, split):
    split = threads_via(monkeypatch, split)
    m, k, n = shape
    rng = np.random.default_rng(m * k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    packed = G.pack_b(b, copy=False)
    kw, ref_kw = {}, {}
    if epilogue in ("bias", "bias_residual_relu", "alpha_beta"):
        kw["bias"] = ref_kw["bias"] = rng.standard_normal(n).astype(np.float32)
    if epilogue == "bias_residual_relu":
        kw["residual"] = ref_kw["residual"] = rng.standard_normal((m, n)).astype(np.float32)
        kw["activation"] = ref_kw["act"] = "Relu"
    if epilogue == "clip":
        kw["activation"] = ref_kw["act"] = "Clip"
        kw["activation_params"] = ref_kw["params"] = {"min": -0.5, "max": 1.0}
    if epilogue == "column_bias":   # (M, 1): not fused, a pass after
        kw["bias"] = ref_kw["bias"] = rng.standard_normal((m, 1)).astype(np.float32)
    if epilogue == "alpha_beta":
        kw["alpha"], kw["beta"] = ref_kw["alpha"], ref_kw["beta"] = 0.5, 2.0
    if epilogue in ("gelu", "bias_gelu", "alpha_gelu"):
        kw["activation"] = ref_kw["act"] = "Gelu"
    if epilogue == "bias_gelu":
        kw["bias"] = ref_kw["bias"] = rng.standard_normal(n).astype(np.float32)
    if epilogue == "alpha_gelu":   # alpha: the activation runs as a pass after the product
        kw["alpha"] = ref_kw["alpha"] = 0.5
    if epilogue == "bias_residual_sigmoid":
        kw["bias"] = ref_kw["bias"] = rng.standard_normal(n).astype(np.float32)
        kw["residual"] = ref_kw["residual"] = rng.standard_normal((m, n)).astype(np.float32)
        kw["activation"] = ref_kw["act"] = "Sigmoid"
    if epilogue in ("silu", "tanh"):
        kw["activation"] = ref_kw["act"] = epilogue.capitalize()
    if split != "one_thread":
        monkeypatch.setattr(gemm_compiled, "PAR_MIN_PANELS", 1)
        monkeypatch.setattr(gemm_compiled, "PAR_MIN_MACS", 0)
    threads = 1 if split == "one_thread" else 2
    if split == "rows":
        # few column panels: threads split the row panels (the n <= 32 shapes); into `out=`
        monkeypatch.setattr(gemm_compiled, "PAR_MIN_PANELS", 1)
        monkeypatch.setattr(gemm_compiled, "PAR_MIN_MACS", 0)
        y = np.empty((m, n), np.float32)
        assert G.gemm(a, packed, num_threads=threads, out=y, **kw) is not None
    else:
        y = G.gemm(a, packed, num_threads=threads, **kw)
    expect = _ref(a, b, **ref_kw)
    tol = 1e-4 * np.sqrt(k)
    np.testing.assert_allclose(y, expect, rtol=tol, atol=tol)
    assert y.dtype == np.float32 and y.shape == (m, n)
    assert len(compiled_calls) == (1 if m >= G.THIN_M else 0)
    # Sigmoid, Silu, Gelu, Tanh after bias and residual run on each tile in the compiled driver
    on_tiles = epilogue in ("gelu", "bias_gelu", "bias_residual_sigmoid", "silu", "tanh")
    assert all((act[0] != 0) == on_tiles for act in compiled_calls.activations)


def test_leading_axes_and_packing_once(compiled_calls):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((64, 40)).astype(np.float32)
    packed = G.pack_b(b, copy=False)
    for _ in range(3):
        a = rng.standard_normal((2, 7, 64)).astype(np.float32)
        y = G.gemm(a, packed)
        np.testing.assert_allclose(y, a @ b, rtol=1e-4, atol=1e-4)
        assert y.shape == (2, 7, 40)
    assert packed.micro is not None and packed.micro.shape == (2, 64, microkernel.NR)
    assert len(compiled_calls) == 3


@pytest.mark.parametrize("threads,k,n,tiles", [(1, 256, 1024, False), (2, 64, 256, False),
                                               (2, 512, 600, True)])
def test_one_row_product_route(compiled_calls, threads, k, n, tiles):
    """A one-row product is BLAS's GEMV (B's microkernel panels never made) except where the
    tiles split a large B between threads; both match the float64 product."""
    rng = np.random.default_rng(k + n)
    a, b = rng.standard_normal((1, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    packed = G.pack_b(b, copy=False)
    y = G.gemm(a, packed, bias, num_threads=threads)
    np.testing.assert_allclose(y, _ref(a, b, bias), rtol=1e-4 * np.sqrt(k), atol=1e-4 * np.sqrt(k))
    assert len(compiled_calls) == int(tiles) and (packed.micro is not None) == tiles


def test_blas_path_when_switched_off(monkeypatch, compiled_calls):
    monkeypatch.setattr(G, "COMPILED", False)
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 64)).astype(np.float32), rng.standard_normal((64, 48)).astype(np.float32)
    np.testing.assert_allclose(G.gemm(a, G.pack_b(b, copy=False)), a @ b, rtol=1e-4, atol=1e-4)
    assert compiled_calls == []


def test_nan_propagates(compiled_calls):
    a = np.ones((16, 32), np.float32)
    a[3, 5] = np.nan
    y = G.gemm(a, G.pack_b(np.ones((32, 40), np.float32), copy=False), activation="Relu")
    assert np.isnan(y[3]).all() and not np.isnan(np.delete(y, 3, axis=0)).any()


@pytest.mark.parametrize("prefetch", [True, False])
def test_weight_prefetch_is_emitted_and_harmless(monkeypatch, prefetch):
    """The tiles' prefetch of the next weight panel (`microkernel.PREFETCH_AHEAD`) is in the
    compiled code exactly when switched on, and a prefetch past the last panel (the last tile
    of a product) neither faults nor changes the sums."""
    import numba
    monkeypatch.setattr(microkernel, "PREFETCH_AHEAD", prefetch)
    kdim, mr, nr = 300, 12, microkernel.NR

    @numba.njit(cache=False)
    def one_tile(ap, bp, y, bias, ahead):   # a fresh compile: the intrinsic's codegen runs now
        microkernel.gemm_tile(ap, 0, mr, bp, 0, np.zeros(1, np.int64), kdim, y, 0, nr, bias, 0,
                              y, 0, np.float32(-np.inf), np.float32(np.inf), 0, 0, ahead)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((mr, kdim)).astype(np.float32)
    b = rng.standard_normal((kdim, nr)).astype(np.float32)
    ap = np.ascontiguousarray(a.T).reshape(-1)          # one row panel: (kdim, mr)
    bp = b.reshape(-1)                                   # one column panel: (kdim, NR)
    y = np.zeros(mr * nr, np.float32)
    one_tile(ap, bp, y, np.zeros(nr, np.float32), kdim * nr * 64)   # far past the end
    np.testing.assert_allclose(y.reshape(mr, nr), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    ir = one_tile.inspect_llvm(one_tile.signatures[0])
    assert ("llvm.prefetch" in ir) == prefetch
