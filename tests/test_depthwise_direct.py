"""`ep_cpu.depthwise_direct` (masked 16-float vectors read straight from the NCHW input) against
a float64 reference and onnxruntime: strides 1 and 2 on each axis, kernel sizes 1-7, dilation,
asymmetric padding, rows shorter and longer than a vector (edge lanes masked), batches, clamps,
NaN and inf, and the depthwise convs of a model taking it."""
from __future__ import annotations

import numpy as np
import pytest
from depthwise_models import depthwise_clip_model

import ep_core
from ep_cpu import conv_depthwise, depthwise_direct, native_call
from ep_cpu.gemm import _get_pool
from ep_cpu.kernels.conv import conv_nd

pytestmark = pytest.mark.skipif(not depthwise_direct.available(),
                                reason="needs numba and an AVX-512 CPU")

# (N, C, H, W, kh, kw, strides, dilations, pads (top, left, bottom, right))
CASES = [
    (1, 3, 5, 5, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),
    (2, 17, 14, 14, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),
    (1, 8, 112, 112, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1)),
    (1, 5, 9, 37, 5, 5, (2, 2), (1, 1), (2, 2, 2, 2)),
    (1, 4, 7, 7, 3, 3, (2, 2), (2, 2), (2, 2, 2, 2)),
    (1, 6, 30, 33, 3, 3, (1, 1), (2, 2), (0, 0, 0, 0)),
    (1, 3, 20, 21, 7, 7, (1, 1), (1, 1), (3, 3, 3, 3)),
    (1, 2, 8, 8, 1, 1, (2, 2), (1, 1), (0, 0, 0, 0)),
    (1, 4, 13, 17, 3, 3, (2, 1), (1, 1), (0, 1, 2, 0)),
    (1, 4, 16, 48, 3, 5, (1, 2), (1, 1), (1, 2, 1, 2)),
    (1, 2, 3, 64, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),   # whole vectors, edges at both ends
]


def _reference(x, w, b, strides, dil, pads, out, clamp):
    y = conv_nd(x.astype(np.float64), w.astype(np.float64), x.shape[1], list(strides), list(dil),
                list(pads[:2]), list(pads[2:]), list(out), b.astype(np.float64))
    return np.clip(y, *clamp) if clamp else y


@pytest.mark.parametrize("clamp", [None, (0.0, 6.0)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"_s{c[6][0]}{c[6][1]}")
def test_matches_float64_reference(monkeypatch, case, clamp):
    # every map splits over two threads (TBB's or the pool's), however small
    monkeypatch.setattr(native_call, "HANDOFF_MACS_TBB", 1)
    monkeypatch.setattr(native_call, "HANDOFF_MACS_POOL", 1)
    n, c, h, wd, kh, kw, strides, dil, pads = case
    rng = np.random.default_rng(sum(case[:6]))
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    out = tuple((size + pads[i] + pads[i + 2] - dil[i] * (k - 1) - 1) // strides[i] + 1
                for i, (size, k) in enumerate(((h, kh), (wd, kw))))
    for threads in (1, 2):
        y = depthwise_direct.depthwise_2d(x, w, strides, dil, pads[:2], out, b, clamp, threads, _get_pool)
        np.testing.assert_allclose(y, _reference(x, w, b, strides, dil, pads, out, clamp),
                                   rtol=1e-5, atol=1e-5)


def test_nan_and_inf_reach_only_their_outputs():
    x = np.ones((1, 2, 10, 40), np.float32)
    x[0, 0, 4, 20] = np.nan
    x[0, 1, 0, 0] = np.inf
    w = np.ones((2, 1, 3, 3), np.float32)
    y = depthwise_direct.depthwise_2d(x, w, (1, 1), (1, 1), (1, 1), (10, 40), None, None, 1, _get_pool)
    assert np.isnan(y[0, 0, 3:6, 19:22]).all() and np.isnan(y[0, 0]).sum() == 9
    assert np.isposinf(y[0, 1, :2, :2]).all() and np.isinf(y[0, 1]).sum() == 4


def test_model_depthwise_convs_take_it(monkeypatch):
    calls = []
    real = depthwise_direct.depthwise_2d
    monkeypatch.setattr(depthwise_direct, "depthwise_2d", lambda *a: calls.append(a[5]) or real(*a))
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    model = depthwise_clip_model(32, 41, strides=[2, 2])
    feeds = {"x": rng.standard_normal((1, 32, 41, 41)).astype(np.float32)}
    ours = ep_core.InferenceSession(model, providers=["cpu"]).run(None, feeds)[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    assert [list(c) for c in calls] == [[20, 20]]   # 20 columns, not the 21 of the phase planes depthwise_flat needs


def test_wide_stride1_maps_keep_the_plane_kernel():
    assert not conv_depthwise._direct((1, 1), (56, 56))
    assert conv_depthwise._direct((1, 1), (14, 14)) and conv_depthwise._direct((2, 2), (56, 56))
    assert not conv_depthwise._direct((3, 3), (20, 20)) and not conv_depthwise._direct((1, 1), (7, 7))
