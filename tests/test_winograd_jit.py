"""The compiled Winograd F(4x4,3x3) transforms (`ep_cpu.winograd_jit`) against a float64 direct
convolution, on maps large enough for several bands, with the epilogues and the thread split."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ep_cpu import winograd
from ep_cpu.gemm import _get_pool


def _direct(x, w, b, begin, out, residual, lo, hi):
    n, c, h, wd = x.shape
    m = w.shape[0]
    xp = np.zeros((n, c, out[0] + 2, out[1] + 2))
    r0, c0 = max(0, -begin[0]), max(0, -begin[1])
    r1, c1 = min(h, out[0] + 2 - begin[0]), min(wd, out[1] + 2 - begin[1])
    xp[:, :, begin[0] + r0:begin[0] + r1, begin[1] + c0:begin[1] + c1] = x[:, :, r0:r1, c0:c1]
    y = np.zeros((n, m, *out))
    for ky in range(3):
        for kx in range(3):
            y += np.einsum("mc,nchw->nmhw", w[:, :, ky, kx].astype(np.float64),
                           xp[:, :, ky:ky + out[0], kx:kx + out[1]])
    y += b.reshape(1, m, 1, 1)
    if residual is not None:
        y += residual
    return np.clip(y, lo, hi)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", [
    ((1, 64, 56, 56), 64, (1, 1), "relu"),
    ((1, 128, 20, 20), 96, (1, 1), "residual"),
    ((2, 32, 23, 18), 48, (0, 2), "clip"),        # batch 2, partial tiles, one-sided pads
    ((1, 16, 9, 40), 8, (2, -1), "none"),          # cropping pad (negative begin)
], ids=["64c56", "128c20_res", "batch2_clip", "crop"])
def test_compiled_transforms_match_direct_conv(monkeypatch, case, threads):
    (n, c, h, wd), m, begin, epi = case
    rng = np.random.default_rng(c * h + m)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = (rng.standard_normal((m, c, 3, 3)) / math.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    out = (h + 2 * begin[0] - 2, wd + 2 * begin[1] - 2)
    res = rng.standard_normal((n, m, *out)).astype(np.float32) if epi == "residual" else None
    act, params, lo, hi = None, None, -np.inf, np.inf
    if epi == "relu":
        act, lo = "Relu", 0.0
    elif epi == "clip":
        act, params, lo, hi = "Clip", {"min": -0.5, "max": 0.75}, -0.5, 0.75
    monkeypatch.setattr(winograd, "BAND_BYTES", 1 << 16)   # several bands on every map here
    monkeypatch.setattr(winograd, "SPLIT_MIN", 0)
    u = winograd.transform_weight(w, 4)
    y = winograd.conv3x3(x, u, 4, begin, out, b, res, act, params, threads, _get_pool)
    ref = _direct(x, w, b, begin, out, res, lo, hi)
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_nan_propagates_through_the_clamp():
    """A NaN input reaches every output whose window holds it (Relu keeps it, as np.maximum does);
    like every Winograd conv, it also reaches the rest of its 4x4 tile, and no other tile."""
    x = np.ones((1, 8, 16, 16), np.float32)
    x[0, 3, 2, 2] = np.nan
    u = winograd.transform_weight(np.ones((4, 8, 3, 3), np.float32), 4)
    y = winograd.conv3x3(x, u, 4, (1, 1), (16, 16), None, None, "Relu", None)
    assert np.isnan(y[0, :, 1:4, 1:4]).all()
    assert not np.isnan(y[0, :, 4:, :]).any() and not np.isnan(y[0, :, :, 4:]).any()
