"""1x1 convolutions of one image at one intra-op thread through `ep_cpu.conv_pointwise` (the
plan kept on the kernel: one BLAS product and one epilogue pass per block of output rows)
against onnxruntime: every clamp epilogue and a residual, small outputs (numpy's epilogue),
large ones (the compiled epilogue; several row blocks), 1-D, repeated runs with new inputs."""
from __future__ import annotations

import numpy as np
import pytest
from test_conv_implicit import TOL, _model

import ep_core
from ep_cpu import conv_pointwise, conv_thin
from ep_cpu.kernels import conv

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

# (input, out channels): 1x1 kernels, stride 1, no padding
SHAPES = [
    ((1, 16, 8, 8), 24),        # 1536 outputs: numpy's epilogue
    ((1, 96, 14, 14), 576),     # MobileNetV2's expansion: the compiled epilogue
    ((1, 8, 200, 200), 16),     # 2.56 MB of output: two row blocks of TILE_BYTES
    ((1, 32, 50), 40),          # 1-D
]


@pytest.fixture
def pointwise_calls(monkeypatch):
    """Every 1x1 conv takes im2col + BLAS (the plan's path at one thread on AVX2 CPUs); counts
    the plan's runs."""
    monkeypatch.setattr(conv, "IMPLICIT", False)
    monkeypatch.setattr(conv, "WINOGRAD", False)
    monkeypatch.setattr(conv_thin, "MAX_POSITIONS", 0)
    calls = []
    real = conv_pointwise.PointwisePlan.__call__
    monkeypatch.setattr(conv_pointwise.PointwisePlan, "__call__",
                        lambda self, *a: calls.append(self.out_shape) or real(self, *a))
    return calls


def _one_thread() -> ep_core.SessionOptions:
    o = ep_core.SessionOptions()
    o.intra_op_num_threads = 1
    return o


@pytest.mark.parametrize("epilogue", ["none", "relu", "clip", "residual_relu", "silu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_m{s[1]}")
def test_matches_onnxruntime(pointwise_calls, shape, epilogue):
    in_shape, m = shape
    nd = len(in_shape) - 2
    model, feeds = _model(in_shape, m, (1,) * nd, (1,) * nd, (0,) * (2 * nd), (1,) * nd, epilogue)
    ours = ep_core.InferenceSession(model, _one_thread(), providers=["cpu"])
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for run in range(3):   # later runs go straight to the kept plan, with new inputs
        if run:
            feeds = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in feeds.items()}
        np.testing.assert_allclose(ours.run(None, feeds)[0], reference.run(None, feeds)[0], **TOL)
    # SiLU is not a clamp: that conv keeps the general path and its activation pass
    assert len(pointwise_calls) == (0 if epilogue == "silu" else 3)


def test_nan_and_weights_fed(pointwise_calls):
    """NaN passes the clamp (as numpy's clip, and onnxruntime); a weight fed per run is not
    kept in a plan (a caller may refill its buffer)."""
    model, feeds = _model((1, 16, 12, 12), 20, (1, 1), (1, 1), (0,) * 4, (1, 1), "clip")
    feeds["x"][0, :, 3, 4] = np.nan
    got = ep_core.InferenceSession(model, _one_thread(), providers=["cpu"]).run(None, feeds)[0]
    assert np.isnan(got[0, :, 3, 4]).all() and not np.isnan(np.delete(got.reshape(20, -1), 40, 1)).any()
    model, feeds = _model((1, 16, 12, 12), 20, (1, 1), (1, 1), (0,) * 4, (1, 1), "relu",
                          const_weight=False)
    ours = ep_core.InferenceSession(model, _one_thread(), providers=["cpu"])
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    pointwise_calls.clear()
    for scale in (1.0, -2.0):
        feeds["w"] = feeds["w"] * scale
        np.testing.assert_allclose(ours.run(None, feeds)[0], want.run(None, feeds)[0], **TOL)
    assert pointwise_calls == []
