"""`ep_cpu.depthwise_flat` (stride-1 depthwise over whole planes as flat masked vectors) against a
float64 reference and onnxruntime: kernel sizes 1-7, dilation, asymmetric and vertical-only
padding, planes shorter than one vector group and longer than many, batches, clamps, threads,
NaN and inf, and the depthwise convs of a model taking it."""
from __future__ import annotations

import numpy as np
import pytest
from depthwise_models import depthwise_clip_model

import ep_core
from ep_cpu import conv_depthwise, depthwise_flat, native_call
from ep_cpu.gemm import _get_pool
from ep_cpu.kernels.conv import conv_nd

pytestmark = pytest.mark.skipif(not depthwise_flat.available(), reason="needs numba and an AVX-512 CPU")

# (N, C, H, W, kh, kw, dilations, pads (top, left, bottom, right)[, stride]): stride 1 with the
# output as wide as W, stride 2 with it ceil(W / 2) wide
CASES = [
    (1, 3, 14, 14, 3, 3, (1, 1), (1, 1, 1, 1), 2),    # 14 -> 7: MobileNetV2's last stride 2
    (2, 5, 112, 112, 3, 3, (1, 1), (1, 1, 1, 1), 2),
    (1, 4, 15, 13, 3, 3, (1, 1), (1, 1, 1, 1), 2),    # odd sizes: phase planes of unequal size
    (1, 3, 20, 20, 5, 5, (1, 1), (2, 2, 2, 2), 2),
    (1, 2, 12, 12, 3, 3, (1, 1), (0, 1, 1, 1), 2),    # asymmetric rows
    (1, 2, 9, 9, 3, 3, (2, 2), (2, 2, 2, 2), 2),      # dilation
    (1, 3, 7, 7, 3, 3, (1, 1), (1, 1, 1, 1)),       # 49 lanes: one group, masked tail
    (2, 17, 14, 14, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 5, 28, 28, 5, 5, (1, 1), (2, 2, 2, 2)),
    (1, 4, 9, 13, 3, 3, (2, 2), (2, 2, 2, 2)),       # dilation
    (1, 3, 20, 21, 7, 7, (1, 1), (3, 3, 3, 3)),
    (1, 4, 13, 17, 3, 3, (1, 1), (0, 1, 2, 1)),      # asymmetric rows: oh != H
    (1, 2, 6, 10, 3, 1, (1, 1), (0, 0, 0, 0)),       # no padding: oh = H - 2
    (1, 2, 3, 3, 3, 3, (1, 1), (1, 1, 1, 1)),        # a plane smaller than a vector
    (1, 2, 1, 40, 1, 3, (1, 1), (0, 1, 0, 1)),       # one row
    (1, 3, 56, 56, 3, 3, (1, 1), (1, 1, 1, 1)),      # 196 vectors
]


def _reference(x, w, b, dil, pads, out, clamp, stride=1):
    y = conv_nd(x.astype(np.float64), w.astype(np.float64), x.shape[1], [stride, stride], list(dil),
                list(pads[:2]), list(pads[2:]), list(out), b.astype(np.float64))
    return np.clip(y, *clamp) if clamp else y


def _out(h, wd, kh, kw, dil, pads, stride=1):
    return ((h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // stride + 1,
            (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // stride + 1)


@pytest.mark.parametrize("clamp", [None, (0.0, 6.0)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
def test_matches_float64_reference(monkeypatch, case, clamp):
    # every map splits over two threads (TBB's or the pool's), however small
    monkeypatch.setattr(native_call, "HANDOFF_MACS_TBB", 1)
    monkeypatch.setattr(native_call, "HANDOFF_MACS_POOL", 1)
    n, c, h, wd, kh, kw, dil, pads, *rest = case
    stride = rest[0] if rest else 1
    rng = np.random.default_rng(sum(case[:6]))
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    out = _out(h, wd, kh, kw, dil, pads, stride)
    assert depthwise_flat.applies(x.shape, (kh, kw), (stride, stride), dil, pads[:2], out)
    for threads in (1, 2):
        y = depthwise_flat.depthwise_2d(x, w, (stride, stride), dil, pads[:2], out, b, clamp, threads,
                                        _get_pool)
        np.testing.assert_allclose(y, _reference(x, w, b, dil, pads, out, clamp, stride),
                                   rtol=1e-5, atol=1e-5)


def test_other_geometries_are_not_taken():
    assert not depthwise_flat.applies((1, 4, 14, 14), (3, 3), (2, 1), (1, 1), (1, 1), (7, 14))
    assert not depthwise_flat.applies((1, 4, 14, 14), (3, 3), (1, 1), (1, 1), (0, 0), (12, 12))
    assert not depthwise_flat.applies((1, 4, 14, 14), (3, 3), (2, 2), (1, 1), (0, 0), (6, 6))
    assert not depthwise_flat.applies((1, 4, 14, 14), (3, 3), (3, 3), (1, 1), (1, 1), (5, 5))


def test_masks_cover_exactly_the_inputs_inside():
    shifts, masks, groups = depthwise_flat.geometry(5, 6, 3, 3, 1, 1, 1, 1, 5)
    assert masks.shape == (10, groups * depthwise_flat.GROUP) and list(shifts[:3]) == [-7, -6, -5]
    bits = np.unpackbits(masks.view(np.uint8), bitorder="little").reshape(10, -1)
    assert bits[9].sum() == 30                  # the store mask: every output position once
    assert bits[4].sum() == 30 and bits[0].sum() == 20   # centre tap: all; corner: 4 x 5


def test_nan_and_inf_reach_only_their_outputs():
    x = np.ones((1, 2, 10, 40), np.float32)
    x[0, 0, 4, 20] = np.nan
    x[0, 1, 0, 0] = np.inf
    w = np.ones((2, 1, 3, 3), np.float32)
    y = depthwise_flat.depthwise_2d(x, w, (1, 1), (1, 1), (1, 1), (10, 40), None, None, 1, _get_pool)
    assert np.isnan(y[0, 0, 3:6, 19:22]).all() and np.isnan(y[0, 0]).sum() == 9
    assert np.isposinf(y[0, 1, :2, :2]).all() and np.isinf(y[0, 1]).sum() == 4


def test_model_depthwise_convs_take_it(monkeypatch):
    """A model's depthwise conv runs here, through a plan kept on its kernel (`FlatPlan`)."""
    calls = []
    real = depthwise_flat.FlatPlan.__call__
    monkeypatch.setattr(depthwise_flat.FlatPlan, "__call__",
                        lambda self, *a: calls.append(self.y_shape[2:]) or real(self, *a))
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    model = depthwise_clip_model(32, 14, pads=[1, 1, 1, 1])
    feeds = {"x": rng.standard_normal((1, 32, 14, 14)).astype(np.float32)}
    ours = ep_core.InferenceSession(model, providers=["cpu"]).run(None, feeds)[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-5)
    assert [list(c) for c in calls] == [[14, 14]]
    assert conv_depthwise.FLAT
