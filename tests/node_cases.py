"""Run onnx's backend node test cases through our session and report pass/fail per case.

    python tests/node_cases.py [substring ...] [--providers cuda,cpu] [--quiet] [--json FILE]

Comparison is onnx's own `Runner.assert_similar_outputs` with each case's rtol/atol, as in BackendTest.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from onnx.backend.test.case.node import collect_testcases  # noqa: E402
from onnx.backend.test.runner import Runner  # noqa: E402

import ep_core  # noqa: E402


def _as_arrays(values):
    """Some cases store TensorProtos (float8, int4 ...) where others store numpy arrays."""
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def run_case(case, providers) -> str | None:
    """None on success, else a one-line reason."""
    try:
        sess = ep_core.InferenceSession(case.model, providers=providers)
        names = [v.name for v in case.model.graph.input]
        for inputs, ref_outputs in case.data_sets:
            inputs, ref_outputs = map(_as_arrays, (inputs, ref_outputs))
            feeds = dict(zip(names, inputs))
            outputs = sess.run(None, feeds)
            Runner.assert_similar_outputs(ref_outputs, outputs, case.rtol, case.atol)
    except Exception as e:  # report, do not stop
        msg = str(e).strip().splitlines()
        return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
    return None


def collect(patterns: list[str]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    if patterns:
        low = [p.lower() for p in patterns]
        cases = [c for c in cases if any(p in c.name.lower() for p in low)]
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("patterns", nargs="*")
    ap.add_argument("--providers", default="cpu")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    providers = args.providers.split(",")
    cases = collect(args.patterns)
    failed = {}
    t0 = time.time()
    for case in cases:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            reason = run_case(case, providers)
        if reason is not None:
            failed[case.name] = reason
        if not args.quiet:
            print(f"{'PASS' if reason is None else 'FAIL'} {case.name}" + (f"  -- {reason}" if reason else ""))
    n = len(cases)
    print(f"\n{n - len(failed)} passed, {len(failed)} failed of {n} node cases "
          f"(providers={providers}, {time.time() - t0:.1f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"total": n, "passed": n - len(failed),
                                               "failed": failed}, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
