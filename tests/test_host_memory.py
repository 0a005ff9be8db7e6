"""Freed host memory stays in the process between runs (`ep_cpu.host_memory`): a model whose
outputs are freed all at once by the next run maps no new pages run after run, unless the user
asked for malloc's own settings. In subprocesses: glibc's settings are process-wide."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from onnx import TensorProto, helper
    import ep_core
    from ep_cpu import host_memory
    # sixteen outputs of 384 KB each: a run frees the previous run's all at once
    nodes = [helper.make_node("Transpose", ["x"], [f"y{i}"], perm=[0, 1, 3, 2]) for i in range(16)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 128, 64])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 12, 64, 128]) for i in range(16)])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    sess = ep_core.InferenceSession(model.SerializeToString(), providers=["cpu"])
    feeds = {"x": np.ones((1, 12, 128, 64), np.float32)}
    out = sess.run(None, feeds)
    for _ in range(3):
        out = sess.run(None, feeds)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        out = sess.run(None, feeds)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    print(host_memory.keep_freed_memory(), faults)
""")


def _printed(script: str, **env) -> list[str]:
    """What `script` prints in a fresh process without the user's malloc settings (plus `env`)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "EP_CPU_MALLOC")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**environ, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _run(**env) -> tuple[bool, float]:
    applied, faults = _printed(_SCRIPT, **env)
    return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_outputs_are_reused_without_new_pages():
    applied, faults = _run()
    if not applied:
        pytest.skip("not glibc: malloc's settings are left alone")
    assert faults < 50, f"{faults} page faults a run with the memory kept"
    applied, faults = _run(EP_CPU_MALLOC="system")
    assert not applied
    assert faults > 500, f"{faults} page faults a run with malloc's own settings (the case kept)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_users_malloc_settings_are_kept():
    applied, _ = _run(MALLOC_TRIM_THRESHOLD_="1048576")
    assert not applied


_HUGE_SCRIPT = textwrap.dedent("""
    import re
    from ep_cpu import host_memory
    applied = host_memory.keep_freed_memory()
    advised = 0
    region = None
    for line in open("/proc/self/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            region = hi - lo
        elif line.startswith("VmFlags") and " hg" in line:
            advised += region
    print(applied, host_memory.thp_mode(), advised)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_heap_is_advised_for_huge_pages_where_the_kernel_asks():
    """With THP mode "madvise", HUGE_HEAP_BYTES of the heap carry the huge-page advice (VmFlags
    hg); EP_CPU_MALLOC=system leaves the heap as malloc made it."""
    from ep_cpu import host_memory

    def run(**env):
        applied, mode, advised = _printed(_HUGE_SCRIPT, **env)
        return applied == "True", mode, int(advised)

    applied, mode, advised = run()
    if not applied or mode != "madvise":
        pytest.skip(f"malloc settings applied: {applied}, THP mode {mode!r}: no advice to give")
    assert advised >= host_memory.HUGE_HEAP_BYTES * 0.9
    assert run(EP_CPU_MALLOC="system")[2] < host_memory.HUGE_HEAP_BYTES * 0.1
