"""Run onnx's backend node test cases through the CUDA kernels alone.

    python -m ep_cuda.conformance [substring ...] [--backend emu|gpu] [--quiet]

Every single-node case whose node the CUDA registry claims (kernel found, attributes supported)
runs through that kernel directly: on a GPU (`gpu`) or on the CPU emulator of the kernels (`emu`,
the default; needs g++). Outputs are compared with the case's expected outputs by onnx's
`Runner.assert_similar_outputs`. Cases the CUDA provider would leave to the CPU are counted as
not claimed. For the full session path on a GPU use `python tests/node_cases.py --providers cuda,cpu`.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from .testing import cuda_kernel_def, node_of, run_cuda


def _arrays(values):
    return [numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in values]


def claimed(model: onnx.ModelProto):
    """The node of a one-node model if the CUDA provider would run it, else None."""
    if len(model.graph.node) != 1:
        return None
    try:
        node = node_of(model)
    except Exception:
        return None
    kdef = cuda_kernel_def(node)
    if kdef is None:
        return None
    supports = getattr(kdef.factory, "supports", None)
    return node if supports is None or supports(node) else None


def run_case(case, backend: str) -> tuple[str, str]:
    """('pass'|'fail'|'skip', reason)."""
    from onnx.backend.test.runner import Runner

    node = claimed(case.model)
    if node is None:
        return "skip", "not claimed by the CUDA provider"
    names = [v.name for v in case.model.graph.input]
    try:
        for inputs, ref in case.data_sets:
            inputs, ref = _arrays(inputs), _arrays(ref)
            feeds = dict(zip(names, inputs))
            args = [feeds.get(i) if i else None for i in node.inputs]
            outs = run_cuda(node, args, backend)
            Runner.assert_similar_outputs(ref, outs[:len(ref)], case.rtol, case.atol)
    except Exception as e:
        msg = str(e).strip().splitlines()
        return "fail", f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
    return "pass", ""


def main(argv: list[str] | None = None) -> int:
    from onnx.backend.test.case.node import collect_testcases

    ap = argparse.ArgumentParser(prog="python -m ep_cuda.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("patterns", nargs="*")
    ap.add_argument("--backend", default="emu", choices=["emu", "gpu"])
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    if args.patterns:
        low = [p.lower() for p in args.patterns]
        cases = [c for c in cases if any(p in c.name.lower() for p in low)]
    counts = {"pass": 0, "fail": 0, "skip": 0}
    failed = []
    t0 = time.time()
    for case in cases:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            status, reason = run_case(case, args.backend)
        counts[status] += 1
        if status == "fail":
            failed.append((case.name, reason))
        if not args.quiet and status != "skip":
            print(f"{status.upper()} {case.name}" + (f"  -- {reason}" if reason else ""))
    if args.quiet:
        for name, reason in failed:
            print(f"FAIL {name}  -- {reason}")
    print(f"\n{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} not claimed of "
          f"{len(cases)} node cases (backend={args.backend}, {time.time() - t0:.1f}s)")
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
