"""Load time: our load stage and session creation against onnxruntime's session creation.

    python benchmarks/load_time.py [--models resnet50 vgg19] [--repeat 5] [--work /tmp/ep_core_load_time]
                                   [--out benchmarks/results]

Models: ResNet-50 from `benchmarks.models` (98 MB) and a VGG-19-sized model (548 MB of float32
weights: 16 convs + 3 fully connected layers, random weights), both written to `--work` (never
to the repository). Each file is read once before timing so both runtimes start from the page
cache. Then, `--repeat` times, in turn: `ep_core.load.load(path)` (the load stage alone: parse,
validation, shape inference, Graph with weights), `ep_core.InferenceSession(path)` (the whole
session build, CPU provider) and `onnxruntime.InferenceSession(path)` (CPU provider, default
options). The best of the runs is the headline (other processes only ever add time; on a shared
machine the median mostly measures them), the median is reported beside it; every run is in the
JSON. Writes `load_time_<date>_<machine>.{json,md}`.

Acceptance (issue 14, "Load"): session creation <= 1.5x onnxruntime's on both models.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_info, machine_tag  # noqa: E402

VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"]


def vgg19(path: Path) -> Path:
    """VGG-19 layout (torchvision), random weights, written with onnx.helper."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    nodes, inits, x, c = [], [], "input", 3
    for k, v in enumerate(VGG19):
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{k}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{k}"
            continue
        w = rng.standard_normal((v, c, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2 / (9 * c)))
        inits += [numpy_helper.from_array(w, f"features.{k}.weight"),
                  numpy_helper.from_array(np.zeros(v, np.float32), f"features.{k}.bias")]
        nodes += [helper.make_node("Conv", [x, f"features.{k}.weight", f"features.{k}.bias"], [f"conv{k}"],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{k}"], [f"relu{k}"])]
        x, c = f"relu{k}", v
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flatten.shape"))
    nodes.append(helper.make_node("Reshape", [x, "flatten.shape"], ["flat"]))
    x = "flat"
    for j, (n_in, n_out) in enumerate([(25088, 4096), (4096, 4096), (4096, 1000)]):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(0.01)
        inits += [numpy_helper.from_array(w, f"classifier.{j}.weight"),
                  numpy_helper.from_array(np.zeros(n_out, np.float32), f"classifier.{j}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"classifier.{j}.weight", f"classifier.{j}.bias"],
                                      [f"fc{j}"], transB=1))
        x = f"fc{j}"
        if j < 2:
            nodes.append(helper.make_node("Relu", [x], [f"fc{j}_relu"]))
            x = f"fc{j}_relu"
    g = helper.make_graph(nodes, "vgg19", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 1000])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="ep-runtime-benchmarks")
    m.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(m.SerializeToString())
    tmp.replace(path)
    return path


def model_path(name: str, work: Path) -> Path:
    if name == "vgg19":
        return vgg19(work / "vgg19.onnx")
    from benchmarks import models as M
    return M.path(name, out_dir=work)


def _ours_load(path: str) -> None:
    from ep_core.load import load
    load(path)


def _ours_session(path: str) -> None:
    import ep_core
    ep_core.InferenceSession(path, providers=["cpu"])


def _ort_session(path: str) -> None:
    import onnxruntime as ort
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _timed(fn, path: str) -> float:
    gc.collect()
    start = time.perf_counter()
    fn(path)
    seconds = time.perf_counter() - start
    gc.collect()
    return seconds


def bench(name: str, work: Path, repeat: int) -> dict:
    path = str(model_path(name, work))
    Path(path).read_bytes()                          # into the page cache for both runtimes
    runs = {"ours_load": _ours_load, "ours_session": _ours_session, "ort_session": _ort_session}
    for fn in runs.values():                         # warm-up: imports, kernel registries
        fn(path)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for key, fn in runs.items():
            times[key].append(_timed(fn, path))
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    size = Path(path).stat().st_size
    m = onnx.load(path, load_external_data=False)
    row = {"model": name, "size_mb": round(size / 2 ** 20, 1), "nodes": len(m.graph.node),
           "ours_load_s": round(best["ours_load"], 3), "ours_session_s": round(best["ours_session"], 3),
           "ort_session_s": round(best["ort_session"], 3),
           "ratio_session": round(best["ours_session"] / best["ort_session"], 3),
           "ratio_load": round(best["ours_load"] / best["ort_session"], 3),
           "median_s": {k: round(v, 3) for k, v in med.items()},
           "median_ratio_session": round(med["ours_session"] / med["ort_session"], 3),
           "runs": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    print(f"{name}: load {row['ours_load_s']:.3f} s, session {row['ours_session_s']:.3f} s, "
          f"onnxruntime {row['ort_session_s']:.3f} s (ratio {row['ratio_session']:.2f})", flush=True)
    return row


def write_results(rows: list[dict], info: dict, out_dir: Path, repeat: int) -> None:
    date = datetime.date.today().isoformat()
    stem = f"load_time_{date}_{machine_tag()}"
    accepted = all(r["ratio_session"] <= 1.5 for r in rows)
    doc = {"benchmark": "load_time", "date": date, "machine": info, "repeat": repeat, "results": rows,
           "acceptance": "session creation <= 1.5x onnxruntime's on every model", "accepted": accepted}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Load time: ours vs onnxruntime ({date})", "",
             f"Machine: {info['cpu']} ({info['cores']} cores); onnx {onnx.__version__}, "
             f"onnxruntime {info['onnxruntime']}. Command: `python benchmarks/load_time.py`.", "",
             f"Best of {repeat} runs (median in brackets), the three measurements taking turns, file "
             "in the page cache. "
             "`load` is `ep_core.load.load` alone (parse, structure checks, onnx.checker and strict "
             "shape inference on the weightless copy, Graph with the weights); `session` is the whole "
             "`InferenceSession` build (load, optimizer, partition, plan).", "",
             "| model | file (MB) | nodes | ours: load (s) | ours: session (s) | of which after load (s) | "
             "onnxruntime: session (s) | load ours/ort | session ours/ort |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        med = r["median_s"]
        lines.append(f"| {r['model']} | {r['size_mb']} | {r['nodes']} | {r['ours_load_s']:.3f} "
                     f"({med['ours_load']:.3f}) | {r['ours_session_s']:.3f} ({med['ours_session']:.3f}) | "
                     f"{max(0.0, r['ours_session_s'] - r['ours_load_s']):.3f} | {r['ort_session_s']:.3f} "
                     f"({med['ort_session']:.3f}) | {r['ratio_load']:.2f} | {r['ratio_session']:.2f} "
                     f"({r['median_ratio_session']:.2f}) |")
    lines += ["", f"Acceptance (session creation <= 1.5x onnxruntime's on every model): "
                  f"**{'met' if accepted else 'not met'}**."]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / stem}.json/.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["resnet50", "vgg19"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", default="/tmp/ep_core_load_time", help="where the model files are written")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows = [bench(name, Path(args.work), args.repeat) for name in args.models]
    write_results(rows, machine_info(), Path(args.out), args.repeat)


if __name__ == "__main__":
    main()
