"""ep_cpu.gemm: blocked GEMM with packed B and fused epilogues, against plain numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from ep_cpu import gemm as G


def _ref_act(y: np.ndarray, act: str | None, params: dict) -> np.ndarray:
    if act is None:
        return y
    if act == "Relu":
        return np.maximum(y, 0)
    if act == "Clip":
        return np.clip(y, params.get("min", -np.inf), params.get("max", np.inf))
    if act == "Sigmoid":
        return 1 / (1 + np.exp(-y))
    if act == "Tanh":
        return np.tanh(y)
    if act == "LeakyRelu":
        return np.where(y < 0, params.get("alpha", 0.01) * y, y)
    if act == "Gelu":
        return 0.5 * y * (1 + erf(y / math.sqrt(2)))
    if act == "FastGelu":
        return 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if act == "HardSigmoid":
        return np.clip(params.get("alpha", 0.2) * y + params.get("beta", 0.5), 0, 1)
    if act == "HardSwish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    if act == "Elu":
        return np.where(y < 0, params.get("alpha", 1.0) * np.expm1(y), y)
    if act == "Silu":
        return y / (1 + np.exp(-y))
    raise AssertionError(act)


def _reference(a, b, bias=None, act=None, params=None, residual=None, alpha=1.0, beta=1.0):
    y = alpha * (a.astype(np.float64) @ b.astype(np.float64))
    if bias is not None:
        y = y + beta * bias.astype(np.float64)
    if residual is not None:
        y = y + residual.astype(np.float64)
    return _ref_act(y, act, params or {})


def _tol(dtype, k):
    return {np.float16: 2e-2, np.float32: 1e-4 * max(1.0, math.sqrt(k) / 8), np.float64: 1e-10}[dtype]


def _check(got, want, dtype, k):
    assert got.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    assert err <= _tol(dtype, k) * scale, f"max error {err} (scale {scale})"


SHAPES = [(1, 1, 1), (1, 768, 2304), (3, 5, 7), (17, 33, 65), (128, 768, 768), (257, 129, 1000),
          (500, 300, 700), (64, 5000, 96), (1, 64, 50000)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("packed", [False, True])
def test_shapes_float32(m, k, n, packed):
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    bb = G.pack_b(b) if packed else b
    _check(G.gemm(a, bb), _reference(a, b), np.float32, k)
    _check(G.gemm(a, bb, bias, "Relu"), _reference(a, b, bias, "Relu"), np.float32, k)


ACTS = [(None, None), ("Relu", None), ("Clip", {"min": -0.5, "max": 0.75}), ("Clip", (0.0, 6.0)),
        ("Sigmoid", None), ("Tanh", None), ("LeakyRelu", {"alpha": 0.1}), ("Gelu", None),
        ("FastGelu", None), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", None),
        ("Elu", (0.7,)), ("Silu", None)]


@pytest.mark.parametrize("act,params", ACTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(ACTS)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("m,k,n", [(37, 61, 45), (300, 260, 900)])
def test_epilogues(act, params, dtype, m, k, n):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((m, k)) / math.sqrt(k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    res = rng.standard_normal((m, n)).astype(dtype)
    named = params if isinstance(params, dict) else dict(zip(G._PARAM_ORDER.get(act, ()), params or ()))
    want = _reference(a, b, bias, act, named, residual=res)
    for bb in (b, G.pack_b(b)):
        got = G.gemm(a, bb, bias, act, activation_params=params, residual=res)
        _check(got, want, dtype, k)


def test_threads_and_blocking_paths(monkeypatch):
    """Force the threaded tile path and K blocking on a moderate problem."""
    monkeypatch.setattr(G, "PAR_MIN_MACS", 1)
    monkeypatch.setattr(G, "BLAS_MIN_K", 1 << 30)   # K=300 would take BLAS's one call
    monkeypatch.setattr(G, "KC", 64)
    monkeypatch.setattr(G, "PANEL_BYTES", 4096)
    monkeypatch.setattr(G, "TILE_BYTES", 4096)
    monkeypatch.setattr(G, "MC_MIN", 16)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((203, 300), dtype=np.float32)
    b = rng.standard_normal((300, 517), dtype=np.float32)
    bias = rng.standard_normal((203, 1), dtype=np.float32)
    pb = G.pack_b(b)
    assert len(pb.panels) > 1
    for threads in (1, 2, 3):
        for bb in (b, pb):
            _check(G.gemm(a, bb, bias, "Gelu", num_threads=threads),
                   _reference(a, b, bias, "Gelu"), np.float32, 300)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    _check(G.gemm(a16, G.pack_b(b16), num_threads=2),
           _reference(a16, b16), np.float16, 300)


def test_alpha_beta_transposes_and_broadcasts():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 30), dtype=np.float32)   # used as A^T
    b = rng.standard_normal((50, 40), dtype=np.float32)   # used as B^T
    for c in (np.float32(0.5), rng.standard_normal((1, 50), dtype=np.float32),
              rng.standard_normal((30, 1), dtype=np.float32),
              rng.standard_normal((30, 50), dtype=np.float32)):
        want = _reference(a.T, b.T, np.asarray(c), alpha=0.25, beta=2.0)
        got = G.gemm(a, b, c, trans_a=True, trans_b=True, alpha=0.25, beta=2.0)
        _check(got, want, np.float32, 40)
        got = G.gemm(a.T, G.pack_b(b, trans_b=True), c, alpha=0.25, beta=2.0)
        _check(got, want, np.float32, 40)


def test_batched_a_out_and_errors():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 3, 16), dtype=np.float32)
    b = rng.standard_normal((16, 8), dtype=np.float32)
    got = G.gemm(a, G.pack_b(b), clip_min=0.0, clip_max=1.0, activation="Clip")
    assert got.shape == (2, 3, 8)
    np.testing.assert_allclose(got, np.clip(a @ b, 0, 1), rtol=1e-5, atol=1e-6)
    out = np.empty((6, 8), np.float32)
    r = G.gemm(a.reshape(6, 16), b, out=out)
    assert np.shares_memory(r, out)
    with pytest.raises(ValueError):
        G.gemm(a, rng.standard_normal((15, 8), dtype=np.float32))
    with pytest.raises(ValueError):
        G.gemm(a, b, activation="Nope")
    with pytest.raises(ValueError):
        G.gemm(a, b, bias=np.ones(7, np.float32))


def test_integer_and_empty():
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    b = np.arange(8, dtype=np.int32).reshape(4, 2)
    got = G.gemm(a, G.pack_b(b), np.int32(1), "Relu")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.maximum(a @ b + 1, 0))
    z = G.gemm(np.ones((3, 0), np.float32), np.ones((0, 5), np.float32), np.ones(5, np.float32))
    np.testing.assert_array_equal(z, np.ones((3, 5), np.float32))
    assert G.gemm(np.ones((0, 4), np.float32), b.astype(np.float32)).shape == (0, 2)


def test_pack_layout():
    b = np.random.default_rng(5).standard_normal((1024, 3000)).astype(np.float16)
    pb = G.pack_b(b)
    assert pb.cdtype == np.float32 and pb.shape == (1024, 3000)
    assert all(p.flags.c_contiguous for p in pb.panels)
    assert all(p.nbytes <= G.PANEL_BYTES + 1024 * 4 * G.NC_ALIGN for p in pb.panels)
    np.testing.assert_array_equal(pb.unpack(), b.astype(np.float32))


def test_fast_erf():
    from scipy.special import erf
    x = np.linspace(-8, 8, 100001, dtype=np.float32)
    got = G.fast_erf(x)
    assert got.dtype == np.float32
    assert np.abs(got - erf(x.astype(np.float64))).max() < 1e-6
    special = G.fast_erf(np.array([0.0, np.inf, -np.inf, np.nan], np.float32))
    np.testing.assert_array_equal(special[:3], [0.0, 1.0, -1.0])
    assert np.isnan(special[3])
    x64 = np.linspace(-3, 3, 101)
    np.testing.assert_allclose(G.fast_erf(x64), erf(x64), rtol=0, atol=1e-15)  # float64: exact path


def test_nothing_is_packed_behind_the_callers_back(monkeypatch):
    """gemm never packs (or caches) a B by itself, read-only or not: only kernels pack their
    session constants (pack_constant), so a refilled buffer always gives the new result."""
    monkeypatch.setattr(G, "PAR_MIN_MACS", 1)
    monkeypatch.setattr(G, "BLAS_MIN_K", 1 << 30)
    monkeypatch.setattr(G, "TILE_BYTES", 4096)
    monkeypatch.setattr(G, "PANEL_BYTES", 256 * 1024)
    rng = np.random.default_rng(6)
    a = rng.standard_normal((64, 300), dtype=np.float32)
    buf = rng.standard_normal((300, 1000), dtype=np.float32)   # > PANEL_BYTES: several panels
    w = buf.view()
    w.flags.writeable = False
    calls = []
    real = G.pack_b
    monkeypatch.setattr(G, "pack_b", lambda b, trans_b=False: calls.append(1) or real(b, trans_b))
    bias = rng.standard_normal(1000, dtype=np.float32)
    y1 = G.gemm(a, w, bias, "Relu", num_threads=2)   # the tiled path (an epilogue to fuse)
    _check(y1, _reference(a, w, bias, "Relu"), np.float32, 300)
    buf[...] = rng.standard_normal((300, 1000), dtype=np.float32)   # refilled in place
    y2 = G.gemm(a, w, bias, "Relu", num_threads=2)
    _check(y2, _reference(a, buf, bias, "Relu"), np.float32, 300)
    assert not calls
    assert not hasattr(G, "cached_pack") and not hasattr(G, "_pack_cache")


def test_pack_constant_packs_where_it_pays():
    rng = np.random.default_rng(7)
    big = rng.standard_normal((300, 1000)).astype(np.float32)
    assert G.pack_constant(np.ones((300, 100), np.float32)) is None   # one contiguous panel already
    assert G.pack_constant(np.ones((4, 4), np.float16)).cdtype == np.float32   # converted once
    assert G.pack_constant(np.ones((4, 4), np.int32)) is None
    assert G.pack_constant(None) is None
    pt = G.pack_constant(big, trans_b=True)                           # large and transposed
    assert pt is not None and pt.shape == (1000, 300)
    np.testing.assert_array_equal(pt.unpack(), big.T)


# ---------------------------------------------------------------- kernels in a session
def _session_model(kind: str, b_const: np.ndarray | None, dtype=np.float32):
    from onnx import TensorProto, helper, numpy_helper
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    vi = helper.make_tensor_value_info
    k, n, m = 512, 512, 2048          # output 4 MB > TILE_BYTES: the threaded, tiled path
    if kind == "gemm":
        nodes = [helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)]
    elif kind == "gemm_relu":         # fused into FusedGemm by the optimizer
        nodes = [helper.make_node("Gemm", ["a", "b", "c"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    else:                             # matmul + add + relu: FusedMatMul
        nodes = [helper.make_node("MatMul", ["a", "b"], ["mm"]), helper.make_node("Add", ["mm", "c"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    inputs = [vi("a", et, [m, k])] + ([] if b_const is not None else [vi("b", et, [n, k] if "gemm" in kind else [k, n])])
    inits = [numpy_helper.from_array(np.zeros(n, dtype), "c")]
    if b_const is not None:
        inits.append(numpy_helper.from_array(b_const, "b"))
    graph = helper.make_graph(nodes, kind, inputs, [vi("y", et, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _numpy_ref(kind, a, b):
    y = a.astype(np.float64) @ (b.T if "gemm" in kind else b).astype(np.float64)
    return y if kind == "gemm" else np.maximum(y, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", ["gemm", "gemm_relu", "matmul_relu"])
def test_read_only_feed_refilled_in_place_gives_the_new_result(kind, dtype):
    # Used to return the previous run's result: B was packed once, keyed by its memory address.
    import ep_core
    sess = ep_core.InferenceSession(_session_model(kind, None, dtype), providers=["cpu"])
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2048, 512)).astype(dtype)
    buf = rng.standard_normal((512, 512)).astype(dtype)
    b = buf.view()
    b.flags.writeable = False
    tol = 2e-2 if dtype == np.float16 else 1e-3
    for _ in range(2):
        y = sess.run(None, {"a": a, "b": b})[0]
        want = _numpy_ref(kind, a, buf)
        assert np.abs(y.astype(np.float64) - want).max() <= tol * max(1.0, np.abs(want).max())
        buf[...] = rng.standard_normal((512, 512)).astype(dtype)


@pytest.mark.parametrize("kind", ["gemm", "gemm_relu", "matmul_relu"])
def test_constant_b_is_packed_once_at_session_build(kind, monkeypatch):
    import ep_core
    calls = []
    real = G.pack_b
    monkeypatch.setattr(G, "pack_b", lambda b, trans_b=False: calls.append(1) or real(b, trans_b))
    rng = np.random.default_rng(9)
    w = rng.standard_normal((512, 512)).astype(np.float16)   # float16: packing converts it once
    sess = ep_core.InferenceSession(_session_model(kind, w, np.float16), providers=["cpu"])
    built = len(calls)
    assert built >= 1
    a = rng.standard_normal((2048, 512)).astype(np.float16)
    for _ in range(2):
        y = sess.run(None, {"a": a})[0]
    assert len(calls) == built
    want = _numpy_ref(kind, a, w)
    assert np.abs(y.astype(np.float64) - want).max() <= 2e-2 * np.abs(want).max()


@pytest.mark.parametrize("trans_b", [True, False])
def test_pack_constant_keeps_float32_weights_in_place(trans_b, monkeypatch):
    """A large float32 weight is 'packed' as views of its own memory (no copy at session build)
    and gives the same products as the plain matrix, over several panels."""
    monkeypatch.setattr(G, "PANEL_BYTES", 64 * 1024)
    rng = np.random.default_rng(7)
    b = rng.standard_normal((384, 512)).astype(np.float32)
    b.flags.writeable = False   # as session constants are
    pb = G.pack_constant(b, trans_b)
    assert pb is not None and len(pb.panels) > 1
    assert all(np.shares_memory(p, b) for p in pb.panels)
    a = rng.standard_normal((70, 384 if not trans_b else 512)).astype(np.float32)
    bias = rng.standard_normal(512 if not trans_b else 384).astype(np.float32)
    ref = np.maximum(a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64) + bias, 0)
    # float32 sums of 384-512 products: errors scale with the products, not with each result
    # (numpy's own float32 product is 4e-5 off here; the k-blocked kernels' sums 3e-5)
    for threads in (1, 2):
        np.testing.assert_allclose(G.gemm(a, pb, bias, "Relu", num_threads=threads), ref, rtol=2e-5,
                                   atol=1e-6 * np.abs(ref).max())


def test_tiles_take_products_by_cpu_class_and_rows(monkeypatch):
    """Where the tiles beat BLAS they take products, except from BLAS_MIN_ROWS_INTEL rows on
    Intel's AVX-512, where OpenBLAS's own kernel measured faster (gemm.py)."""
    from ep_cpu import microkernel
    rows = G.BLAS_MIN_ROWS_INTEL
    monkeypatch.setattr(microkernel, "beats_blas", lambda: True)
    monkeypatch.setattr(microkernel, "amd", lambda: False)
    assert G._tiles_take(rows - 1) and not G._tiles_take(rows)
    monkeypatch.setattr(microkernel, "amd", lambda: True)
    assert G._tiles_take(10 * rows)
    monkeypatch.setattr(microkernel, "beats_blas", lambda: False)
    assert not G._tiles_take(1)
