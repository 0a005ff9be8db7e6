"""onnx's backend node cases through sessions with the emulated CUDA provider
(`providers=[emulated cuda, "cpu"]`): the pass list must equal the CPU-only one. This runs the
real partitioning, fusion (compile API), copy insertion and control flow with every CUDA kernel on
the CPU emulator, which is what kernel-level conformance cannot see.

Default: a deterministic subset (ep_cuda.conformance.session_subset: for every op the CUDA provider
claims in some case, the first 2 cases by name; every control-flow case; the cases that found
bugs). EP_CUDA_NODE_CASES=all runs all of them (1884 cases, about 3 minutes of emulator time
on 2 cores with a warm emulator cache, against ~1 minute for the subset).
"""
import os
import warnings

import pytest

from ep_cuda import emulator
from ep_cuda.conformance import compare_sessions, session_subset

def _cases():
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    if os.environ.get("EP_CUDA_NODE_CASES", "").lower() != "all":
        cases = session_subset(cases)
    return [pytest.param(c, id=c.name) for c in sorted(cases, key=lambda c: c.name)]


@pytest.mark.skipif(not emulator.available()[0], reason="no C++ compiler for the emulator")
@pytest.mark.parametrize("case", _cases())
def test_same_pass_list_as_cpu(case):
    cpu, cuda = compare_sessions(case, "emu")
    assert (cpu is None) == (cuda is None), f"CPU-only: {cpu or 'pass'}; emulated cuda+cpu: {cuda or 'pass'}"
