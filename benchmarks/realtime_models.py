"""Small stateful real-time models (~1 ms a run), ours against onnxruntime, streamed chunk by chunk.

    python benchmarks/realtime_models.py [--models vad_lstm vad_gru] [--runs 300] [--threads 1]
                                         [--profile] [--out benchmarks/results]

`vad_lstm` has the shape of Silero VAD v5 (random weights, fixed seed; built by
`benchmarks/models/realtime.py`, which the suite in cpu_vs_onnxruntime.py shares). The new state
goes back in with the next chunk. `vad_gru` is the same with a GRU cell.

Both runtimes run the same model with the same intra-op thread count (default 1: a real-time
model runs beside the application), timed alternately in blocks; the per-run median and p90 are
reported, with /proc/loadavg before and after, and, because this machine is shared, the CPU time
of the calling thread (`time.thread_time`) per run next to the wall time. Writes
`realtime_models_<date>_<machine>.{json,md}`. Load times are of a second session in the process (the
first also pays for importing the kernels).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, machine_tag  # noqa: E402
from benchmarks.models.realtime import HID, vad_model  # noqa: E402

MODELS = {"vad_lstm": lambda: vad_model("LSTM").SerializeToString(),
          "vad_gru": lambda: vad_model("GRU").SerializeToString()}


def _sessions(data: bytes, threads: int):
    import onnxruntime as ort

    import ep_core
    so = ep_core.SessionOptions()
    so.intra_op_num_threads = threads
    t = time.perf_counter()
    ours = ep_core.InferenceSession(data, so, providers=["cpu"])
    load_ours = time.perf_counter() - t
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    t = time.perf_counter()
    theirs = ort.InferenceSession(data, o, providers=["CPUExecutionProvider"])
    load_ort = time.perf_counter() - t
    return ours, theirs, {"ours": load_ours, "onnxruntime": load_ort}


def _chunks(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 576)).astype(np.float32) * 0.1 for _ in range(n)]


def measure(name: str, runs: int, threads: int) -> dict:
    data = MODELS[name]()
    ours, theirs, load = _sessions(data, threads)
    chunks = _chunks(64)
    sr = np.array(16000, np.int64)
    # Same stream through both: outputs and carried state must agree chunk by chunk.
    s_ours = s_ort = np.zeros((2, 1, HID), np.float32)
    err = 0.0
    for x in chunks[:16]:
        p_ours, s_ours = ours.run(None, {"x": x, "state": s_ours, "sr": sr})
        p_ort, s_ort = theirs.run(None, {"x": x, "state": s_ort, "sr": sr})
        err = max(err, float(np.abs(p_ours - p_ort).max()), float(np.abs(s_ours - s_ort).max()))
    wall: dict[str, list[float]] = {"ours": [], "onnxruntime": []}
    cpu: dict[str, list[float]] = {"ours": [], "onnxruntime": []}
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    block, k = 25, 0
    states = {"ours": s_ours, "onnxruntime": s_ort}
    while len(wall["ours"]) < runs:
        for rt, sess in (("ours", ours), ("onnxruntime", theirs)):
            for _ in range(block):
                feeds = {"x": chunks[k % len(chunks)], "state": states[rt], "sr": sr}
                k += 1
                t, c = time.perf_counter(), time.thread_time()
                _, states[rt] = sess.run(None, feeds)
                cpu[rt].append(time.thread_time() - c)
                wall[rt].append(time.perf_counter() - t)
    out = {"max_abs_diff": err, "load_ms": {k: v * 1e3 for k, v in load.items()},
           "loadavg_before": load_before, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    for rt in wall:
        out[rt] = {"median_ms": float(np.median(wall[rt])) * 1e3,
                   "p90_ms": float(np.percentile(wall[rt], 90)) * 1e3,
                   "cpu_median_ms": float(np.median(cpu[rt])) * 1e3, "runs": len(wall[rt])}
    out["ratio"] = out["ours"]["median_ms"] / out["onnxruntime"]["median_ms"]
    out["numba_imported"] = "numba" in sys.modules   # batch-1 recurrences never need it
    out["cpu_ratio"] = out["ours"]["cpu_median_ms"] / out["onnxruntime"]["cpu_median_ms"]
    return out


def profile(name: str, threads: int, runs: int = 200) -> str:
    ours, _, _ = _sessions(MODELS[name](), threads)
    feeds = {"x": _chunks(1)[0], "state": np.zeros((2, 1, HID), np.float32), "sr": np.array(16000, np.int64)}
    for _ in range(10):
        ours.run(None, feeds)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        ours.run(None, feeds)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of our session.run")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    date = datetime.date.today().isoformat()
    result = {"benchmark": "realtime_models", "date": date, "threads": args.threads,
              "machine": machine_info(), "models": {}}
    md = [f"# Small real-time models, ours vs onnxruntime ({date}, {machine_tag()}, "
          f"{args.threads} intra-op thread{'s' if args.threads > 1 else ''})", "",
          "| model | ours ms (p90) | onnxruntime ms (p90) | ratio | CPU-time ratio | load ms ours / ort "
          "| max abs diff | loadavg before / after |", "|---|---|---|---|---|---|---|---|"]
    # One throwaway session first: the first session of a process also pays for importing the
    # kernels and onnx's schemas, which is not this model's load time.
    _sessions(MODELS[args.models[0]](), args.threads)
    for name in args.models:
        r = measure(name, args.runs, args.threads)
        result["models"][name] = r
        md.append(f"| {name} | {r['ours']['median_ms']:.3f} ({r['ours']['p90_ms']:.3f}) | "
                  f"{r['onnxruntime']['median_ms']:.3f} ({r['onnxruntime']['p90_ms']:.3f}) | "
                  f"{r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['load_ms']['ours']:.0f} / "
                  f"{r['load_ms']['onnxruntime']:.0f} | {r['max_abs_diff']:.1e} | "
                  f"{' '.join(r['loadavg_before'])} / {' '.join(r['loadavg_after'])} |")
        print(md[-1], flush=True)
        if args.profile:
            print(profile(name, args.threads))
    stem = Path(args.out) / f"realtime_models_{date}_{machine_tag()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:4]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
