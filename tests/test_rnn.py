"""LSTM / GRU / RNN on the CPU provider against onnxruntime, over the attribute grid the kernels
branch on: direction, linear_before_reset, initial states, peepholes, clip, layout and
sequence_lens (full lengths take the dense lockstep path; shorter ones the masked path)."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import ep_core

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the test oracle ([dev] extra)")

SEQ, BATCH, INPUT, HID = 7, 3, 5, 6
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _model(op: str, direction: str, attrs: dict, with_lens: bool, with_init: bool,
           peep: bool, HID: int = HID, BATCH: int = BATCH) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(len(op) + 7 * len(direction) + 13 * with_lens + 29 * with_init)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    feeds = {"X": rng.standard_normal((SEQ, BATCH, INPUT)).astype(np.float32)}
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (
        ("W", rng.uniform(-.5, .5, (nd, g * HID, INPUT)).astype(np.float32)),
        ("R", rng.uniform(-.5, .5, (nd, g * HID, HID)).astype(np.float32)),
        ("B", rng.uniform(-.5, .5, (nd, 2 * g * HID)).astype(np.float32)))]
    inputs = ["X", "W", "R", "B", "", "", ""]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [SEQ, BATCH, INPUT])]
    if with_lens:
        feeds["sequence_lens"] = np.array([SEQ, 2, SEQ - 3][:BATCH], dtype=np.int32)
        inputs[4] = "sequence_lens"
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [BATCH]))
    if with_init:
        for k, name in ((5, "initial_h"), (6, "initial_c")):
            if name == "initial_c" and op != "LSTM":
                continue
            feeds[name] = rng.standard_normal((nd, BATCH, HID)).astype(np.float32)
            inputs[k] = name
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [nd, BATCH, HID]))
    if peep:
        inputs.append("P")
        p = rng.uniform(-.5, .5, (nd, 3 * HID)).astype(np.float32)
        inits.append(helper.make_tensor("P", TensorProto.FLOAT, p.shape, p.ravel()))
    while inputs and inputs[-1] == "":
        inputs.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outs, hidden_size=HID, direction=direction, **attrs)
    shapes = {"Y": [SEQ, nd, BATCH, HID], "Y_h": [nd, BATCH, HID], "Y_c": [nd, BATCH, HID]}
    graph = helper.make_graph([node], "rnn", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in outs],
                              initializer=inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 14)]), feeds


CASES = []
for op, direction, with_lens, with_init in itertools.product(
        ("LSTM", "GRU", "RNN"), ("forward", "reverse", "bidirectional"), (False, True), (False, True)):
    variants = [{}]
    if op == "GRU":
        variants = [{"linear_before_reset": 0}, {"linear_before_reset": 1}]
    if op == "LSTM":
        variants = [{}, {"peep": True}, {"clip": 0.7}, {"input_forget": 1}]
    for v in variants:
        CASES.append(pytest.param(op, direction, with_lens, with_init, v,
                                  id=f"{op}-{direction}-lens{int(with_lens)}-init{int(with_init)}-"
                                     + ("-".join(f"{k}{v}" for k, v in v.items()) or "plain")))


@pytest.mark.parametrize("op,direction,with_lens,with_init,variant", CASES)
def test_recurrent_matches_onnxruntime(op, direction, with_lens, with_init, variant):
    attrs = dict(variant)
    peep = bool(attrs.pop("peep", False))
    model, feeds = _model(op, direction, attrs, with_lens, with_init, peep)
    ours = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, o, r in zip(("Y", "Y_h", "Y_c"), ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5, err_msg=f"{op} {name}")


@pytest.mark.parametrize("op,attrs", [("LSTM", {}), ("GRU", {"linear_before_reset": 1}),
                                      ("GRU", {"linear_before_reset": 0})])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch,hid", [(1, 32), (2, 32), (5, 48), (13, 16)])
@pytest.mark.parametrize("with_init", [False, True])
def test_compiled_time_loop_matches_onnxruntime(op, attrs, direction, batch, hid, with_init, monkeypatch):
    """Hidden sizes that are multiples of 16 take the compiled time loop (microkernel product +
    compiled cell, `PackedRecurrent.run_sequence`, or with the input projection in the same
    compiled call for a few rows, `PackedRecurrent.stream_step`) where it exists: LSTM and GRU
    with linear_before_reset; GRU without it keeps the numpy step."""
    from ep_cpu.kernels import rnn_jit
    from ep_cpu import microkernel
    taken = []
    original = rnn_jit.PackedRecurrent.run_sequence
    monkeypatch.setattr(rnn_jit.PackedRecurrent, "run_sequence",
                        lambda self, *a: taken.append(original(self, *a)) or taken[-1])
    original_stream_step = rnn_jit.PackedRecurrent.stream_step

    def counted_stream_step(self, *args):
        step = original_stream_step(self, *args)
        if step is None:
            taken.append(False)
            return None

        def counted(*arrays):
            taken.append(True)
            return step(*arrays)
        return counted

    monkeypatch.setattr(rnn_jit.PackedRecurrent, "stream_step", counted_stream_step)
    model, feeds = _model(op, direction, dict(attrs), False, with_init, False, HID=hid, BATCH=batch)
    ours = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, o, r in zip(("Y", "Y_h", "Y_c"), ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6, err_msg=f"{op} {name}")
    if microkernel.available():
        assert taken == ([] if attrs.get("linear_before_reset") == 0 else [True])


def test_layout_1_is_batch_major():
    """layout=1 (batch-major) gives the layout-0 results transposed."""
    model, feeds = _model("LSTM", "bidirectional", {}, False, True, False)
    base = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, feeds)
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("layout", 1))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = BATCH
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = SEQ
    for vi in list(model.graph.input[1:]) + list(model.graph.output[1:]):
        vi.type.tensor_type.shape.dim[0].dim_value = BATCH
        vi.type.tensor_type.shape.dim[1].dim_value = 2
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (BATCH, SEQ, 2, HID)):
        d.dim_value = v
    bfeeds = {"X": feeds["X"].transpose(1, 0, 2).copy(),
              "initial_h": feeds["initial_h"].transpose(1, 0, 2).copy(),
              "initial_c": feeds["initial_c"].transpose(1, 0, 2).copy()}
    y, y_h, y_c = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, bfeeds)
    np.testing.assert_allclose(y, base[0].transpose(2, 0, 1, 3), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_h, base[1].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_c, base[2].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_weights_fed_per_run_match_constant_weights(op):
    """Constant W/R/B are converted and packed once at session build; fed ones every run (and a
    new feed must be used, never a previous run's packing)."""
    model, feeds = _model(op, "bidirectional", {}, False, False, False)
    const = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, feeds)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, a in weights.items():
        model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)))
    del model.graph.initializer[:]
    sess = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    fed = sess.run(None, {**feeds, **weights})
    for o, c in zip(fed, const):   # constant weights take the packed microkernel: other sum order
        np.testing.assert_allclose(o, c, rtol=1e-6, atol=1e-7)
    halved = {k: v * 0.5 for k, v in weights.items()}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {**feeds, **halved})
    for o, r in zip(sess.run(None, {**feeds, **halved}), ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ndir,rows,hid,n", [(1, 1, 1, 3), (2, 3, 13, 52), (1, 4, 256, 1024), (2, 16, 9, 27)])
def test_compiled_recurrent_product_matches_matmul(dtype, ndir, rows, hid, n):
    """The numba pass that replaces BLAS for H @ R^T of small batches (every hidden size: the
    eight-row blocks and the remainder)."""
    from ep_cpu.kernels.rnn_jit import recurrent_matmul
    mm = recurrent_matmul(np.dtype(dtype))
    if mm is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(hid)
    h = rng.standard_normal((ndir, rows, hid)).astype(dtype)
    rt = rng.standard_normal((ndir, hid, n)).astype(dtype)
    out = np.full((ndir, rows, n), np.nan, dtype)
    mm(h, rt, out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, np.matmul(h.astype(np.float64), rt), rtol=tol, atol=tol * hid)


@pytest.mark.parametrize("op,attrs", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
@pytest.mark.parametrize("batch", [1, 13])
def test_forward_layer_runs_the_short_path(op, attrs, batch, monkeypatch):
    """A forward LSTM / GRU (linear_before_reset) with constant weights (a streaming step: batch
    1) goes straight to the projection and the compiled time loop (`_forward_compiled`),
    outputs as the general path's and onnxruntime's."""
    from ep_cpu import microkernel
    from ep_cpu.kernels import rnn
    if not microkernel.available():
        pytest.skip("the compiled time loop needs numba and an AVX-512 CPU")
    results = []
    original = rnn._Recurrent._forward_compiled
    monkeypatch.setattr(rnn._Recurrent, "_forward_compiled",
                        lambda self, *a: results.append(original(self, *a)) or results[-1])
    model, feeds = _model(op, "forward", dict(attrs), False, True, False, HID=32, BATCH=batch)
    ours = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"]).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(ours) == len(ref)
    for name, o, r in zip(("Y", "Y_h", "Y_c"), ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6, err_msg=f"{op} {name}")
    assert len(results) == 1 and results[0] is not None


@pytest.mark.parametrize("op,attrs", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
def test_streaming_steps_run_after_run_match_onnxruntime(op, attrs):
    """A batch-1 step fed its own state hundreds of times (the compiled one-call path,
    `PackedRecurrent.stream_step`, whose scratch arrays live only inside it): every step matches
    onnxruntime, and nothing a step freed is written by a later one."""
    import onnx
    rng = np.random.default_rng(3)
    hid, inp, g = 128, 64, GATES[op]
    inits = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in (
        ("W", rng.uniform(-.2, .2, (1, g * hid, inp)).astype(np.float32)),
        ("R", rng.uniform(-.2, .2, (1, g * hid, hid)).astype(np.float32)),
        ("B", rng.uniform(-.2, .2, (1, 2 * g * hid)).astype(np.float32)))]
    states = ["h"] + (["c"] if op == "LSTM" else [])
    inputs = ["X", "W", "R", "B", "", "h"] + (["c"] if op == "LSTM" else [])
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    graph = helper.make_graph(
        [helper.make_node(op, inputs, outs, hidden_size=hid, **attrs)], "step",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, inp])]
        + [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, 1, hid]) for s in states],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 1, hid])]
        + [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 1, hid]) for o in outs[1:]],
        initializer=inits)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    ours = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    state = {s: np.zeros((1, 1, hid), np.float32) for s in states}
    for step in range(300):
        feeds = {"X": rng.standard_normal((1, 1, inp)).astype(np.float32), **state}
        got, want = ours.run(None, feeds), ref.run(None, feeds)
        for o, r in zip(got, want):
            np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6, err_msg=f"{op} step {step}")
        state = dict(zip(states, want[1:]))


def _step_inputs(op: str, hid: int, rows: int, seq: int, seed: int = 5, ndir: int = 1):
    """A PackedRecurrent of random R^T and the arrays of `run_sequence` for `ndir` directions."""
    from ep_cpu.kernels import rnn_jit
    rng = np.random.default_rng(seed)
    n = GATES[op] * hid
    pr = rnn_jit.PackedRecurrent(rng.uniform(-.15, .15, (ndir, hid, n)).astype(np.float32))
    proj = rng.standard_normal((ndir, seq, rows, n)).astype(np.float32)
    h0 = rng.standard_normal((ndir, rows, hid)).astype(np.float32)
    c0 = rng.standard_normal((ndir, rows, hid)).astype(np.float32)
    bias = rng.standard_normal((ndir, n)).astype(np.float32) if op == "GRU" else None
    return pr, proj, h0, c0, bias


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("ndir", [1, 2])
def test_two_threads_run_a_layer_as_two_parts_on_the_intra_op_workers(op, ndir, monkeypatch):
    """At two threads a layer's steps go to `native_call.run_ranges` as two parts of
    `rnn_jit.steps_parts` (the halves of each step of one direction, or one direction each; the
    spinning workers, which leave their caller's CPU): the same bits as one thread."""
    from ep_cpu import microkernel, native_call
    from ep_cpu.kernels import rnn_jit
    if not microkernel.available():
        pytest.skip("the compiled time loop needs numba and an AVX2+FMA CPU")
    monkeypatch.setattr(rnn_jit, "SPLIT_MIN_MACS", 0)
    seq, hid, rows = 7, 64, 3
    pr, proj, h0, c0, bias = _step_inputs(op, hid, rows, seq, ndir=ndir)
    parts = []
    real = native_call.run_ranges
    monkeypatch.setattr(native_call, "run_ranges",
                        lambda fn, *a: parts.append((fn, a[1])) or real(fn, *a))
    results = []
    for threads in (1, 2):
        c, hist = c0.copy(), np.full((seq, ndir, rows, hid), np.nan, np.float32)
        assert pr.run_sequence(op, proj, h0, c, hist, bias, threads)
        results.append((hist, c))
    assert parts == [(rnn_jit.steps_parts(), 2)]
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("hid,rows", [(64, 1), (128, 4), (192, 3)])
def test_steps_split_between_two_threads_match_one_thread(op, hid, rows, monkeypatch):
    """At two threads a one-direction layer's steps are split by hidden units between the
    threads (`rnn_jit._half_steps`, a barrier per step): the same sums in the same order, so
    the same bits as one thread; and a thread alone (its partner never starting) claims both
    halves of every step itself."""
    from ep_cpu import microkernel, native_call, tile_shapes, vector_math
    from ep_cpu.kernels import rnn_jit
    if not microkernel.available():
        pytest.skip("the compiled time loop needs numba and an AVX2+FMA CPU")
    monkeypatch.setattr(rnn_jit, "SPLIT_MIN_MACS", 0)
    seq = 9
    pr, proj, h0, c0, bias = _step_inputs(op, hid, rows, seq)
    results = []
    for threads in (1, 2):
        c, hist = c0.copy(), np.full((seq, 1, rows, hid), np.nan, np.float32)
        assert pr.run_sequence(op, proj, h0, c, hist, bias, threads)
        results.append((hist, c))
    np.testing.assert_array_equal(results[1][0], results[0][0])
    np.testing.assert_array_equal(results[1][1], results[0][1])
    # one thread on its own: rnn_jit._half_steps as the first of two, the second never comes
    c, hist = c0.copy(), np.full((seq, 1, rows, hid), np.nan, np.float32)
    step_bias, use_res = pr._step_bias(bias, 1)
    claims, done = np.zeros(2 * seq, np.int64), np.zeros(seq, np.int64)
    rnn_jit._half_steps(pr._gemm.address, vector_math.cell_callback(op).address, proj, h0, c, hist,
                        np.empty((1, rows, GATES[op] * hid), np.float32), pr.pack_addrs,
                        pr.packs[0].shape[0], tile_shapes.choose_gemm_mr(rows), step_bias, use_res,
                        claims, done, 1, native_call.yield_address())
    np.testing.assert_array_equal(hist, results[0][0])
    assert claims.all() and (done == 2).all()


@pytest.mark.parametrize("op,attrs", [("LSTM", {}), ("GRU", {"linear_before_reset": 1})])
def test_split_steps_in_a_session_match_onnxruntime(op, attrs, monkeypatch):
    """A forward layer of hidden 64 at two intra-op threads (its steps split between them; 35
    rows: not the one-call path of a few rows)."""
    from ep_cpu.kernels import rnn_jit
    monkeypatch.setattr(rnn_jit, "SPLIT_MIN_MACS", 0)
    model, feeds = _model(op, "forward", dict(attrs), False, True, False, HID=64, BATCH=5)
    options = ep_core.SessionOptions()
    options.intra_op_num_threads = 2
    ours = ep_core.InferenceSession(model.SerializeToString(), options, providers=["cpu"]).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, o, r in zip(("Y", "Y_h", "Y_c"), ours, ref):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6, err_msg=f"{op} {name}")
