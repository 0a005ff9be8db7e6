"""Models the quantization tests train or build: classifiers on scikit-learn's digits (an MLP fit
by MLPClassifier; a small CNN whose fixed random convolutions feed a head fit by
LogisticRegression), a toy self-attention block (MatMuls of two activations) and a GPT-2-shaped
decoder stack of MatMuls for the 4-bit tests. All built with onnx.helper."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "model", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


@functools.lru_cache(maxsize=None)
def digits():
    """(X_train, X_test, y_train, y_test): 8x8 digits scaled to [0, 1], a fixed 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, d.target, test_size=0.3, random_state=0, stratify=d.target))


@functools.lru_cache(maxsize=None)
def mlp_classifier(hidden: int = 128) -> onnx.ModelProto:
    """X (N, 64) -> MatMul + Add -> Relu -> Gemm(transB) -> logits (N, 10); weights from MLPClassifier."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    xtr, _, ytr, _ = digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=200, random_state=0).fit(xtr, ytr)
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
             helper.make_node("Gemm", ["h2", "W2", "b2"], ["logits"], name="fc2", transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("X", F32, ["N", 64])],
                  [helper.make_tensor_value_info("logits", F32, ["N", 10])],
                  {"W1": w1, "b1": b1, "W2": np.ascontiguousarray(w2.T), "b2": b2})


def _cnn_features_nodes():
    return [helper.make_node("Reshape", ["X", "img_shape"], ["img"], name="to_image"),
            helper.make_node("Conv", ["img", "C1", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "C2", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
            helper.make_node("MaxPool", ["r2"], ["p2"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["p2"], ["feat"], name="flatten")]


@functools.lru_cache(maxsize=None)
def cnn_classifier() -> onnx.ModelProto:
    """Two fixed random 3x3 convolutions (+Relu, MaxPool) whose features feed a Gemm head fit by
    LogisticRegression: a classifier with Conv layers that needs no deep-learning framework."""
    import ep_core
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    inits = {"img_shape": np.array([-1, 1, 8, 8], np.int64),
             "C1": (rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32),
             "c1b": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "C2": (rng.standard_normal((16, 8, 3, 3)) / 8).astype(np.float32),
             "c2b": (rng.standard_normal(16) * 0.1).astype(np.float32)}
    x_in = helper.make_tensor_value_info("X", F32, ["N", 64])
    feat_model = _model(_cnn_features_nodes(), [x_in], [helper.make_tensor_value_info("feat", F32, ["N", 256])], inits)
    xtr, _, ytr, _ = digits()
    sess = ep_core.InferenceSession(feat_model.SerializeToString(), providers=["cpu"])
    feats = sess.run(None, {"X": xtr})[0]
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(feats, ytr)
    inits.update(W=clf.coef_.astype(np.float32), b=clf.intercept_.astype(np.float32))
    nodes = _cnn_features_nodes() + [helper.make_node("Gemm", ["feat", "W", "b"], ["logits"], name="head", transB=1)]
    return _model(nodes, [x_in], [helper.make_tensor_value_info("logits", F32, ["N", 10])], inits)


def attention_block(d: int = 16, seq: int = 8, seed: int = 0) -> onnx.ModelProto:
    """X (B, seq, d) -> q, k, v projections -> softmax(q k^T / sqrt d) v -> out projection."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)  # noqa: E731
    inits = {"Wq": w(d, d), "Wk": w(d, d), "Wv": w(d, d), "Wo": w(d, d), "scale": np.float32(1 / np.sqrt(d))}
    nodes = [helper.make_node("MatMul", ["X", "Wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["X", "Wk"], ["k"], name="k_proj"),
             helper.make_node("MatMul", ["X", "Wv"], ["v"], name="v_proj"),
             helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale_scores"),
             helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["ctx"], name="context"),
             helper.make_node("MatMul", ["ctx", "Wo"], ["Y"], name="o_proj")]
    return _model(nodes, [helper.make_tensor_value_info("X", F32, ["B", seq, d])],
                  [helper.make_tensor_value_info("Y", F32, ["B", seq, d])], inits)


def gpt2_shaped_decoder(d: int = 256, layers: int = 2, vocab: int = 512, seed: int = 0) -> onnx.ModelProto:
    """Embedding Gather, then per layer LayerNorm -> qkv MatMul (d, 3d) -> (attention mixing
    omitted: a residual of the split q) -> proj (d, d); LayerNorm -> fc (d, 4d) -> Gelu-ish Tanh ->
    fc (4d, d); final LayerNorm and an lm_head (d, vocab). The MatMul shapes of GPT-2."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)  # noqa: E731
    inits = {"wte": w(vocab, d), "lm_head": w(d, vocab), "ln_g": np.ones(d, np.float32), "ln_b": np.zeros(d, np.float32),
             "split": np.array([d, d, d], np.int64)}
    nodes = [helper.make_node("Gather", ["wte", "ids"], ["h0"], name="embed")]
    h = "h0"
    for i in range(layers):
        inits.update({f"qkv{i}": w(d, 3 * d), f"proj{i}": w(d, d), f"fc{i}": w(d, 4 * d), f"fcp{i}": w(4 * d, d)})
        nodes += [helper.make_node("LayerNormalization", [h, "ln_g", "ln_b"], [f"l{i}a"], name=f"ln{i}a", axis=-1),
                  helper.make_node("MatMul", [f"l{i}a", f"qkv{i}"], [f"qkv_out{i}"], name=f"attn_qkv{i}"),
                  helper.make_node("Split", [f"qkv_out{i}", "split"], [f"q{i}", f"k{i}", f"v{i}"], name=f"split{i}", axis=-1),
                  helper.make_node("Mul", [f"q{i}", f"k{i}"], [f"qk{i}"], name=f"mix{i}"),
                  helper.make_node("Add", [f"qk{i}", f"v{i}"], [f"a{i}"], name=f"mix_add{i}"),
                  helper.make_node("MatMul", [f"a{i}", f"proj{i}"], [f"ao{i}"], name=f"attn_proj{i}"),
                  helper.make_node("Add", [h, f"ao{i}"], [f"r{i}"], name=f"res{i}a"),
                  helper.make_node("LayerNormalization", [f"r{i}", "ln_g", "ln_b"], [f"l{i}b"], name=f"ln{i}b", axis=-1),
                  helper.make_node("MatMul", [f"l{i}b", f"fc{i}"], [f"f{i}"], name=f"mlp_fc{i}"),
                  helper.make_node("Tanh", [f"f{i}"], [f"t{i}"], name=f"act{i}"),
                  helper.make_node("MatMul", [f"t{i}", f"fcp{i}"], [f"m{i}"], name=f"mlp_proj{i}"),
                  helper.make_node("Add", [f"r{i}", f"m{i}"], [f"h{i + 1}"], name=f"res{i}b")]
        h = f"h{i + 1}"
    nodes += [helper.make_node("LayerNormalization", [h, "ln_g", "ln_b"], ["lf"], name="ln_f", axis=-1),
              helper.make_node("MatMul", ["lf", "lm_head"], ["logits"], name="lm_head_mm")]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
                  [helper.make_tensor_value_info("logits", F32, ["B", "T", vocab])], inits)


class ListReader:
    """A CalibrationDataReader over a list of feed dicts (duck-typed: works for both libraries)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches, self.pos = batches, 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return self.batches[self.pos - 1]

    def rewind(self) -> None:
        self.pos = 0


def digit_batches(n: int = 8, size: int = 64) -> list[dict]:
    xtr = digits()[0]
    return [{"X": xtr[i * size:(i + 1) * size]} for i in range(n)]


def ours(path, feeds):
    """Our CPU session's first output on `feeds`."""
    import ep_core
    return ep_core.InferenceSession(str(path), providers=["cpu"]).run(None, feeds)[0]


def theirs(path, feeds):
    """onnxruntime's (the oracle's) first output on `feeds`."""
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def accuracy(logits) -> float:
    """Share of the held-out digits classified right."""
    return float((logits.argmax(axis=1) == digits()[3]).mean())
