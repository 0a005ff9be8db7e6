"""Tree ensembles (legacy TreeEnsembleRegressor / TreeEnsembleClassifier) against onnxruntime on
random trees: each branch mode (the fast uniform walk) and mixed modes (the general walk), NaN
inputs with missing_value_tracks_true, inputs equal to thresholds, every aggregate."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ep_core

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

FEATURES, ROWS = 6, 200


def _random_trees(rng, n_trees: int, depth: int, modes: list[str]) -> dict:
    """Complete binary trees in the legacy nodes_* encoding; leaves listed in attribute order."""
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values",
                         "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids",
                         "nodes_missing_value_tracks_true")}
    leaves = []
    thresholds = np.round(rng.standard_normal(64), 1)  # few distinct values: inputs hit them exactly
    for t in range(n_trees):
        n_nodes = 2 ** (depth + 1) - 1
        for i in range(n_nodes):
            is_leaf = i >= 2 ** depth - 1
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(i)
            a["nodes_featureids"].append(int(rng.integers(FEATURES)))
            a["nodes_values"].append(float(rng.choice(thresholds)))
            a["nodes_modes"].append("LEAF" if is_leaf else str(rng.choice(modes)))
            a["nodes_truenodeids"].append(0 if is_leaf else 2 * i + 1)
            a["nodes_falsenodeids"].append(0 if is_leaf else 2 * i + 2)
            a["nodes_missing_value_tracks_true"].append(int(rng.integers(2)))
            if is_leaf:
                leaves.append((t, i))
    return a, leaves


def _inputs(rng) -> np.ndarray:
    x = np.round(rng.standard_normal((ROWS, FEATURES)), 1).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x


def _run_both(node, outputs, x):
    graph = helper.make_graph([node], "trees",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [ROWS, FEATURES])],
                              outputs)
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    data = model.SerializeToString()
    ours = ep_core.InferenceSession(data, providers=["cpu"]).run(None, {"X": x})
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"X": x})
    return ours, ref


MODE_SETS = [["BRANCH_LEQ"], ["BRANCH_LT"], ["BRANCH_GTE"], ["BRANCH_GT"],
             ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_EQ", "BRANCH_NEQ", "BRANCH_GT"]]


@pytest.mark.parametrize("modes", MODE_SETS, ids=lambda m: "+".join(v[7:] for v in m))
@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
def test_regressor_matches_onnxruntime(modes, aggregate):
    rng = np.random.default_rng(len(modes) * 31 + len(aggregate))
    attrs, leaves = _random_trees(rng, n_trees=7, depth=4, modes=modes)
    n_targets = 2
    targets = [(t, i, k) for t, i in leaves for k in range(n_targets)]
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=n_targets,
        aggregate_function=aggregate, target_treeids=[t for t, _, _ in targets],
        target_nodeids=[i for _, i, _ in targets], target_ids=[k for _, _, k in targets],
        target_weights=rng.standard_normal(len(targets)).round(2).tolist(), **attrs)
    (ours,), (ref,) = _run_both(node, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [ROWS, n_targets])],
                                _inputs(rng))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modes", MODE_SETS, ids=lambda m: "+".join(v[7:] for v in m))
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("string_labels", [False, True], ids=["int_labels", "str_labels"])
def test_classifier_matches_onnxruntime(modes, classes, string_labels):
    rng = np.random.default_rng(len(modes) * 17 + classes)
    attrs, leaves = _random_trees(rng, n_trees=9, depth=5, modes=modes)
    labels = (dict(classlabels_strings=[f"c{k}" for k in range(classes)]) if string_labels
              else dict(classlabels_int64s=list(range(10, 10 + classes))))
    votes = [(t, i, k) for t, i in leaves for k in range(classes)]
    node = helper.make_node(
        "TreeEnsembleClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
        **labels, class_treeids=[t for t, _, _ in votes],
        class_nodeids=[i for _, i, _ in votes], class_ids=[k for _, _, k in votes],
        # Unrounded weights: exact score ties would make the label depend on summation order.
        class_weights=rng.random(len(votes)).tolist(), post_transform="SOFTMAX", **attrs)
    outs = [helper.make_tensor_value_info("label", TensorProto.STRING if string_labels else TensorProto.INT64,
                                          [ROWS]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [ROWS, classes])]
    (label, scores), (rlabel, rscores) = _run_both(node, outs, _inputs(rng))
    np.testing.assert_allclose(scores, rscores, rtol=1e-5, atol=1e-6)
    if classes == 2 and not string_labels:
        # With votes for both of two int labels onnxruntime returns its positive/negative flag
        # (1/0) instead of the label (tree_ensemble_aggregator.h, _set_score_binary); we take
        # the same decision and return the label it stands for.
        assert set(np.unique(rlabel)) <= {0, 1}
        rlabel = np.asarray(labels["classlabels_int64s"])[rlabel]
    np.testing.assert_array_equal(label, rlabel)


def test_feature_outside_the_input_is_an_error():
    rng = np.random.default_rng(3)
    attrs, leaves = _random_trees(rng, n_trees=2, depth=2, modes=["BRANCH_LEQ"])
    attrs["nodes_featureids"][0] = FEATURES + 2
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=1,
        target_treeids=[t for t, _ in leaves], target_nodeids=[i for _, i in leaves],
        target_ids=[0] * len(leaves), target_weights=[1.0] * len(leaves), **attrs)
    graph = helper.make_graph([node], "trees",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [ROWS, FEATURES])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [ROWS, 1])])
    model = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    sess = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    with pytest.raises(ep_core.errors.Fail, match="feature 8 but the input has 6 features"):
        sess.run(None, {"X": _inputs(rng)})


@pytest.mark.parametrize("modes", MODE_SETS[:4], ids=lambda m: m[0][7:])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_walk_equals_numpy_walk(monkeypatch, modes, threads):
    """The compiled walk (ep_cpu.tree_jit, rows split over threads) gives bit-identical sums."""
    from ep_cpu import tree_jit
    from ep_cpu.kernels import ml_tree
    if not tree_jit.AVAILABLE:
        pytest.skip("numba missing")
    monkeypatch.setattr(tree_jit, "PAR_MIN_VISITS", 1)
    rng = np.random.default_rng(11)
    attrs, leaves = _random_trees(rng, n_trees=5, depth=4, modes=modes)
    targets = [(t, i, k) for t, i in leaves for k in range(3)]
    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=3,
        aggregate_function="SUM", target_treeids=[t for t, _, _ in targets],
        target_nodeids=[i for _, i, _ in targets], target_ids=[k for _, _, k in targets],
        target_weights=rng.standard_normal(len(targets)).tolist(), **attrs)
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 3])])
    data = helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]).SerializeToString()
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ep_core.InferenceSession(data, opts, providers=["cpu"])
    x = _inputs(rng)
    calls = []
    real = tree_jit.Walk.walk_sum
    monkeypatch.setattr(tree_jit.Walk, "walk_sum", lambda *a: calls.append(1) or real(*a))
    compiled = sess.run(None, {"X": x})[0]
    monkeypatch.setattr(ml_tree, "JIT_MIN_VISITS", 1 << 60)
    plain = sess.run(None, {"X": x})[0]
    assert len(calls) == 1
    np.testing.assert_array_equal(compiled, plain)


@pytest.mark.parametrize("threshold_dtype,expect", [(np.float32, 1.0), (np.float64, 2.0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_walk_compares_at_the_thresholds_precision(monkeypatch, threshold_dtype, expect,
                                                           threads):
    """float32 0.1 is above float64 0.1 but equal to float32 0.1: a double ensemble sends it the
    false way, a float one the true way, in the compiled walk (float32 and float64 forms of the
    callback) as in the numpy walk."""
    from ep_cpu import tree_jit
    from ep_cpu.kernels import ml_tree
    if not tree_jit.AVAILABLE:
        pytest.skip("numba missing")
    monkeypatch.setattr(tree_jit, "PAR_MIN_VISITS", 1)
    forest = ml_tree.Forest([0, 0, 0], [0.1, 0.0, 0.0], [ml_tree.LEQ, ml_tree.LEAF, ml_tree.LEAF],
                            [1, 0, 0], [2, 0, 0], [False] * 3, [0], [1, 2], [0, 0], [1.0, 2.0], 1,
                            threshold_dtype=threshold_dtype)
    x = np.full((300, 1), 0.1, np.float32)
    calls = []
    real = tree_jit.Walk.walk_sum
    monkeypatch.setattr(tree_jit.Walk, "walk_sum", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(ml_tree, "get_num_threads", lambda: threads)
    compiled, _ = forest.aggregate(x, "SUM")
    monkeypatch.setattr(ml_tree, "JIT_MIN_VISITS", 1 << 60)
    plain, _ = forest.aggregate(x, "SUM")
    assert calls == [threads]
    np.testing.assert_array_equal(compiled, np.full((300, 1), expect))
    np.testing.assert_array_equal(plain, compiled)
