"""CPU element-wise fusion (compile API, `ep_cpu/fused.py`) side by side with the same graph run
node by node (`enable_fusion: False`) and with onnxruntime, on chains users' models carry.

    python benchmarks/cpu_fusion.py [--threads 1 2] [--repeat 7] [--out benchmarks/results]

Each case is a small graph of element-wise nodes; the three sessions run the same model with
the default optimization level, timed alternately in blocks of ~20 ms of back-to-back runs (each
after an idle pause, its first run untimed, as `cpu_vs_onnxruntime` times sub-millisecond
models); the medians of the blocks' mean run times are reported.
Writes `cpu_fusion_<date>_<machine>.{json,md}`.
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

from benchmarks.machine import SETTLE_S, machine_info, machine_tag  # noqa: E402


def _model(nodes, shape, consts: dict[str, float], outputs=("y",)) -> bytes:
    inits = [helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in consts.items()]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                           helper.make_tensor_value_info("r", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _n(op, ins, out):
    return helper.make_node(op, ins, [out])


CASES = {
    # MobileNetV3's hard-swish as exported from x * relu6(x + 3) / 6, after a residual Add
    "hardswish (1,16,112,112)": ([1, 16, 112, 112], lambda s: _model(
        [_n("Add", ["x", "r"], "a"), _n("Add", ["a", "three"], "b"), _n("Clip", ["b", "zero", "six"], "c"),
         _n("Mul", ["a", "c"], "d"), _n("Div", ["d", "six"], "y")], s,
        {"three": 3.0, "zero": 0.0, "six": 6.0})),
    # Swish on a sum (not after a conv, so no FusedConv takes it)
    "swish (1,64,56,56)": ([1, 64, 56, 56], lambda s: _model(
        [_n("Add", ["x", "r"], "a"), _n("Sigmoid", ["a"], "b"), _n("Mul", ["a", "b"], "y")], s, {})),
    # a transformer block's layer scale and residual: r + gamma * x
    "layer scale (1,197,768)": ([1, 197, 768], lambda s: _model(
        [_n("Mul", ["x", "gamma"], "a"), _n("Add", ["a", "r"], "y")], s, {"gamma": 0.1})),
    # a longer chain on a map larger than the L2 cache
    "6-node chain (1,64,112,112)": ([1, 64, 112, 112], lambda s: _model(
        [_n("Mul", ["x", "w"], "a"), _n("Add", ["a", "r"], "b"), _n("Relu", ["b"], "c"),
         _n("Mul", ["c", "c"], "d"), _n("Sub", ["d", "x"], "e"), _n("Tanh", ["e"], "y")], s, {"w": 0.5})),
    # the same chain on a map that stays in cache
    "6-node chain (1,32,32,32)": ([1, 32, 32, 32], lambda s: _model(
        [_n("Mul", ["x", "w"], "a"), _n("Add", ["a", "r"], "b"), _n("Relu", ["b"], "c"),
         _n("Mul", ["c", "c"], "d"), _n("Sub", ["d", "x"], "e"), _n("Tanh", ["e"], "y")], s, {"w": 0.5})),
}


def sessions(data: bytes, threads: int) -> dict:
    import onnxruntime as ort

    import ep_core
    so = ep_core.SessionOptions()
    so.intra_op_num_threads = threads
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    return {"ours fused": ep_core.InferenceSession(data, so, providers=["cpu"]),
            "ours node by node": ep_core.InferenceSession(data, so, providers=[("cpu", {"enable_fusion": False})]),
            "onnxruntime": ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])}


def measure(name: str, threads: int, repeat: int) -> dict:
    from ep_cpu import jit_tier
    shape, build = CASES[name]
    sess = sessions(build(shape), threads)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32),
             "r": rng.standard_normal(shape).astype(np.float32)}
    for s in sess.values():
        s.run(None, feeds)
    jit_tier.wait()
    ref = sess["ours node by node"].run(None, feeds)[0]
    err = {k: float(np.max(np.abs(s.run(None, feeds)[0] - ref))) for k, s in sess.items()}
    fused_ops = [op for _, op, _ in sess["ours fused"].get_placement()["nodes"]]
    times: dict[str, list[float]] = {k: [] for k in sess}
    t = time.perf_counter()
    sess["ours node by node"].run(None, feeds)
    # blocks of ~20 ms of back-to-back runs, as cpu_vs_onnxruntime times sub-millisecond models
    # (a few runs right after the idle pause time the threads' wake-up, not the kernels)
    block = max(10, min(500, int(0.02 / max(time.perf_counter() - t, 1e-6))))
    for i in range(repeat):
        for k, s in (sess.items() if i % 2 == 0 else reversed(sess.items())):
            # onnxruntime's and BLAS's workers spin after a run and take a core from the next
            # runtime: each block starts after an idle pause, its first run untimed
            time.sleep(SETTLE_S)
            s.run(None, feeds)
            t = time.perf_counter()
            for _ in range(block):
                s.run(None, feeds)
            times[k].append((time.perf_counter() - t) / block)
    return {"case": name, "threads": threads, "fused_nodes": fused_ops, "max_abs_diff": err,
            "median_us": {k: float(np.median(v)) * 1e6 for k, v in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=7, help="blocks per session and case")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--suffix", default="")
    args = ap.parse_args(argv)
    rows = [measure(name, t, args.repeat) for t in args.threads for name in CASES]
    date = datetime.date.today().isoformat()
    result = {"benchmark": "cpu_fusion", "machine": machine_info(), "date": date, "results": rows}
    stem = Path(args.out) / f"cpu_fusion_{date}_{machine_tag()}{args.suffix}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# CPU element-wise fusion ({date}, {machine_tag()})", "",
          "| case | threads | ours fused µs | ours node by node µs | onnxruntime µs | fused / node by node | fused / onnxruntime |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["median_us"]
        md.append(f"| {r['case']} | {r['threads']} | {m['ours fused']:.1f} | {m['ours node by node']:.1f} | "
                  f"{m['onnxruntime']:.1f} | {m['ours fused'] / m['ours node by node']:.2f} | "
                  f"{m['ours fused'] / m['onnxruntime']:.2f} |")
    md += ["", "Fused nodes: " + "; ".join(f"{r['case']}: {', '.join(r['fused_nodes'])}"
                                           for r in rows if r["threads"] == args.threads[0])]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
