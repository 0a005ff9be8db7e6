"""Convolutions with a few output positions through `ep_cpu.conv_thin` (positions as the GEMM's
rows, W^T packed once) against onnxruntime: 1-D and 2-D, strides (a short-time Fourier transform
as a stride-128 conv), padding, dilation, 1x1, batches, every epilogue, weights fed per run."""
from __future__ import annotations

import numpy as np
import pytest
from test_conv_implicit import TOL, _model

import ep_core
from ep_cpu import conv_thin, microkernel
from ep_cpu.kernels import conv

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")
pytestmark = pytest.mark.skipif(not microkernel.available(),
                                reason="the compiled microkernel needs numba and an AVX2+FMA CPU")

# (input, out channels, kernel, strides, pads, dilations)
SHAPES = [
    ((1, 1, 576), 258, (256,), (128,), (0, 0), (1,)),        # STFT as a conv: 3 positions
    ((1, 129, 3), 128, (3,), (1,), (1, 1), (1,)),
    ((2, 64, 4), 64, (3,), (2,), (1, 1), (1,)),              # batch, stride 2
    ((1, 64, 1), 128, (3,), (1,), (1, 1), (1,)),             # one position, mostly padding
    ((1, 128, 1), 1, (1,), (1,), (0, 0), (1,)),              # 1x1 to one channel
    ((1, 40, 2), 33, (1,), (1,), (0, 0), (1,)),              # 2 positions: 2-row tiles, an edge panel
    ((1, 32, 3, 3), 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 16, 4, 5), 21, (3, 3), (2, 2), (1, 0, 1, 1), (1, 1)),
    ((1, 8, 6, 6), 13, (3, 3), (1, 1), (0, 1, 0, 0), (2, 2)),   # dilation, asymmetric pads
    ((1, 8, 4, 4), 30, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((1, 96, 7, 7), 70, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),   # a 7x7 map's 1x1 conv
    ((1, 8, 8, 8), 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),   # 64 positions: the limit
    ((1, 300, 7, 7), 45, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),  # deep: 2700 columns of A
]


@pytest.fixture(autouse=True)
def _thin_over_blas(monkeypatch):
    """Every shape here takes the thin path on every CPU (on AVX2 CPUs maps from 17 positions
    leave it by default: `conv.THIN_MAX_POSITIONS_AVX2`)."""
    monkeypatch.setattr(conv, "THIN_MAX_POSITIONS_AVX2", conv_thin.MAX_POSITIONS)


@pytest.fixture
def thin_calls(monkeypatch):
    calls = []
    real = conv_thin.ThinConv.__call__
    monkeypatch.setattr(conv_thin.ThinConv, "__call__",
                        lambda self, *a, **k: calls.append(self.y_shape[1]) or real(self, *a, **k))
    return calls


@pytest.mark.parametrize("const_weight", [True, False])
@pytest.mark.parametrize("epilogue", ["none", "relu", "clip", "silu", "residual_relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[0])) + f"_m{s[1]}")
def test_matches_onnxruntime(thin_calls, shape, epilogue, const_weight):
    model, feeds = _model(*shape, epilogue, const_weight=const_weight)
    ours = ep_core.InferenceSession(model, providers=["cpu"])
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    for _ in range(2):   # the second run reuses the packed weight and the cached index
        np.testing.assert_allclose(ours.run(None, feeds)[0], want, **TOL)
    assert thin_calls, "the thin path was not taken"


@pytest.mark.parametrize("split", ["columns", "columns_pool"])
def test_threads_split_the_output_channels(monkeypatch, thin_calls, split):
    from compiled_threads import threads_via
    threads_via(monkeypatch, split)
    monkeypatch.setattr(conv_thin, "PAR_MIN_MACS", 1)
    model, feeds = _model((1, 64, 7, 7), 200, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), "residual_relu")
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = 2
    ours = ep_core.InferenceSession(model, opts, providers=["cpu"]).run(None, feeds)[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, want, **TOL)
    assert thin_calls


def test_more_positions_keep_the_other_paths(thin_calls):
    model, feeds = _model((1, 16, 80), 16, (3,), (1,), (1, 1), (1,), "none")
    ep_core.InferenceSession(model, providers=["cpu"]).run(None, feeds)
    assert not thin_calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, thin", [(((1, 64, 3), 64, (3,)), True), (((1, 64, 7, 7), 64, (1, 1)), False)],
                         ids=["3_positions", "7x7"])
def test_avx2_takes_7x7_maps_elsewhere(monkeypatch, thin_calls, shape, thin, threads):
    """On AVX2 CPUs a 7x7 map leaves the thin path (for im2col + BLAS at one thread, the
    implicit conv at two) and a streaming step's few positions keep it."""
    monkeypatch.setattr(conv, "THIN_MAX_POSITIONS_AVX2", 16)
    monkeypatch.setattr(microkernel, "beats_blas", lambda: False)
    x_shape, m, ks = shape
    pads = (0,) * 2 * len(ks) if ks[0] == 1 else (1,) * 2 * len(ks)
    model, feeds = _model(x_shape, m, ks, (1,) * len(ks), pads, (1,) * len(ks), "relu")
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = threads
    ours = ep_core.InferenceSession(model, opts, providers=["cpu"]).run(None, feeds)[0]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(ours, want, **TOL)
    assert bool(thin_calls) == thin
