"""Session options: offline optimized models, parallel execution, intra-op threads, logging."""
import logging
import os
import threading
import time

import numpy as np
import onnx
import pytest
from foreign_provider import ForeignProvider
from onnx import helper
from opt_helpers import randn, F32, bert_layer, init, model, ops, options, session

import ep_core
from ep_core import ExecutionMode
from ep_core import GraphOptimizationLevel as L
from ep_core.custom_ops import register_custom_op
from ep_core.errors import Fail

ep_core.register_provider("foreign", ForeignProvider)
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def conv_net(rng):
    """Conv+BN+Relu, a residual Add and a Gemm head: weights big enough to go external."""
    inits = [init("w1", randn(rng, 8, 3, 3, 3)),
             init("w2", randn(rng, 8, 8, 3, 3)),
             init("s", rng.uniform(0.5, 2, 8).astype(np.float32)), init("bb", randn(rng, 8)),
             init("mu", randn(rng, 8)), init("var", rng.uniform(0.5, 2, 8).astype(np.float32)),
             init("wf", randn(rng, 8 * 6 * 6, 5)), init("bf", randn(rng, 5)),
             init("shape", np.array([1, -1], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "mu", "var"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["mm"]),
             helper.make_node("Add", ["mm", "bf"], ["y"])]
    m = model(nodes, [("x", F32, [1, 3, 6, 6])], [("y", F32, [1, 5])], inits)
    return m, {"x": randn(rng, 1, 3, 6, 6)}


# --- offline mode --------------------------------------------------------------------------------

def test_offline_model_is_valid_onnx_and_round_trips(rng, tmp_path, monkeypatch):
    m, feeds = conv_net(rng)
    path = str(tmp_path / "net.opt.onnx")
    first = session(m, options(optimized_model_filepath=path))
    saved = onnx.load(path)                                  # external data loaded by onnx
    onnx.checker.check_model(path)
    imports = {o.domain: o.version for o in saved.opset_import}
    assert imports.get("com.ep_core") == 1
    assert {p.key: p.value for p in saved.metadata_props}["ep_core.optimized"] == "1"
    assert [n.op_type for n in saved.graph.node] == ops(first) == ["FusedConv", "FusedConv", "Reshape", "Gemm"]
    assert os.path.exists(path + ".data")                  # the big weights are external
    assert {v.name for v in saved.graph.value_info} >= {"r1", "r2", "f"}

    ref = session(m, options(L.ORT_DISABLE_ALL)).run(None, feeds)[0]
    # Reloading skips the optimizer only: the model is validated like any other.
    import ep_core.load as load_module
    import ep_core.session as session_module
    monkeypatch.setattr(session_module, "rewrite_level1", lambda *a, **k: pytest.fail("re-optimized"))
    monkeypatch.setattr(session_module, "rewrite_assigned", lambda *a, **k: pytest.fail("re-optimized"))
    checked = []
    real_check = load_module.validate.check_graph
    monkeypatch.setattr(load_module.validate, "check_graph", lambda g: checked.append(g) or real_check(g))
    again = ep_core.InferenceSession(path, providers=["cpu"])
    assert checked, "an optimized model must still be validated"
    assert ops(again) == ops(first)
    np.testing.assert_array_equal(again.run(None, feeds)[0], first.run(None, feeds)[0])
    np.testing.assert_allclose(again.run(None, feeds)[0], ref, rtol=1e-4, atol=1e-4)


def test_offline_model_keeps_copy_nodes_in_our_domain(rng, tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Exp", ["r"], ["e"]),
             helper.make_node("Mul", ["e", "w"], ["y"])]
    m = model(nodes, [("x", F32, [2, 3])], [("y", F32, [2, 3])], [init("w", np.full((2, 3), 2, np.float32))])
    feeds = {"x": randn(rng, 2, 3)}
    path = str(tmp_path / "split.onnx")
    first = session(m, options(optimized_model_filepath=path), providers=["foreign", "cpu"])
    saved = onnx.load(path)
    onnx.checker.check_model(saved)
    copies = [(n.domain, n.op_type) for n in saved.graph.node if n.op_type.startswith("Memcpy")]
    assert copies and all(d == "com.ep_core" for d, _ in copies)
    for providers in (["foreign", "cpu"], ["cpu"]):
        again = ep_core.InferenceSession(path, providers=providers)
        np.testing.assert_array_equal(again.run(None, feeds)[0], first.run(None, feeds)[0])
    assert ops(ep_core.InferenceSession(path, providers=["cpu"])) == ["Relu", "Exp", "Mul"]


def test_offline_bert_layer_round_trip(rng, tmp_path):
    m, feeds = bert_layer(rng)
    path = str(tmp_path / "bert.onnx")
    first = session(m, options(optimized_model_filepath=path))
    onnx.checker.check_model(path)
    again = ep_core.InferenceSession(path, providers=["cpu"])
    assert "Attention" in ops(again)
    np.testing.assert_array_equal(again.run(None, feeds)[0], first.run(None, feeds)[0])


def test_offline_ir3_initializers_stay_constants(tmp_path):
    """An IR 3 model lists its initializers as graph inputs and they are constants; the optimized
    model is written at IR >= 4, where a listed initializer could be fed: it lists x alone."""
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", F32, [4]),
                           helper.make_tensor_value_info("w", F32, [4])],
                          [helper.make_tensor_value_info("y", F32, [4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 3
    path = str(tmp_path / "ir3.opt.onnx")
    first = ep_core.InferenceSession(m.SerializeToString(), options(optimized_model_filepath=path),
                                     providers=["cpu"])
    saved = onnx.load(path)
    assert saved.ir_version >= 4 and [i.name for i in saved.graph.input] == ["x"]
    again = ep_core.InferenceSession(path, providers=["cpu"])
    assert [i.name for i in again.get_inputs()] == ["x"]
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(again.run(None, {"x": x})[0], first.run(None, {"x": x})[0])


@pytest.mark.skipif(not os.path.exists(os.path.join(LIGHT, "light_squeezenet.onnx")), reason="no light models")
def test_offline_light_model_round_trip_and_counts(tmp_path):
    src = os.path.join(LIGHT, "light_squeezenet.onnx")
    path = str(tmp_path / "squeezenet.opt.onnx")
    first = ep_core.InferenceSession(src, options(optimized_model_filepath=path), providers=["cpu"])
    # (the level-3 channel-blocked chain adds its two layout changes to the fused nodes)
    names = [op for op in ops(first) if op not in ("ReorderInput", "ReorderOutput")]
    assert len(names) <= 39 and not {"ConstantOfShape", "Unsqueeze", "Dropout"} & set(names)
    again = ep_core.InferenceSession(path, providers=["cpu"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    name = first.get_inputs()[0].name
    np.testing.assert_array_equal(again.run(None, {name: x})[0], first.run(None, {name: x})[0])


# --- parallel execution ----------------------------------------------------------------------------

def branches_model(rng, n=4):
    inits, nodes, outs = [], [], []
    for k in range(n):
        inits.append(init(f"w{k}", randn(rng, 16, 16)))
        nodes += [helper.make_node("MatMul", ["x", f"w{k}"], [f"m{k}"]),
                  helper.make_node("Tanh", [f"m{k}"], [f"t{k}"]),
                  helper.make_node("MatMul", [f"t{k}", f"w{k}"], [f"u{k}"])]
        outs.append(f"u{k}")
    nodes += [helper.make_node("Concat", outs, ["c"], axis=1), helper.make_node("Relu", ["c"], ["y"])]
    return model(nodes, [("x", F32, [8, 16])], [("y", F32, [8, 16 * n]), ("u0", F32, [8, 16])], inits)


@pytest.mark.parametrize("threads", [0, 2, 3])
def test_parallel_equals_sequential(rng, threads):
    m = branches_model(rng)
    x = randn(rng, 8, 16)
    seq = session(m).run(None, {"x": x})
    par_sess = session(m, options(execution_mode=ExecutionMode.ORT_PARALLEL, inter_op_num_threads=threads))
    for _ in range(3):
        par = par_sess.run(None, {"x": x})
        for a, b in zip(seq, par):
            np.testing.assert_array_equal(a, b)
    assert par_sess.run(["u0"], {"x": x})[0].shape == (8, 16)


def test_parallel_runs_independent_nodes_concurrently():
    seen: list[int] = []

    def nap(x):
        seen.append(threading.get_ident())
        time.sleep(0.15)
        return x.copy()
    register_custom_op("Nap", nap, domain="test.parallel")
    nodes = [helper.make_node("Nap", ["x"], [f"n{k}"], domain="test.parallel") for k in range(4)]
    nodes.append(helper.make_node("Sum", [f"n{k}" for k in range(4)], ["y"]))
    m = model(nodes, [("x", F32, [3])], [("y", F32, [3])], domains=[("test.parallel", 1)])
    x = np.arange(3, dtype=np.float32)
    sess = session(m, options(execution_mode=ExecutionMode.ORT_PARALLEL, inter_op_num_threads=4))
    t0 = time.perf_counter()
    out = sess.run(None, {"x": x})[0]
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(out, 4 * x)
    assert len(set(seen)) > 1 and elapsed < 0.5          # sequential would take >= 0.6 s


def test_parallel_errors_name_the_node(rng):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Exp", ["x"], ["b"]),
             helper.make_node("MatMul", ["a", "b"], ["y"])]
    # A symbolic dim: shape inference cannot refuse the MatMul at load, the run fails.
    m = model(nodes, [("x", F32, [2, "n"])], [("y", F32, ["a", "b"])])
    sess = session(m, options(execution_mode=ExecutionMode.ORT_PARALLEL, inter_op_num_threads=2))
    with pytest.raises(Fail, match="MatMul"):
        sess.run(None, {"x": randn(rng, 2, 3)})


def test_intra_op_threads_limit_kernels_during_the_run():
    import threadpoolctl

    import ep_cpu.gemm as gemm
    observed = {}

    def probe(x):
        observed["gemm"] = gemm.get_num_threads()
        # BLAS libraries only: an OpenMP runtime another package loaded (sklearn's libgomp) runs
        # none of our kernels, and onnxruntime's intra-op setting leaves such pools alone too.
        observed["blas"] = {i["num_threads"] for i in threadpoolctl.threadpool_info()
                            if i["user_api"] == "blas"}
        return x
    register_custom_op("Probe", probe, domain="test.threads")
    m = model([helper.make_node("Probe", ["x"], ["y"], domain="test.threads")], [("x", F32, [2])],
              [("y", F32, [2])], domains=[("test.threads", 1)])
    before = gemm.get_num_threads()
    session(m, options(intra_op_num_threads=1)).run(None, {"x": np.ones(2, np.float32)})
    assert observed["gemm"] == 1 and observed["blas"] <= {1}
    assert gemm.get_num_threads() == before


def test_two_thread_runs_count_their_blas_hold_and_release_it():
    """Where the session holds BLAS to the calling thread (AVX2 from two threads: the convs run
    on numba's threads), `gemm.blas_holds` says so during the run, so large products take the
    pool's tiles; a one-thread run holds nothing, and after the runs no hold is left (a direct
    gemm call keeps BLAS's own threads)."""
    import ep_cpu.gemm as gemm
    from ep_cpu import microkernel, native_call
    observed = {}

    def probe(x):
        observed["holds"] = gemm.blas_holds
        return x
    register_custom_op("HoldProbe", probe, domain="test.threads")
    m = model([helper.make_node("HoldProbe", ["x"], ["y"], domain="test.threads")],
              [("x", F32, [2])], [("y", F32, [2])], domains=[("test.threads", 1)])
    expect_hold = native_call.parallel_ok() and microkernel.convs_beat_blas(2)
    session(m, options(intra_op_num_threads=2)).run(None, {"x": np.ones(2, np.float32)})
    assert observed["holds"] == (1 if expect_hold else 0)
    session(m, options(intra_op_num_threads=1)).run(None, {"x": np.ones(2, np.float32)})
    assert observed["holds"] == 0 and gemm.blas_holds == 0


@pytest.mark.parametrize("compiled", [True, False])
def test_blas_threads_are_limited_in_the_run_and_restored_after_it(compiled, monkeypatch):
    """BLAS's thread count is 1 inside a one-thread run and what it was after it, whether it is
    set through the compiled entry points (`native_call.set_blas_threads`) or, where a BLAS
    library has none, through ctypes; a count the caller set between runs (threadpoolctl) is
    the one restored."""
    import threadpoolctl

    from ep_cpu import blas_threads
    if not compiled:
        monkeypatch.setattr(blas_threads, "blas_entry_points", lambda: None)
    inside = []

    def probe(x):
        inside.append({i["num_threads"] for i in threadpoolctl.threadpool_info()
                       if i["user_api"] == "blas"})
        return x
    op = f"BlasProbe{int(compiled)}"   # (a custom op's registration is process-wide)
    register_custom_op(op, probe, domain="test.threads")
    m = model([helper.make_node(op, ["x"], ["y"], domain="test.threads")],
              [("x", F32, [2])], [("y", F32, [2])], domains=[("test.threads", 1)])
    sess = session(m, options(intra_op_num_threads=1))

    def counts():
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    if not counts():
        pytest.skip("no BLAS library threadpoolctl can see")
    with threadpoolctl.threadpool_limits(3, user_api="blas"):
        sess.run(None, {"x": np.ones(2, np.float32)})
        assert inside[-1] == {1} and counts() == {3}
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        sess.run(None, {"x": np.ones(2, np.float32)})
        assert inside[-1] == {1} and counts() == {2}


def test_a_run_ignores_float_errors_and_restores_the_callers_setting():
    """IEEE results (log(0) = -inf) come without numpy warnings inside a run, and the caller's
    np.errstate is what it was after it, also after a failed run."""
    import warnings
    m = model([helper.make_node("Log", ["x"], ["y"])], [("x", F32, [2])], [("y", F32, [2])])
    sess = session(m, options())
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(divide="raise"):
            y = sess.run(None, {"x": np.zeros(2, np.float32)})[0]
            assert np.geterr()["divide"] == "raise"
            with pytest.raises(Exception):
                sess.run(None, {"x": np.zeros(3, np.float32)})
            assert np.geterr()["divide"] == "raise"
    assert np.isneginf(y).all() and np.geterr() == before


# --- logging -------------------------------------------------------------------------------------

def test_log_severity_sets_the_ep_core_logger(rng, caplog):
    m, feeds = conv_net(rng)
    with caplog.at_level(logging.DEBUG, logger="ep_core"):
        session(m, options(log_severity_level=1))
        assert logging.getLogger("ep_core").level == logging.INFO
        assert any("level-1 rewrites:" in r.getMessage() for r in caplog.records)
    session(m, options(log_severity_level=3))
    assert logging.getLogger("ep_core").level == logging.ERROR
    session(m, options())
    assert logging.getLogger("ep_core").level == logging.WARNING


def test_parallel_equals_sequential_on_inception():
    """Inception's branches run side by side in parallel mode; outputs are bit-identical."""
    import os

    import onnx
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        "light_inception_v1.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx does not ship light_inception_v1.onnx")
    model = onnx.load(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    name = session(model).get_inputs()[0].name
    seq = session(model).run(None, {name: x})
    par = session(model, options(execution_mode=ExecutionMode.ORT_PARALLEL, inter_op_num_threads=2))
    for a, b in zip(seq, par.run(None, {name: x})):
        np.testing.assert_array_equal(a, b)
