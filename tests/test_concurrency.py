"""Sessions built and run from several threads at once: provider discovery, shared kernels."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

import ep_core

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: provider discovery happens once per process, on the first session.
_FIRST_SESSIONS = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from onnx import TensorProto, helper
    import ep_core
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    barrier = threading.Barrier(8)
    errors = []
    def first_session():
        barrier.wait()
        try:
            out = ep_core.InferenceSession(model, providers=["cpu"]).run(None, {"x": np.ones(2, np.float32)})
            assert out[0].tolist() == [1.0, 1.0]
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=first_session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(len(errors), errors[:1])
""")


def test_eight_threads_create_their_first_sessions_at_once():
    # Before the registry lock, 6-7 of 8 threads got "unknown provider 'cpu'; known providers: []".
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", _FIRST_SESSIONS, str(ROOT)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "0 []", proc.stdout


def test_concurrent_runs_of_one_session_are_bit_identical():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 512), dtype=np.float32)
    b = rng.standard_normal(512, dtype=np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 512])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.tobytes(), raw=True),
         helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.tobytes(), raw=True)]),
        opset_imports=[helper.make_opsetid("", 17)])
    sess = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    feeds = [rng.standard_normal((64, 256), dtype=np.float32) for _ in range(8)]
    want = [sess.run(None, {"x": f})[0] for f in feeds]
    bad: list = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            got = sess.run(None, {"x": feeds[i]})[0]
            if not np.array_equal(got, want[i]):
                bad.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
