"""`ep_cpu.depthwise_padded` (each channel copied into a zero-padded plane, every tap one
unmasked flat shift) against a float64 reference and onnxruntime: strides 1 and 2, kernel sizes
1x3 to 7x7, asymmetric and missing padding, rows shorter and longer than a vector, maps cropped
by the output size, channel ranges split over threads (whose last outputs must not spill into
the next range), clamps, NaN and inf, and a model's depthwise conv taking it."""
from __future__ import annotations

import numpy as np
import pytest
from compiled_threads import threads_via
from depthwise_models import depthwise_clip_model

import ep_core
from ep_cpu import conv_depthwise, depthwise_padded, native_call
from ep_cpu.gemm import _get_pool
from ep_cpu.kernels.conv import conv_nd

pytestmark = pytest.mark.skipif(not depthwise_padded.available(),
                                reason="needs numba and an AVX2 or AVX-512 CPU")

# (N, C, H, W, kh, kw, stride, pads (top, left, bottom, right))
CASES = [
    (1, 3, 7, 7, 3, 3, 1, (1, 1, 1, 1)),
    (2, 17, 14, 14, 3, 3, 1, (1, 1, 1, 1)),
    (1, 9, 14, 14, 3, 3, 2, (1, 1, 1, 1)),
    (1, 4, 112, 112, 3, 3, 2, (1, 1, 1, 1)),       # rows of whole 16- and 32-value copies
    (1, 5, 9, 37, 5, 5, 2, (2, 2, 2, 2)),
    (1, 6, 30, 33, 3, 3, 1, (0, 0, 0, 0)),         # no padding: the plane is the image
    (1, 3, 20, 21, 7, 7, 1, (3, 3, 3, 3)),
    (1, 4, 13, 17, 3, 3, 2, (0, 1, 2, 0)),         # asymmetric
    (1, 4, 16, 48, 3, 5, 1, (1, 2, 1, 2)),
    (1, 2, 3, 64, 1, 3, 1, (0, 1, 0, 1)),
    (1, 3, 12, 12, 2, 2, 2, (0, 0, 0, 0)),         # even kernel
    (1, 3, 11, 11, 3, 3, 2, (1, 1, 0, 0)),         # the last input row and column not read
    (1, 2, 1, 1, 3, 3, 1, (1, 1, 1, 1)),           # one pixel, all padding around it
    (1, 3, 5, 40, 3, 3, 2, (1, 1, 1, 1)),          # 40 columns: a whole and a partial split
]


def _out(h, w, kh, kw, s, pads):
    return (h + pads[0] + pads[2] - kh) // s + 1, (w + pads[1] + pads[3] - kw) // s + 1


def _reference(x, w, b, s, pads, out, clamp):
    y = conv_nd(x.astype(np.float64), w.astype(np.float64), x.shape[1], [s, s], [1, 1],
                list(pads[:2]), list(pads[2:]), list(out), b.astype(np.float64))
    return np.clip(y, *clamp) if clamp else y


@pytest.mark.parametrize("split", ["one_thread", "columns", "columns_pool"])
@pytest.mark.parametrize("clamp", [None, (0.0, 6.0)], ids=["none", "relu6"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"_k{c[4]}{c[5]}_s{c[6]}")
def test_matches_float64_reference(monkeypatch, case, clamp, split):
    split = threads_via(monkeypatch, split)
    if split != "one_thread":   # every channel its own hand-off: ranges of one channel meet
        monkeypatch.setattr(native_call, "HANDOFF_MACS_TBB", 1)
        monkeypatch.setattr(native_call, "HANDOFF_MACS_POOL", 1)
    n, c, h, wd, kh, kw, s, pads = case
    rng = np.random.default_rng(sum(case[:6]))
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((c, 1, kh, kw)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    out = _out(h, wd, kh, kw, s, pads)
    assert depthwise_padded.applies((kh, kw), (s, s), (1, 1), pads[:2], out)
    threads = 1 if split == "one_thread" else 2
    y = depthwise_padded.depthwise_2d(x, w, (s, s), pads[:2], out, b, clamp, threads, _get_pool)
    np.testing.assert_allclose(y, _reference(x, w, b, s, pads, out, clamp), rtol=1e-5, atol=1e-5)


def test_other_geometries_are_not_taken():
    assert not depthwise_padded.applies((3, 3), (1, 2), (1, 1), (1, 1), (5, 5))   # mixed strides
    assert not depthwise_padded.applies((3, 3), (3, 3), (1, 1), (1, 1), (5, 5))   # stride 3
    assert not depthwise_padded.applies((3, 3), (1, 1), (2, 2), (1, 1), (5, 5))   # dilation
    assert not depthwise_padded.applies((3,), (1,), (1,), (1,), (5,))              # 1-D
    assert not depthwise_padded.applies((3, 3), (1, 1), (1, 1), (1, 1), (2048, 2048))   # huge map


def test_nan_and_inf_reach_only_their_outputs():
    x = np.zeros((1, 2, 10, 40), np.float32)
    x[0, 0, 4, 20] = np.nan
    x[0, 1, 0, 0] = np.inf
    w = np.ones((2, 1, 3, 3), np.float32)
    y = depthwise_padded.depthwise_2d(x, w, (1, 1), (1, 1), (10, 40), None, None, 1, _get_pool)
    assert np.isnan(y[0, 0, 3:6, 19:22]).all() and np.isnan(y[0, 0]).sum() == 9
    assert np.isposinf(y[0, 1, :2, :2]).all() and np.isinf(y[0, 1]).sum() == 4


def test_model_depthwise_convs_take_it(monkeypatch):
    """A model's depthwise convs run here (AVX2 CPUs), through a plan kept on the kernel
    (`PaddedPlan`), run after run."""
    monkeypatch.setattr(conv_depthwise, "FLAT", False)
    monkeypatch.setattr(conv_depthwise, "PADDED", True)   # (AVX-512 CPUs: off by default)
    calls = []
    real = depthwise_padded.PaddedPlan.__call__
    monkeypatch.setattr(depthwise_padded.PaddedPlan, "__call__",
                        lambda self, *a: calls.append(self.y_shape[2:]) or real(self, *a))
    ort = pytest.importorskip("onnxruntime")
    model = depthwise_clip_model(32, 15, pads=[1, 1, 1, 1], strides=[2, 2])
    sess = ep_core.InferenceSession(model, providers=["cpu"])
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        feeds = {"x": np.random.default_rng(seed).standard_normal((1, 32, 15, 15)).astype(np.float32)}
        np.testing.assert_allclose(sess.run(None, feeds)[0], want.run(None, feeds)[0], rtol=1e-5, atol=1e-5)
    assert [list(c) for c in calls] == [[8, 8], [8, 8]]
