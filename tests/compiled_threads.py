"""Shared by the compiled-kernel tests: which threads a "split" test case runs its parts on."""
from __future__ import annotations

import pytest

from ep_cpu import native_call


def threads_via(monkeypatch, split: str) -> str:
    """"*_pool": the parts go to ep_cpu.gemm's Python pool instead of numba's TBB threads;
    returns the split without that suffix."""
    if split.endswith("_pool"):
        monkeypatch.setattr(native_call, "parallel_ok", lambda: False)
        return split[:-len("_pool")]
    if split != "one_thread" and not native_call.parallel_ok():
        pytest.skip("numba's TBB threading layer is not loadable here (the pool variant runs)")
    return split
