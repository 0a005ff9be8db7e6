"""Batch inference on Ray: rows/s of `ep_core.ray.predict` with 1 and with 2 single-threaded actors.

    python benchmarks/ray_batch.py [--rows 2048] [--batch-size 128] [--repeat 2] [--idle-load 1.5]
                                   [--out benchmarks/results]

A local Ray with 2 CPUs; a small CNN (3 conv blocks on 3x64x64 images, about 41 M multiply-adds a
row, random weights); the images are materialized in the object store first, so the timed job
is the inference stage alone. Each actor's session runs one thread (`intra_op_threads=1`, which
also sets OMP/OpenBLAS/MKL threads to 1 in the actor). Per run: the wall time of the whole job
(actor start included) and the steady rate: rows over the span from the first batch's start to
the last batch's end inside the actors (each batch is stamped there), which leaves out actor
start-up. Concurrency 1 and 2 alternate `--repeat` times; the best run of
each is the headline (other processes only ever slow a run down). Writes
`ray_batch_<date>_<machine>.{json,md}`.

Acceptance (issue 19): 2 workers >= 1.7x the rows/s of 1 on a 2-core machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, machine_tag, wait_for_idle  # noqa: E402


def cnn(seed: int = 0):
    """3 x (Conv 3x3 + Relu + MaxPool 2) on 3x64x64, global pooling, a 10-way classifier."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, channels = [], [], "image", 3

    def param(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    for k, out_c in enumerate((32, 64, 128)):
        w = param(f"w{k}", (out_c, channels, 3, 3), (2.0 / (channels * 9)) ** 0.5)
        nodes += [helper.make_node("Conv", [x, w, param(f"b{k}", (out_c,), 0.01)], [f"c{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
                  helper.make_node("MaxPool", [f"r{k}"], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2])]
        x, channels = f"p{k}", out_c
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"]),
              helper.make_node("Gemm", ["feat", param("fc", (channels, 10), 0.1)], ["logits"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def timed_predictor():
    """ep_core.ray's actor class, stamping each batch with when its inference started and ended
    (wall clock, so the stamps of different actors compare)."""
    import pyarrow as pa
    from ep_core import ray as ep_ray

    class Timed(ep_ray._Predictor):
        def __call__(self, batch):
            t0 = time.time()
            table = super().__call__(batch)
            n = table.num_rows
            return table.append_column("t0", pa.array([t0] * n)).append_column("t1", pa.array([time.time()] * n))
    return Timed


def one_run(ds, model: bytes, concurrency: int, batch_size: int, rows: int) -> dict:
    from ep_core import ray as ep_ray
    original, ep_ray._Predictor = ep_ray._Predictor, timed_predictor()   # __main__: pickled by value
    try:
        with warnings.catch_warnings():    # the rows are materialized: no read task needs a CPU
            warnings.filterwarnings("ignore", "the .* inference actor", RuntimeWarning)
            out = ep_ray.predict(ds, model, batch_size=batch_size, concurrency=concurrency, intra_op_threads=1)
        t0 = time.perf_counter()
        seen, first, last = 0, float("inf"), 0.0
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            seen += len(batch["logits"])
            first, last = min(first, batch["t0"].min()), max(last, batch["t1"].max())
        wall = time.perf_counter() - t0
    finally:
        ep_ray._Predictor = original
    assert seen == rows, (seen, rows)
    return {"concurrency": concurrency, "wall_s": wall, "rows_per_s": rows / wall,
            "inference_span_s": float(last - first), "steady_rows_per_s": float(rows / (last - first))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)   # enough that an actor's ~4 s start-up does not decide it
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--idle-load", type=float, default=None,
                    help="before each run, wait until the 1-minute load average is below this")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    import ray
    import ray.data
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        images = np.random.default_rng(1).standard_normal((args.rows, 3, 64, 64)).astype(np.float32)
        # One block per batch: Ray hands a block to one actor, and from_numpy makes one block.
        ds = ray.data.from_numpy(images).rename_columns({"data": "image"}) \
            .repartition(max(1, args.rows // args.batch_size)).materialize()
        model = cnn().SerializeToString()
        runs = []
        for _ in range(args.repeat):
            for concurrency in (1, 2):
                load_before = wait_for_idle(args.idle_load)
                runs.append({**one_run(ds, model, concurrency, args.batch_size, args.rows),
                             "load_average_before": load_before if load_before is not None else os.getloadavg()[0]})
                print(json.dumps(runs[-1]))
    finally:
        ray.shutdown()

    best = {c: max((r for r in runs if r["concurrency"] == c), key=lambda r: r["steady_rows_per_s"])
            for c in (1, 2)}
    best_wall = {c: max((r for r in runs if r["concurrency"] == c), key=lambda r: r["rows_per_s"])
                 for c in (1, 2)}
    speedup = best[2]["steady_rows_per_s"] / best[1]["steady_rows_per_s"]
    speedup_wall = best_wall[2]["rows_per_s"] / best_wall[1]["rows_per_s"]
    load = os.getloadavg()
    result = {"benchmark": "ray_batch", "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "ray": ray.__version__, "rows": args.rows, "batch_size": args.batch_size,
              "load_average_after": load, "runs": runs, "speedup_steady": speedup,
              "speedup_wall": speedup_wall, "acceptance": ">= 1.7x with 2 workers",
              "passed": bool(speedup >= 1.7)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ray_batch_{result['date']}_{machine_tag()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [f"# Ray batch inference, {result['date']} ({machine_info().get('cpu', '')})", "",
             f"{args.rows} rows of 3x64x64, batch {args.batch_size}, CNN of 3 conv blocks, Ray {ray.__version__}, "
             f"1 thread per actor; load average after the runs: {load[0]:.1f}.", "",
             "| actors | best steady rows/s | best rows/s (whole job) |", "|---|---|---|"]
    lines += [f"| {c} | {best[c]['steady_rows_per_s']:.1f} | {best_wall[c]['rows_per_s']:.1f} |" for c in (1, 2)]
    lines += ["", f"Speed-up of 2 actors over 1: **{speedup:.2f}x** steady, {speedup_wall:.2f}x whole job "
                  f"(acceptance: >= 1.7x)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
