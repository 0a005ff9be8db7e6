"""com.microsoft Inverse, CDist, CropAndResize, ExpandDims, MurmurHash3, Tokenizer and
WordConvEmbedding vs onnxruntime's CPU kernels."""
from __future__ import annotations

import numpy as np
import pytest

from test_contrib_common import check, rand


@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 5, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_inverse(rng, shape, dtype):
    x = (rand(rng, *shape) + 3 * np.eye(shape[-1], dtype=np.float32)).astype(dtype)
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    check("Inverse", [("x", x)], rtol=tol, atol=tol)


@pytest.mark.parametrize("metric", [None, "sqeuclidean", "euclidean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cdist(rng, metric, dtype):
    attrs = {} if metric is None else {"metric": metric}
    check("CDist", [("a", rand(rng, 5, 7, dtype=dtype)), ("b", rand(rng, 4, 7, dtype=dtype))], attrs=attrs,
          rtol=1e-4, atol=1e-4)


def test_cdist_identical_rows_give_zero(rng):
    a = rand(rng, 3, 6)
    check("CDist", [("a", a), ("b", a.copy())], attrs={"metric": "euclidean"}, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("crop", [(3, 4), (1, 1), (5, 2)])
@pytest.mark.parametrize("extrapolation", [None, -1.5])
def test_crop_and_resize(rng, mode, crop, extrapolation):
    x = rand(rng, 2, 3, 8, 9)
    rois = np.array([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [-0.2, 0.5, 0.6, 1.3], [0.7, 0.6, 0.2, 0.1]],
                    np.float32)
    attrs = {"mode": mode}
    if extrapolation is not None:
        attrs["extrapolation_value"] = extrapolation
    check("CropAndResize", [("x", x), ("rois", rois), ("idx", np.array([0, 1, 1, 0], np.int32)),
                            ("crop", np.array(crop, np.int32))], attrs=attrs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_expand_dims(rng, axis):
    check("ExpandDims", [("x", rand(rng, 2, 3)), ("axis", np.array(axis, np.int32))])


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64])
@pytest.mark.parametrize("attrs", [{}, {"seed": 42}, {"positive": 0, "seed": 7}])
def test_murmur_hash3_numbers(rng, dtype, attrs):
    x = (rng.standard_normal((3, 5)) * 1e6).astype(dtype) if np.dtype(dtype).kind == "f" else \
        rng.integers(0, 2**31, (3, 5)).astype(dtype)
    check("MurmurHash3", [("x", x)], attrs=attrs)


@pytest.mark.parametrize("attrs", [{}, {"seed": 3, "positive": 0}])
def test_murmur_hash3_strings(attrs):
    x = np.array(["", "a", "ab", "abc", "abcd", "hello world", "naïve café"], dtype=object)
    check("MurmurHash3", [("x", x)], attrs=attrs)


TEXTS = np.array(["Hello World", "I love computer science !", "", "a  b", "naïve, café"], dtype=object)


@pytest.mark.parametrize("attrs", [
    dict(mark=0, pad_value="#", mincharnum=1, separators=[" "]),
    dict(mark=1, pad_value="#", mincharnum=1, separators=[" "]),
    dict(mark=0, pad_value="<pad>", mincharnum=2, separators=[" ", ","]),
    dict(mark=0, pad_value="#", mincharnum=1, separators=[""]),
    dict(mark=1, pad_value="#", mincharnum=1, tokenexp="[a-zA-Z]+"),
    dict(mark=0, pad_value="#", mincharnum=1, tokenexp="."),
    dict(mark=0, pad_value="#", mincharnum=3, tokenexp="[a-z]+"),
    dict(mark=1, pad_value="#", mincharnum=1, separators=[" +"]),
])
def test_tokenizer(attrs):
    check("Tokenizer", [("x", TEXTS)], attrs=attrs)


def test_tokenizer_2d_input():
    check("Tokenizer", [("x", TEXTS[:4].reshape(2, 2))], attrs=dict(mark=1, pad_value="#", mincharnum=1,
                                                                     separators=[" "]))


@pytest.mark.parametrize("texts", [["", ""], ["a d", "x"]])
def test_tokenizer_no_tokens_gives_empty_axis(texts):
    check("Tokenizer", [("x", np.array(texts, dtype=object))],
          attrs=dict(mark=1, pad_value="#", mincharnum=2, separators=[" "]))


@pytest.mark.parametrize("window", [1, 2, 3])
def test_word_conv_embedding(rng, window):
    s, wl, vocab, e, m = 5, 6, 20, 4, 7
    seq = rng.integers(1, vocab, (s, wl)).astype(np.int32)
    seq[1, 3:] = 0       # a short word
    seq[2, 1:] = 0       # one char (shorter than some windows)
    seq[3, 4] = 0        # a gap
    ins = [("seq", seq), ("w", rand(rng, m, 1, window, e)), ("b", rand(rng, m)), ("c", rand(rng, vocab, e))]
    check("WordConvEmbedding", ins, consts=("w", "b", "c"), rtol=1e-5, atol=2e-6)
