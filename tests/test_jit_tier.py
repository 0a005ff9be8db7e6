"""Tiered compilation (`ep_cpu.jit_tier`): kernels missing from the disk cache compile on a
background thread while their callers take the fallback path; path choices follow once built."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import ep_core
from ep_cpu import conv_thin, depthwise_direct, depthwise_flat, jit_tier, microkernel
from ep_cpu.kernels import pool as pool_kernels


def _one_node(node, x: np.ndarray, weights: dict | None = None):
    """Our session of a one-node model over input "x" and onnxruntime's output for x."""
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v, k) for k, v in (weights or {}).items()])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    sess = ep_core.InferenceSession(data, providers=["cpu"])
    return sess, ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _gated(monkeypatch, module, build: str) -> threading.Event:
    """Hold `module.build` (a kernel family's build) until the returned event is set."""
    gate, real = threading.Event(), getattr(module, build)
    monkeypatch.setattr(module, build, lambda: (gate.wait(10), real()))
    return gate


@pytest.fixture
def background(monkeypatch):
    """Background mode (the suite runs with EP_CPU_JIT=sync) with a build table of its own."""
    monkeypatch.setenv("EP_CPU_JIT", "")
    monkeypatch.setattr(jit_tier, "_builds", {})
    monkeypatch.setattr(jit_tier, "WAIT_S", 0.05)
    monkeypatch.setattr(jit_tier, "cold", False)


def test_slow_build_runs_in_the_background(background):
    gate, calls = threading.Event(), []
    before = jit_tier.generation

    def build():
        gate.wait(10)
        calls.append(threading.current_thread().name)

    assert not jit_tier.ready("slow", build)        # still compiling: the caller falls back
    assert not jit_tier.ready("slow", build)        # asked again: no second build, no wait
    gate.set()
    assert jit_tier.wait(10)
    assert jit_tier.ready("slow", build)
    assert calls == ["ep_cpu_jit"] and jit_tier.generation > before


def test_after_a_slow_build_first_requests_do_not_wait(background, monkeypatch):
    """Once a wait has run out (an empty cache), other families' first callers do not wait."""
    import time
    gate = threading.Event()
    assert not jit_tier.ready("slow", lambda: gate.wait(10))
    assert jit_tier.cold
    monkeypatch.setattr(jit_tier, "WAIT_S", 5.0)
    t0 = time.perf_counter()
    assert not jit_tier.ready("next", lambda: None)   # queued behind "slow": not waited for
    assert time.perf_counter() - t0 < 1.0
    gate.set()
    assert jit_tier.wait(10) and jit_tier.ready("next", lambda: None)


def test_a_family_known_to_be_on_disk_is_waited_for_past_the_usual_wait(background):
    """A load from the disk cache that outlasts WAIT_S (the blocked convs' tiles: 0.31-0.35 s
    on a 2-core EPYC) is waited for when the caller knows the family is on disk, even after
    another family's wait ran out; a plain request gives up after WAIT_S."""
    import time

    def load():
        time.sleep(0.3)
    assert not jit_tier.ready("plain request", load)   # 0.05 s wait: ran out
    assert jit_tier.cold
    t0 = time.perf_counter()
    assert jit_tier.ready("known on disk", load, on_disk=True)
    assert 0.25 < time.perf_counter() - t0 < jit_tier.LOAD_WAIT_S


def test_quick_build_is_ready_at_once(background, monkeypatch):
    monkeypatch.setattr(jit_tier, "WAIT_S", 5.0)   # generous for a loaded machine; a quick build returns at once
    calls = []
    assert jit_tier.ready("quick", lambda: calls.append(1))   # a cache load: within WAIT_S
    assert jit_tier.ready("quick", lambda: calls.append(2)) and calls == [1]


def test_failed_build_warns_and_keeps_the_fallback(background):
    def build():
        raise RuntimeError("no compiler today")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        jit_tier.ready("broken", build)
        jit_tier.wait(10)
    assert not jit_tier.ready("broken", build)
    assert any("compiling broken failed" in str(w.message) for w in seen)


def test_sync_mode_builds_on_the_caller_and_raises(monkeypatch):
    monkeypatch.setenv("EP_CPU_JIT", "sync")
    monkeypatch.setattr(jit_tier, "_builds", {})
    names = []
    assert jit_tier.ready("inline", lambda: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name]
    with pytest.raises(ValueError):
        jit_tier.ready("bad", lambda: (_ for _ in ()).throw(ValueError("x")))


@pytest.mark.skipif(not conv_thin.available(), reason="the thin conv needs AVX2 + FMA or AVX-512 (none here)")
def test_conv_takes_the_thin_path_once_it_is_built(background, monkeypatch):
    """A 3-position conv (the thin path's case) runs through im2col + BLAS while its kernels
    compile, then through the thin conv; both match onnxruntime."""
    gate = _gated(monkeypatch, conv_thin, "compile_kernels")
    assert microkernel.available()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 3)).astype(np.float32)
    w = rng.standard_normal((8, 16, 1)).astype(np.float32)
    sess, ref = _one_node(helper.make_node("Conv", ["x", "w"], ["y"]), x, {"w": w})
    paths = []
    real_conv = conv_thin.ThinConv.__call__
    monkeypatch.setattr(conv_thin.ThinConv, "__call__",
                        lambda self, *a, **k: paths.append("thin") or real_conv(self, *a, **k))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    assert paths == []                      # compiling: im2col + BLAS
    gate.set()
    assert jit_tier.wait(60)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-5)
    assert paths == ["thin"]                # built: the geometry was chosen again


@pytest.mark.skipif(not (depthwise_flat.available() or depthwise_direct.available()),
                    reason="the flat and direct MaxPool kernels are AVX-512 only (this CPU has none)")
def test_max_pool_waits_for_its_plane_kernels(background, monkeypatch):
    """A MaxPool whose compiled kernels are not built runs the numpy path, not a compile in line
    (3 s of ResNet-50's cold first run), then the compiled one; both match onnxruntime."""
    gate = _gated(monkeypatch, pool_kernels, "_compile_plane_pools")
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    sess, ref = _one_node(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                           pads=[1, 1, 1, 1], strides=[1, 1]), x)
    calls = []
    for module in (depthwise_flat, depthwise_direct):
        real_pool = module.max_pool_2d
        monkeypatch.setattr(module, "max_pool_2d",
                            lambda *a, _f=real_pool, **k: calls.append(1) or _f(*a, **k))
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref)
    assert calls == []                       # compiling: the numpy path
    gate.set()
    assert jit_tier.wait(60)
    calls.clear()
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref)
    assert calls == [1]                      # built: a compiled plane kernel


def test_threading_layer_loads_without_compiling_a_probe(tmp_path):
    """`native_call.parallel_ok` loads numba's threading layer with numba's own loader: a cold
    process (empty kernel cache) compiles no parallel function for it (~0.7 s)."""
    import os
    import subprocess
    import sys
    code = ("import numba\nfrom ep_cpu import native_call\nok = native_call.parallel_ok()\n"
            "print(ok, numba.threading_layer() if ok else '-', len(native_call._parallel_probe.signatures))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("NUMBA_THREADING_LAYER", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    assert out[2] == "0"                     # the probe was never compiled
    if out[0] == "True":
        assert out[1] == "tbb"


@pytest.mark.skipif(not microkernel.available(), reason="the implicit conv needs AVX2 + FMA or AVX-512 (none here)")
def test_conv_waiting_for_the_implicit_conv_takes_im2col_not_winograd(background, monkeypatch):
    """A 3x3 conv the implicit conv takes (before Winograd) runs im2col + BLAS while its kernels
    compile: Winograd would transform the weight (20-40 ms at 256-512 channels) for a few runs."""
    from ep_cpu import conv_implicit, winograd
    from ep_cpu.kernels import conv as conv_kernels
    monkeypatch.setattr(conv_kernels, "WINOGRAD_OVER_IMPLICIT", False)
    gate = _gated(monkeypatch, conv_implicit, "compile_kernels")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    sess, ref = _one_node(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), x, {"w": w})
    paths = []
    real_wino, real_plan = winograd.conv3x3, conv_implicit.ImplicitConv.__call__
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: paths.append("winograd") or real_wino(*a, **k))
    monkeypatch.setattr(conv_implicit.ImplicitConv, "__call__",
                        lambda self, *a, **k: paths.append("implicit") or real_plan(self, *a, **k))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    assert paths == []                       # compiling: im2col + BLAS
    gate.set()
    assert jit_tier.wait(60)
    paths.clear()                            # (the build ran the implicit conv on small maps)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    assert paths == ["implicit"]


def test_start_queues_a_build_without_waiting_and_reports_it_once_done(background):
    """`start` returns at once (False) and builds on the background thread; later calls say
    whether it has finished; a family `ready` already built is reported built."""
    gate, built = threading.Event(), []
    assert jit_tier.start("started_family", lambda: (gate.wait(10), built.append(1))) is False
    assert jit_tier.start("started_family", lambda: built.append(2)) is False   # queued once
    gate.set()
    assert jit_tier.wait(10)
    assert jit_tier.start("started_family", lambda: built.append(3)) is True and built == [1]


_EXIT_SCRIPT = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import ep_core
rng = np.random.default_rng(0)
inits, nodes, x = [], [], "x"
for k in range(4):
    inits.append(numpy_helper.from_array((rng.standard_normal((32, 32, 3, 3)) * 0.1).astype(np.float32), f"w{k}"))
    nodes.append(helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
    x = f"r{k}"
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 28, 28])],
                      [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
sess = ep_core.InferenceSession(m.SerializeToString(), providers=["cpu"])
sess.run(None, {"x": rng.standard_normal((1, 32, 28, 28)).astype(np.float32)})
print("ran")
"""


def test_a_script_that_ends_while_kernels_compile_exits_cleanly(tmp_path):
    """A short script on an empty kernel cache ends while the background thread still compiles:
    the process exits with status 0. It ended in a segfault or an LLVM assertion (139 / 134)
    when the interpreter tore down under numba's compile: in 1 of 4 such endings, and in each of
    two cold ResNet-50 sessions, so the script ends at six points of the compile."""
    import os
    import subprocess
    import sys
    script = _EXIT_SCRIPT + """
import os, time
from ep_cpu import conv_nchwc, jit_tier
for name, build in conv_nchwc.families():
    jit_tier.start(name, build)
time.sleep(float(os.environ["END_AFTER"]))
"""
    for i, end_after in enumerate(("0.3", "0.6", "0.9", "1.2", "1.5", "1.8")):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"cache{i}"), EP_CPU_JIT="",
                   END_AFTER=end_after)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0 and "ran" in done.stdout, (end_after, done.returncode,
                                                               done.stderr[-2000:])
