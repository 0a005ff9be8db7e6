"""Real architectures (random weights, fixed seeds) through our CPU provider vs onnxruntime.

The models come from `benchmarks.models` (ResNet-50, MobileNetV2, BERT-base, GPT-2 decoder step
with KV cache, LSTM, GRU, scikit-learn pipelines via skl2onnx). onnxruntime is the oracle:
every float output must satisfy max|ours - ort| <= 1e-3 * max|ort| + 1e-5; integer outputs
(class labels) must match exactly.
"""
from __future__ import annotations

import gc
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ep_core  # noqa: E402
from benchmarks import models as M  # noqa: E402

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

RTOL, ATOL = 1e-3, 1e-5
# Models whose test takes > 30 s on a 2-core machine get @pytest.mark.slow (none so far: the
# largest, GPT-2 and BERT, take ~15 s including building the 110-125 M random weights).
SLOW: set[str] = set()


def _compare(name: str, outs: list, refs: list, output_names: list[str]) -> dict[str, float]:
    errors = {}
    assert len(outs) == len(refs)
    for out_name, o, r in zip(output_names, outs, refs):
        o = np.asarray(o)
        assert o.shape == r.shape, f"{name}/{out_name}: shape {o.shape} vs onnxruntime {r.shape}"
        assert o.dtype == r.dtype, f"{name}/{out_name}: dtype {o.dtype} vs onnxruntime {r.dtype}"
        if r.dtype.kind == "f":
            assert np.isfinite(o).all(), f"{name}/{out_name}: non-finite values"
            scale = float(np.abs(r).max())
            err = float(np.abs(o.astype(np.float64) - r.astype(np.float64)).max())
            assert err <= RTOL * scale + ATOL, (
                f"{name}/{out_name}: max |ours - ort| = {err:.3g} > {RTOL} * {scale:.3g} + {ATOL}")
            errors[out_name] = err / max(scale, 1e-30)
        else:
            np.testing.assert_array_equal(o, r, err_msg=f"{name}/{out_name}")
            errors[out_name] = 0.0
    return errors


def _params():
    for name, spec in M.MODELS.items():
        marks = [pytest.mark.slow] if name in SLOW else []
        missing = spec.missing()
        if missing:
            marks.append(pytest.mark.skip(reason=f"builder needs {missing} (pip install -e '.[dev]')"))
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_model_matches_onnxruntime(name: str) -> None:
    warnings.filterwarnings("ignore", message="provider 'cuda' is not available")
    spec = M.MODELS[name]
    model = spec.builder()
    feeds = spec.feeds()
    ref_sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = ref_sess.run(None, feeds)
    del ref_sess
    sess = ep_core.InferenceSession(model, providers=["cpu"])
    del model
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, feeds)
    errors = _compare(name, outs, refs, names)
    # A second run reuses the plan (packed weights, cached state) and must give the same result.
    again = sess.run(None, feeds)
    for a, b in zip(outs, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print(f"{name}: max relative error per output {errors}")
    del sess, outs, again, refs
    gc.collect()


def test_model_catalogue() -> None:
    """Every category the issue names is present, with the sizes it describes."""
    cats = {s.category for s in M.MODELS.values()}
    assert {"cnn", "transformer", "rnn", "ml"} <= cats
    assert M.MODELS["bert_base"].feeds()["input_ids"].shape == (1, 128)
    g = M.MODELS["gpt2_decoder_step"].feeds()
    assert sum(k.startswith("past_key_values") for k in g) == 24
