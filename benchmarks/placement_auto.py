"""Cost-model placement (`providers="auto"`) against both fixed provider orders, on the test
provider `tests/slow_fast_provider.py` (a second memory space; MatMul 2 ms slower than needed,
Softplus ~15x cheaper than the CPU provider's).

    python benchmarks/placement_auto.py [--repeat 30] [--idle-load 1.0] [--out benchmarks/results]

Models: `mixed` (MatMul -> Softplus, three times, 512x512: neither order is best), `matmul_only`
(the CPU is best), `softplus_only` (the test device is best), `mixed_small` (the same as mixed at
32x32, where copies weigh more). Each model runs with [slowfast, cpu], ["cpu"] (everything on the
CPU; [cpu, slowfast] is the same as [slowfast, cpu]: a session moves the CPU last) and "auto"
(both available, chosen by cost), timed alternately in blocks; medians
reported. One thread everywhere (BLAS, the CPU provider): on a shared machine a two-thread GEMM
is hurt far more by other work than a one-thread one, which would blur the comparison. The cost cache lives in a fresh temporary directory: the first "auto" build measures,
the second reads the cache (both build times reported). Writes
`placement_auto_<date>_<machine>.{json,md}`.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # before numpy loads BLAS
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.machine import machine_info, machine_tag, wait_for_idle  # noqa: E402

# The two fixed orders a user can ask for: the session always moves the CPU last, so
# providers=["cpu", "slowfast"] is the same as ["slowfast", "cpu"]; everything on the CPU is ["cpu"].
ORDERS = {"slowfast>cpu": ["slowfast", "cpu"], "cpu": ["cpu"]}


def layered(n: int, ops: list[str]) -> bytes:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k, op in enumerate(ops):
        if op == "MatMul":
            inits.append(numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n))
                                                 .astype(np.float32), f"w{k}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [f"v{k}"], name=f"mm{k}"))
        else:
            nodes.append(helper.make_node(op, [prev], [f"v{k}"], name=f"{op.lower()}{k}"))
        prev = f"v{k}"
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [n, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


MODELS = {
    "mixed": (512, ["MatMul", "Softplus"] * 3),
    "matmul_only": (512, ["MatMul"] * 4),
    "softplus_only": (512, ["Softplus"] * 4),
    "mixed_small": (32, ["MatMul", "Softplus"] * 3),
}


def bench_model(name: str, repeat: int, idle_load: float) -> dict:
    import ep_core
    from ep_core import providers as registry
    n, ops = MODELS[name]
    data = layered(n, ops)
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    load = wait_for_idle(idle_load, timeout_s=60)   # measurements taken under load mislead "auto"
    options = ep_core.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {k: ep_core.InferenceSession(data, options, providers=v) for k, v in ORDERS.items()}
    available = registry.get_available_providers
    registry.get_available_providers = lambda: ["slowfast", "cpu"]   # "auto" sees the test device
    try:
        t0 = time.perf_counter()
        sessions["auto"] = ep_core.InferenceSession(data, options, providers="auto")
        first_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = ep_core.InferenceSession(data, options, providers="auto")
        second_build = time.perf_counter() - t0
    finally:
        registry.get_available_providers = available
    report = sessions["auto"].get_placement_report()
    ref = sessions["cpu"].run(None, {"x": x})[0]
    for s in sessions.values():
        np.testing.assert_allclose(s.run(None, {"x": x})[0], ref, rtol=1e-4, atol=1e-4)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    names, order_rng = list(sessions), np.random.default_rng(0)
    for _ in range(repeat):
        # Alternating, so load changes hit every variant alike, in a fresh random order each
        # round, so none always runs right after the same neighbour (whose cache traffic it
        # would inherit: a rotation keeps the cyclic neighbours).
        for k in order_rng.permutation(names):
            t0 = time.perf_counter()
            sessions[k].run(None, {"x": x})
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    best_fixed = min(ORDERS, key=lambda k: med[k])
    placed = {k: s.get_placement()["nodes"] for k, s in sessions.items()}
    return {
        "model": name, "shape": [n, n], "ops": ops, "load_at_start": load,
        "median_ms": med,
        "min_ms": {k: float(np.min(v)) * 1e3 for k, v in times.items()},
        "p90_ms": {k: float(np.percentile(v, 90)) * 1e3 for k, v in times.items()},
        "auto_placement": [(nd, op, p) for nd, op, p in sessions["auto"].get_placement()["nodes"]],
        "auto_estimated_ms": report.total_ms,
        "fixed_orders_estimated_ms": report.fixed_orders_ms,
        "best_fixed": best_fixed,
        "auto_same_placement_as": [k for k in ORDERS if placed[k] == placed["auto"]],
        "auto_vs_best_fixed": med["auto"] / med[best_fixed],
        "auto_gain_vs_best_fixed_pct": 100 * (1 - med["auto"] / med[best_fixed]),
        "build_s": {"auto_first": first_build, "auto_cached": second_build},
        "kernels_measured": {"first": report.measured, "second": again.get_placement_report().measured},
    }


def markdown(rows: list[dict], repeat: int, tag: str) -> str:
    """The results table (from the JSON rows: `markdown(json["models"], json["repeat"], tag)`)."""
    lines = [f"# providers=\"auto\" vs fixed orders ({tag}, {repeat} runs, median ms)", "",
             "| model | [slowfast, cpu] | [cpu] | auto | auto vs better fixed | same, fastest runs | "
             "auto est. | auto's placement is that of | build first / cached (s) | measured first / cached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, low = r["median_ms"], r["min_ms"]
        by_min = low["auto"] / min(low[k] for k in ORDERS)
        lines.append(f"| {r['model']} {r['shape'][0]}x{r['shape'][1]} | {m['slowfast>cpu']:.2f} | "
                     f"{m['cpu']:.2f} | {m['auto']:.2f} | {r['auto_vs_best_fixed']:.2f}x "
                     f"({r['auto_gain_vs_best_fixed_pct']:+.0f}%) | {by_min:.2f}x | {r['auto_estimated_ms']:.2f} | "
                     f"{', '.join(r['auto_same_placement_as']) or '(its own)'} | "
                     f"{r['build_s']['auto_first']:.2f} / {r['build_s']['auto_cached']:.2f} | "
                     f"{r['kernels_measured']['first']} / {r['kernels_measured']['second']} |")
    lines += ["", "Where auto's placement equals a fixed order's, the difference in time is noise of the "
              "machine (the same graph runs). \"same, fastest runs\": auto's fastest run over the better "
              "fixed order's fastest, less sensitive to other work on a shared machine.", "",
              "auto placements (compute nodes):", ""]
    for r in rows:
        chosen = ", ".join(f"{nd}:{p}" for nd, op, p in r["auto_placement"] if not op.startswith("Memcpy"))
        lines.append(f"- {r['model']}: {chosen}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--idle-load", type=float, default=1.0,
                    help="wait (up to 60 s per model) for the 1-minute load average to fall below this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    os.environ["EP_CORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="ep_core_placement_bench_")
    import ep_core
    from slow_fast_provider import SlowFastProvider
    ep_core.register_provider("slowfast", SlowFastProvider)
    rows = [bench_model(name, args.repeat, args.idle_load) for name in MODELS]
    stem = f"placement_auto_{datetime.date.today().isoformat()}_{machine_tag()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine_info(), "repeat": args.repeat,
                                                  "models": rows}, indent=1))
    text = markdown(rows, args.repeat, machine_tag())
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
