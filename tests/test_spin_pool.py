"""`ep_cpu.spin_pool`: the workers that take `native_call.run_ranges`' parts. Every range runs
once whoever claims it, a worker really runs a part beside the caller, sleeping workers come
back, concurrent callers and a forked child get correct results."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from ep_cpu import gemm_compiled, microkernel, native_call, spin_pool, tile_shapes

pytestmark = [
    pytest.mark.skipif(
        not (microkernel.available() and native_call.parallel_ok() and spin_pool.available()),
        reason="the spinning workers need numba's compiled callbacks, TBB loadable, Linux x86-64"),
    # an exception inside a callback (a range given backwards) is only printed by numba
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

numba = pytest.importorskip("numba")


def _gemm_args(rng, m=37, k=70, n=101):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bp = gemm_compiled.pack(b)
    y = np.zeros((m, n), np.float32)
    zeros = np.zeros(n, np.float32)
    mr = tile_shapes.choose_mr(m)
    args = native_call.pack(a.ctypes.data, m, k, bp.ctypes.data, bp.shape[0], n, mr,
                            zeros.ctypes.data, 0, y.ctypes.data, 0, -np.inf, np.inf,
                            microkernel.EPILOGUE, y.ctypes.data, 0, 0)
    keep = (a, bp, zeros)
    return args, y, a @ b, bp.shape[0], -(-m // mr), keep


@pytest.mark.parametrize("by_columns", [True, False])
@pytest.mark.parametrize("workers", [2, 3, 4, 9])
def test_every_range_runs_once(by_columns, workers):
    """Whatever the parts, a worker thread a CPU at most (more polled the cores away)."""
    rng = np.random.default_rng(workers)
    args, y, want, cols, rows, _keep = _gemm_args(rng)
    native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, workers, by_columns, None)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    assert len(spin_pool.pool().threads) <= max(1, spin_pool.cpus() - 1)


def _meet(args_at, c0, c1, r0, r1):  # pragma: no cover - compiled
    # part 0 waits (boundedly) for part 1's flag: it sees it only if part 1 runs at the same
    # time, on another thread
    flags = numba.carray(native_call.f64_at(args_at), (3,))
    bits = numba.carray(native_call.i64_at(args_at), (3,))
    if c0 == 1:
        flags[1] = 1.0
        return
    for _ in range(1_000_000_000):   # (~1 s at most)
        if spin_pool._load(bits, 1) != 0:   # (an atomic load: not hoisted out of the loop)
            flags[2] = 1.0
            return


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to run side by side")
def test_a_worker_runs_a_part_beside_the_caller():
    meet = native_call.callback(_meet, 3)
    seen = 0
    for _ in range(5):
        flags = native_call.pack(0.0, 0.0, 0.0)
        native_call.run_ranges(meet, flags, 2, 1, 2, True, None)
        assert flags[1] == 1.0   # part 1 ran
        seen += flags[2] == 1.0
    assert seen >= 1   # (a busy machine may keep the worker from some of the five)


def test_workers_sleep_after_the_spin_window_and_come_back():
    p = spin_pool.pool()
    p.ensure(1)
    spin = p.state[spin_pool.SPIN]
    p.state[spin_pool.SPIN] = 1000   # a few us of polling
    try:
        rng = np.random.default_rng(0)
        for _ in range(3):
            deadline = time.monotonic() + 5
            while p.state[spin_pool.SLEEPERS] < len(p.threads) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert p.state[spin_pool.SLEEPERS] == len(p.threads)
            args, y, want, cols, rows, _keep = _gemm_args(rng)
            native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, 2, True, None)
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
    finally:
        p.state[spin_pool.SPIN] = spin
    if len(os.sched_getaffinity(0)) >= 2:   # woken, a worker runs parts beside the caller again
        meet = native_call.callback(_meet, 3)
        seen = 0
        for _ in range(5):
            flags = native_call.pack(0.0, 0.0, 0.0)
            native_call.run_ranges(meet, flags, 2, 1, 2, True, None)
            seen += flags[2] == 1.0
        assert seen >= 1


def test_concurrent_callers_each_get_their_product():
    """Calls from several threads at once: one owns the workers, the others go to TBB."""
    errors = []

    def caller(seed):
        rng = np.random.default_rng(seed)
        for _ in range(50):
            args, y, want, cols, rows, _keep = _gemm_args(rng, 29, 40, 67)
            native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, 2, seed % 2 == 0,
                                   None)
            if not np.allclose(y, want, rtol=1e-5, atol=1e-4):
                errors.append(seed)

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert p_owner_free()


def p_owner_free() -> bool:
    return spin_pool.pool().state[spin_pool.OWNER] == 0


def _product_in_child(seed):
    rng = np.random.default_rng(seed)
    args, y, want, cols, rows, _keep = _gemm_args(rng)
    native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, 2, True, None)
    return bool(np.allclose(y, want, rtol=1e-5, atol=1e-4))


def test_a_forked_child_makes_its_own_workers():
    spin_pool.pool().ensure(1)   # the parent's worker does not exist in the child
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as child:
        assert child.apply_async(_product_in_child, (3,)).get(timeout=60)


def test_nap_sends_polling_workers_to_sleep_until_the_next_call():
    """Before numba's TBB threads run (`native_call.set_threads`) the workers leave the cores."""
    p = spin_pool.pool()
    p.ensure(1)
    spin = p.state[spin_pool.SPIN]
    p.state[spin_pool.SPIN] = 1 << 62   # they would poll for ever
    try:
        rng = np.random.default_rng(1)
        args, y, want, cols, rows, _keep = _gemm_args(rng)
        native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, 2, True, None)
        deadline = time.monotonic() + 5
        while p.state[spin_pool.SLEEPERS] > 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert p.state[spin_pool.SLEEPERS] == 0   # awake, polling
        native_call.set_threads(2)
        deadline = time.monotonic() + 5
        while p.state[spin_pool.SLEEPERS] < len(p.threads) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert p.state[spin_pool.SLEEPERS] == len(p.threads)
        native_call.run_ranges(microkernel.gemm_range(), args, cols, rows, 2, True, None)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
        assert p.state[spin_pool.NAP] == 0
    finally:
        p.state[spin_pool.SPIN] = spin


@numba.njit(nogil=True)
def _where_now():
    return spin_pool._cpu()


@numba.njit(nogil=True)
def _leave_and_tell(state, cpu):
    spin_pool._leave_cpu(state, cpu)
    return spin_pool._cpu()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move between")
def test_a_worker_on_the_callers_cpu_moves_off_it_and_keeps_its_affinity():
    """(A worker woken onto its caller's CPU leaves it: the two took turns on it for whole
    blocks of runs.)"""
    state = spin_pool.pool().state
    seen = {}

    def move():
        allowed = os.sched_getaffinity(0)
        here = _where_now()
        seen["moved_to"] = _leave_and_tell(state, here)
        seen["here"] = here
        seen["affinity"] = (allowed, os.sched_getaffinity(0))

    t = threading.Thread(target=move)
    t.start()
    t.join()
    assert seen["moved_to"] != seen["here"]
    assert seen["affinity"][0] == seen["affinity"][1]


_YIELDS = np.zeros(1, np.int64)
_YIELDS_AT = _YIELDS.ctypes.data


@numba.cfunc(numba.types.void())
def _counting_yield():  # pragma: no cover - compiled
    count = numba.carray(native_call.i64_at(_YIELDS_AT), (1,))
    count[0] += 1


def test_a_call_that_wakes_sleeping_workers_yields_its_cpu_once_first():
    """A worker woken from its sleep may be put on the caller's CPU, where it would run only
    once the caller yields: the caller yields once right after waking it (and not when the
    workers are polling), so that the worker runs, finds parts left and moves off."""
    p = spin_pool.pool()
    p.ensure(1)
    rng = np.random.default_rng(2)
    args, y, want, cols, rows, _keep = _gemm_args(rng)
    fn, at = microkernel.gemm_range().address, native_call.address(args)
    saved = p._yield
    try:
        p.nap()
        deadline = time.monotonic() + 5
        while p.state[spin_pool.SLEEPERS] < len(p.threads) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert p.state[spin_pool.SLEEPERS] == len(p.threads)
        p._yield = _counting_yield.address   # (the dispatcher's; the workers keep theirs)
        _YIELDS[0] = 0
        assert p.run(fn, at, cols, rows, 1, True)   # one part: the caller's, no waiting
        assert _YIELDS[0] == 1
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
        deadline = time.monotonic() + 5
        while p.state[spin_pool.SLEEPERS] > 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert p.run(fn, at, cols, rows, 1, True)   # the workers polling: nothing to yield for
        assert _YIELDS[0] == 1
    finally:
        p._yield = saved
