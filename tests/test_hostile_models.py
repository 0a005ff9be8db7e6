"""Hostile and malformed models (tests/hostile_cases.py), each run in a child process with memory
and time limits: every case ends in a typed error (an ep_core.errors.EPError) or a correct result.

    EP_FUZZ_LONG=1 python -m pytest -q tests/test_hostile_models.py   # ~4500 cases instead of ~480

benchmarks/hostile_models.py runs the same cases through onnxruntime for comparison.
"""
import collections
import os

import pytest
from hostile_runner import run_cases

LONG = os.environ.get("EP_FUZZ_LONG") == "1"
BAD = ("wrong", "untyped", "oom", "hang", "crash", "refused_valid", "build_error")


@pytest.fixture(scope="module")
def results():
    return run_cases("ours", long=LONG, workers=2, timeout=60)


def _report(results, outcomes):
    bad = {n: r for n, r in sorted(results.items()) if r["outcome"] in outcomes}
    return "\n".join(f"{n} [{r['expect']}] {r['outcome']}: {r['detail'][:300]}" for n, r in bad.items())


def test_every_case_is_a_typed_error_or_a_correct_result(results):
    counts = collections.Counter(r["outcome"] for r in results.values())
    print("\nhostile models:", dict(counts))
    assert len(results) >= 300
    assert not any(counts[o] for o in BAD), _report(results, BAD)


def test_every_file_read_and_invalid_model_is_refused(results):
    refuse = {n: r for n, r in results.items() if r["expect"] == "refuse"}
    assert len(refuse) >= 100
    assert all(r["outcome"] == "typed" for r in refuse.values()), _report(refuse, set(BAD) | {"correct", "unverified"})
    reads = [n for n in refuse if n.startswith("ext_")]
    assert len(reads) >= 30


def test_models_onnxruntime_runs_load_and_match_it(results):
    run = {n: r for n, r in results.items() if r["expect"] == "run"}
    assert len(run) >= 25
    assert all(r["outcome"] == "correct" for r in run.values()), _report(run, set(BAD) | {"typed", "unverified"})


def test_mutations_of_real_models_run_correctly_when_they_load(results):
    """Byte flips that hit weights leave a valid model: it must run, and match onnxruntime."""
    flips = [r for n, r in results.items() if r["category"] == "flip"]
    assert sum(r["outcome"] == "correct" for r in flips) >= len(flips) // 3
