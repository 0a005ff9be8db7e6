"""Per-node overhead of the sequential executor against onnxruntime's, on a chain of small
element-wise nodes (4 floats each: the kernels do almost nothing, so the time is the runtime's).

    python benchmarks/node_overhead.py [--nodes 500] [--repeat 300] [--out benchmarks/results]

Both runtimes run the same model, optimizer off (nothing may fold the chain), one intra-op thread,
timed alternately in blocks; the median per-run time divided by the node count is reported.
Writes `node_overhead_<date>_<machine>.{json,md}`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, machine_tag  # noqa: E402

OPS = ("Relu", "Neg", "Abs", "Neg")


def chain_model(n: int) -> bytes:
    nodes, prev = [], "x"
    for k in range(n):
        nodes.append(helper.make_node(OPS[k % len(OPS)], [prev], [f"v{k}"], name=f"n{k}"))
        prev = f"v{k}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def sessions(data: bytes):
    import onnxruntime as ort

    import ep_core
    so = ep_core.SessionOptions()
    so.graph_optimization_level = ep_core.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    ours = ep_core.InferenceSession(data, so, providers=["cpu"])
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o.intra_op_num_threads = 1
    theirs = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
    return ours, theirs


def measure(nodes: int, repeat: int) -> dict:
    ours, theirs = sessions(chain_model(nodes))
    feeds = {"x": np.ones(4, np.float32)}
    times: dict[str, list[float]] = {"ours": [], "onnxruntime": []}
    block = 20
    for _ in range(max(1, repeat // block)):
        for name, sess in (("ours", ours), ("onnxruntime", theirs)):
            sess.run(None, feeds)
            for _ in range(block):
                t = time.perf_counter()
                sess.run(None, feeds)
                times[name].append(time.perf_counter() - t)
    np.testing.assert_array_equal(ours.run(None, feeds)[0], theirs.run(None, feeds)[0])
    return {name: {"median_us_per_node": float(np.median(ts)) / nodes * 1e6,
                   "p90_us_per_node": float(np.percentile(ts, 90)) / nodes * 1e6,
                   "runs": len(ts)} for name, ts in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    result = {"benchmark": "node_overhead", "nodes": args.nodes, "machine": machine_info(),
              "date": datetime.date.today().isoformat(), "results": measure(args.nodes, args.repeat)}
    r = result["results"]
    ratio = r["ours"]["median_us_per_node"] / r["onnxruntime"]["median_us_per_node"]
    result["ratio"] = ratio
    stem = Path(args.out) / f"node_overhead_{result['date']}_{machine_tag()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# Per-node overhead, {args.nodes}-node element-wise chain ({result['date']}, {machine_tag()})", "",
          "| runtime | median µs/node | p90 µs/node |", "|---|---|---|"]
    md += [f"| {name} | {v['median_us_per_node']:.2f} | {v['p90_us_per_node']:.2f} |" for name, v in r.items()]
    md += ["", f"ours / onnxruntime: {ratio:.1f}×"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
