"""Run onnx's backend node test cases through the CUDA provider.

    python -m ep_cuda.conformance [substring ...] [--backend emu|gpu] [--quiet]
    python -m ep_cuda.conformance --sessions [--subset] [--backend emu|gpu] [--json FILE]

Kernel mode (default): every single-node case whose node the CUDA registry claims (kernel found,
attributes supported) runs through that kernel directly: on a GPU (`gpu`) or on the CPU emulator
of the kernels (`emu`, the default; needs g++). Outputs are compared with the case's expected
outputs by onnx's `Runner.assert_similar_outputs`. Cases the CUDA provider would leave to the CPU
are counted as not claimed.

Session mode (`--sessions`): every case (or `--subset`, see `session_subset`) runs through a
session with `providers=[cuda, "cpu"]` (the emulated provider for `emu`) and through a CPU-only
session; the run fails when the two pass lists differ (partitioning, fusion, copies, control
flow included). tests/test_cuda_node_cases.py runs the subset in CI.
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


# ---------------------------------------------------------------------------- session mode
def claimed_ops(model: onnx.ModelProto) -> set[str]:
    """Op types of the model's top-level nodes the CUDA provider claims (static: inferred types)."""
    from ep_core.graph import graph_from_proto
    from .provider import CUDAExecutionProvider
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - claims on the declared types only
        pass
    try:
        graph = graph_from_proto(model.graph, {o.domain: o.version for o in model.opset_import})
    except Exception:  # noqa: BLE001 - the session reports the model's problem
        return set()
    reg = CUDAExecutionProvider.kernel_registry()
    ops = set()
    for n in graph.nodes:
        kdef = reg.lookup(n)
        supports = getattr(kdef.factory, "supports", None) if kdef is not None else None
        if kdef is not None and (supports is None or supports(n)):
            ops.add(n.op_type)
    return ops


def has_subgraph(model: onnx.ModelProto) -> bool:
    """Whether a node of the model holds a graph attribute (If, Loop, Scan, SequenceMap...)."""
    graph_kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in graph_kinds for n in model.graph.node for a in n.attribute)


# cases that found CUDA provider bugs (issue 13): always in the subset
REGRESSION_CASES = ("test_dynamicquantizelinear_expanded", "test_dynamicquantizelinear_max_adjusted_expanded",
                    "test_dynamicquantizelinear_min_adjusted_expanded", "test_scan9_scalar")


def session_subset(cases: list, per_op: int = 2) -> list:
    """A deterministic subset for CI: for every op the CUDA provider claims in some case, the
    first `per_op` such cases by name; every control-flow case; REGRESSION_CASES."""
    chosen, count = set(REGRESSION_CASES), {}
    for case in sorted(cases, key=lambda c: c.name):
        if has_subgraph(case.model):
            chosen.add(case.name)
        for op in sorted(claimed_ops(case.model)):
            if count.get(op, 0) < per_op:
                count[op] = count.get(op, 0) + 1
                chosen.add(case.name)
    return [c for c in cases if c.name in chosen]


def run_session_case(case, providers: list) -> str | None:
    """None when the case passes through a session with these providers, else the reason."""
    from onnx.backend.test.runner import Runner

    import ep_core
    try:
        sess = ep_core.InferenceSession(case.model, providers=providers)
        names = [v.name for v in case.model.graph.input]
        for inputs, ref in case.data_sets:
            outs = sess.run(None, dict(zip(names, _arrays(inputs))))
            Runner.assert_similar_outputs(_arrays(ref), outs, case.rtol, case.atol)
    except Exception as e:  # noqa: BLE001 - report, do not stop
        msg = str(e).strip().splitlines()
        return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
    return None


def compare_sessions(case, backend: str = "emu") -> tuple[str | None, str | None]:
    """(CPU-only reason, CUDA+CPU reason) for one case; None means passed."""
    from .testing import register_emulated
    cuda = "cuda" if backend == "gpu" else register_emulated()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return run_session_case(case, ["cpu"]), run_session_case(case, [cuda, "cpu"])


def main_sessions(cases: list, backend: str, subset: bool, json_path: str | None, quiet: bool) -> int:
    import json
    if subset:
        cases = session_subset(cases)
    t0 = time.time()
    diff, cpu_pass, cuda_pass = {}, 0, 0
    for case in cases:
        cpu, cuda = compare_sessions(case, backend)
        cpu_pass += cpu is None
        cuda_pass += cuda is None
        if (cpu is None) != (cuda is None):
            diff[case.name] = {"cpu": cpu, "cuda": cuda}
            print(f"DIFF {case.name}  cpu: {cpu or 'pass'}  cuda: {cuda or 'pass'}")
        elif not quiet:
            print(f"{'PASS' if cuda is None else 'FAIL'} {case.name}")
    summary = (f"{len(cases)} node cases through sessions (backend={backend}): CPU-only {cpu_pass} passed, "
               f"cuda+cpu {cuda_pass} passed, {len(diff)} differ ({time.time() - t0:.1f}s)")
    print(summary)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"cases": len(cases), "cpu_passed": cpu_pass, "cuda_passed": cuda_pass,
                       "backend": backend, "differ": diff, "summary": summary}, f, indent=1, sort_keys=True)
    return 1 if diff else 0


def main(argv: list[str] | None = None) -> int:
    from onnx.backend.test.case.node import collect_testcases

    ap = argparse.ArgumentParser(prog="python -m ep_cuda.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("patterns", nargs="*")
    ap.add_argument("--backend", default="emu", choices=["emu", "gpu"])
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--sessions", action="store_true",
                    help="run through sessions [cuda, cpu] and compare with CPU-only sessions")
    ap.add_argument("--subset", action="store_true", help="with --sessions: the CI subset only")
    ap.add_argument("--json", help="with --sessions: write the result here")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    if args.patterns:
        low = [p.lower() for p in args.patterns]
        cases = [c for c in cases if any(p in c.name.lower() for p in low)]
    if args.sessions:
        return main_sessions(cases, args.backend, args.subset, args.json, args.quiet)
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
