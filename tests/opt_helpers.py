"""Shared helpers for the optimizer tests: run a model at two levels and compare."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_core import GraphOptimizationLevel as L

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64


def randn(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def options(level=L.ORT_ENABLE_ALL, disabled=(), **kw) -> ep_core.SessionOptions:
    so = ep_core.SessionOptions()
    so.graph_optimization_level = level
    so.disabled_optimizers = list(disabled)
    for k, v in kw.items():
        setattr(so, k, v)
    return so


def ops(sess) -> list[str]:
    """Op types of the session's final graph (copy nodes included), in order."""
    return [op for _, op, _ in sess.get_placement()["nodes"]]


def init(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    vi = lambda spec: helper.make_tensor_value_info(*spec)  # noqa: E731
    graph = helper.make_graph(nodes, "test", [vi(i) for i in inputs], [vi(o) for o in outputs],
                              initializer=list(inits))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    return helper.make_model(graph, opset_imports=imports)


def session(m, so=None, providers=("cpu",)) -> ep_core.InferenceSession:
    """A CPU-only session (other tests register extra providers that would otherwise join)."""
    data = m if isinstance(m, bytes) else m.SerializeToString()
    return ep_core.InferenceSession(data, so or options(), providers=list(providers))


def compare(m, feeds, level=L.ORT_ENABLE_ALL, disabled=(), providers=("cpu",), rtol=1e-5, atol=1e-6):
    """Run at DISABLE_ALL and at `level`; outputs must match (dtype, shape, values).

    Returns (ops before, ops after)."""
    data = m.SerializeToString()
    ref_sess = session(data, options(L.ORT_DISABLE_ALL), providers)
    sess = session(data, options(level, disabled), providers)
    ref = ref_sess.run(None, feeds)
    out = sess.run(None, feeds)
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    return ops(ref_sess), ops(sess)


def bert_layer(rng, batch=2, seq=5, hidden=8, heads=2, opset=13, mask=True):
    """One BERT encoder layer as exporters emit it (decomposed LayerNorm and Gelu)."""
    hd = hidden // heads
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    inits = [init(n, w(hidden, hidden)) for n in ("wq", "wk", "wv", "wo")]
    inits += [init(n, w(hidden)) for n in ("bq", "bk", "bv", "bo", "b2")]
    inits += [init("w1", w(hidden, 2 * hidden)), init("b1", w(2 * hidden)), init("w2", w(2 * hidden, hidden))]
    inits += [init("heads_shape", np.array([0, 0, heads, hd], np.int64)),
              init("merge_shape", np.array([0, 0, hidden], np.int64)),
              init("sqrt_d", np.array(np.sqrt(hd), np.float32)), init("one", np.array(1.0, np.float32)),
              init("neg", np.array(-10000.0, np.float32)), init("two", np.array(2.0, np.float32)),
              init("eps", np.array(1e-5, np.float32)), init("half", np.array(0.5, np.float32)),
              init("sqrt2", np.array(np.sqrt(2.0), np.float32)),
              init("ax1", np.array([1], np.int64)), init("ax2", np.array([2], np.int64))]
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_mm"]),
                  helper.make_node("Add", [f"{p}_mm", f"b{p}"], [f"{p}_add"]),
                  helper.make_node("Reshape", [f"{p}_add", "heads_shape"], [f"{p}_rs"]),
                  helper.make_node("Transpose", [f"{p}_rs"], [f"{p}_t"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["qk"]),
              helper.make_node("Div", ["qk", "sqrt_d"], ["scores"])]
    if mask:
        nodes += [helper.make_node("Unsqueeze", ["mask", "ax1"], ["m1"]),
                  helper.make_node("Unsqueeze", ["m1", "ax2"], ["m2"]),
                  helper.make_node("Cast", ["m2"], ["mf"], to=F32),
                  helper.make_node("Sub", ["one", "mf"], ["minv"]),
                  helper.make_node("Mul", ["minv", "neg"], ["madd"]),
                  helper.make_node("Add", ["scores", "madd"], ["masked"])]
    nodes += [helper.make_node("Softmax", ["masked" if mask else "scores"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["attn"]),
              helper.make_node("MatMul", ["attn", "wo"], ["o_mm"]),
              helper.make_node("Add", ["o_mm", "bo"], ["o_add"]),
              helper.make_node("Add", ["o_add", "x"], ["res1"])]
    nodes += layer_norm_nodes("res1", "ln1", hidden, inits, rng)
    nodes += [helper.make_node("MatMul", ["ln1", "w1"], ["f_mm"]),
              helper.make_node("Add", ["f_mm", "b1"], ["f_add"]),
              helper.make_node("Div", ["f_add", "sqrt2"], ["g_div"]),
              helper.make_node("Erf", ["g_div"], ["g_erf"]),
              helper.make_node("Add", ["g_erf", "one"], ["g_add"]),
              helper.make_node("Mul", ["f_add", "g_add"], ["g_mul"]),
              helper.make_node("Mul", ["g_mul", "half"], ["gelu"]),
              helper.make_node("MatMul", ["gelu", "w2"], ["f2_mm"]),
              helper.make_node("Add", ["f2_mm", "b2"], ["f2_add"]),
              helper.make_node("Add", ["f2_add", "ln1"], ["res2"])]
    nodes += layer_norm_nodes("res2", "y", hidden, inits, rng)
    inputs = [("x", F32, [batch, seq, hidden])] + ([("mask", I64, [batch, seq])] if mask else [])
    m = model(nodes, inputs, [("y", F32, [batch, seq, hidden])], inits, opset=opset)
    feeds = {"x": rng.standard_normal((batch, seq, hidden)).astype(np.float32)}
    if mask:
        mk = np.ones((batch, seq), np.int64)
        mk[0, -2:] = 0
        feeds["mask"] = mk
    return m, feeds


def layer_norm_nodes(x: str, out: str, hidden: int, inits: list, rng) -> list:
    """LayerNorm over the last axis as PyTorch exports it (ReduceMean/Sub/Pow/.../Add)."""
    p = out + "_"
    inits += [init(p + "gamma", 1 + 0.1 * rng.standard_normal(hidden).astype(np.float32)),
              init(p + "beta", 0.1 * rng.standard_normal(hidden).astype(np.float32))]
    return [helper.make_node("ReduceMean", [x], [p + "mean"], axes=[-1]),
            helper.make_node("Sub", [x, p + "mean"], [p + "d"]),
            helper.make_node("Pow", [p + "d", "two"], [p + "sq"]),
            helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[-1]),
            helper.make_node("Add", [p + "var", "eps"], [p + "ve"]),
            helper.make_node("Sqrt", [p + "ve"], [p + "std"]),
            helper.make_node("Div", [p + "d", p + "std"], [p + "n"]),
            helper.make_node("Mul", [p + "n", p + "gamma"], [p + "g"]),
            helper.make_node("Add", [p + "g", p + "beta"], [out])]
