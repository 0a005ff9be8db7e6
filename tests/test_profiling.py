"""Profiling: the file is a valid Chrome trace with session phases and one event per node run."""
import json
import os

import numpy as np
from onnx import helper
from opt_helpers import F32, init, model, options, session

from ep_core import ExecutionMode

PHASES = {"load", "optimize", "partition", "plan"}


def small_model(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["t"]),
             helper.make_node("Exp", ["x"], ["e"]), helper.make_node("ReduceSum", ["e"], ["s"], keepdims=1),
             helper.make_node("Add", ["t", "s"], ["y"])]
    return model(nodes, [("x", F32, [3, 4])], [("y", F32, [3, 4])],
                 [init("w", rng.standard_normal((4, 4)).astype(np.float32))], opset=13)


def validate_chrome_trace(doc) -> list[dict]:
    """Checks the Trace Event Format: complete events carry name/ph/ts/dur/pid/tid/args."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    complete = []
    for ev in doc["traceEvents"]:
        assert isinstance(ev["name"], str) and ev["ph"] in ("X", "M")
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "X":
            assert isinstance(ev["ts"], (int, float)) and isinstance(ev["dur"], (int, float))
            assert ev["ts"] >= 0 and ev["dur"] >= 0 and isinstance(ev["args"], dict)
            complete.append(ev)
    ts = [e["ts"] for e in complete]
    assert ts == sorted(ts)
    return complete


def test_profile_is_chrome_trace_with_phases_and_node_events(rng, tmp_path):
    prefix = str(tmp_path / "prof" / "small")
    sess = session(small_model(rng), options(enable_profiling=True, profile_file_prefix=prefix))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"x": x})
    path = sess.end_profiling()
    assert path.startswith(prefix) and path.endswith(".json") and os.path.exists(path)
    events = validate_chrome_trace(json.load(open(path)))
    phases = {e["name"] for e in events if e["cat"] == "Session"}
    assert PHASES <= phases and "model_run" in phases
    nodes = [e for e in events if e["cat"] == "Node"]
    n_nodes = len(sess.get_placement()["nodes"])
    assert len(nodes) == 2 * n_nodes
    by_op = {e["args"]["op_name"]: e["args"] for e in nodes}
    assert by_op["Tanh"]["provider"] == "cpu"
    assert by_op["Tanh"]["input_type_shape"] == [{"float32": [3, 4]}]
    assert all(e["args"]["duration_us"] >= 0 for e in nodes)
    # Phases precede the runs; node events nest inside their model_run.
    runs = [e for e in events if e["name"] == "model_run"]
    assert max(e["ts"] for e in events if e["name"] in PHASES) < runs[0]["ts"]
    first = [e for e in nodes if runs[0]["ts"] <= e["ts"] <= runs[0]["ts"] + runs[0]["dur"]]
    assert len(first) == n_nodes
    assert sess.end_profiling() == ""            # profiling stops after end_profiling


def test_profiling_disabled_writes_nothing(rng, tmp_path):
    sess = session(small_model(rng), options(profile_file_prefix=str(tmp_path / "none")))
    sess.run(None, {"x": np.ones((3, 4), np.float32)})
    assert sess.end_profiling() == "" and not list(tmp_path.iterdir())


def test_parallel_profile_records_every_node(rng, tmp_path):
    so = options(enable_profiling=True, profile_file_prefix=str(tmp_path / "par"),
                 execution_mode=ExecutionMode.ORT_PARALLEL, inter_op_num_threads=2)
    sess = session(small_model(rng), so)
    sess.run(None, {"x": np.ones((3, 4), np.float32)})
    events = validate_chrome_trace(json.load(open(sess.end_profiling())))
    ops = sorted(e["args"]["op_name"] for e in events if e["cat"] == "Node")
    assert ops == sorted(op for _, op, _ in sess.get_placement()["nodes"])
