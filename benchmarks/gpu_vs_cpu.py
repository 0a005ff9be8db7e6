"""Whole models on the GPU: our CUDA provider vs our CPU provider vs PyTorch eager on the same GPU.

    python benchmarks/gpu_vs_cpu.py [--models resnet50 ...] [--batches 1 8 32] [--out DIR]

Models from benchmarks/models: ResNet-50, MobileNetV2, the BERT-base-shaped encoder (sequence
128) and the GPT-2-shaped decoder step (KV cache 127), at each batch size.

* ours (CUDA): InferenceSession(providers=[("cuda", opts), "cpu"]), default optimizer level,
  opts: autotuning on (tunable_op_enable/_tuning_enable); for the CNNs prefer_nhwc and use_tf32
  (PyTorch runs cuDNN convolutions with TF32 by default, matmuls without). Median wall time of
  session.run (feeds from the host, outputs back to the host), after warm-up runs.
* ours (CPU): InferenceSession(providers=["cpu"]) on the same host (fewer runs at large batch).
* PyTorch eager: the same ONNX graph run op by op with PyTorch on the GPU
  (benchmarks/torch_eager.py: cuDNN convs with cudnn.benchmark, cuBLAS GEMMs, TF32 defaults),
  host feeds in and outputs out, like ours.
Also measured: kernel launches per run vs node count for the BERT encoder with and without
fusion (outputs compared), and the per-run host overhead of a CUDA-graph replay of a small model.
Acceptance (issue "CUDA speed"): ResNet-50 batch 32 <= 1.3x PyTorch eager and >= 50x our CPU
provider; BERT fewer kernel launches than nodes with equal outputs; replay overhead <= 0.1 ms.
Writes gpu_vs_cpu_<date>_<gpu>.{json,md,png}. Without a GPU: a message, exit 0, nothing written.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cuda_common import (gpu_info, machine_header, md_table, out_dirs, require_gpu,  # noqa: E402
                                    wall_time, write)

CNN = ("resnet50", "mobilenetv2")
_SESSIONS: dict[str, tuple] = {}   # model -> (CUDA session, CPU session), reused by bert_launches
MODELS = ("resnet50", "mobilenetv2", "bert_base", "gpt2_decoder_step")


def model_and_feeds(name: str, batch: int):
    from benchmarks import models
    from benchmarks.models import transformer
    m = models.build(name)
    if name in CNN:
        m = copy.deepcopy(m)
        for v in list(m.graph.input) + list(m.graph.output):
            v.type.tensor_type.shape.dim[0].dim_value = batch
        del m.graph.value_info[:]
        rng = np.random.default_rng(batch)
        return m, {"input": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    if name == "bert_base":
        return m, transformer.bert_feeds(batch=batch)
    return m, transformer.gpt2_feeds(batch=batch)


def rel_err(got, want) -> float:
    return max(float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-6))
               for g, w in zip(got, want) if np.asarray(w).dtype.kind == "f")


def bench_model(name: str, batches: list[int], cpu_budget: float, reps: int) -> list[dict]:
    import ep_core
    from benchmarks.torch_eager import TorchEager
    out = []
    # TF32 where PyTorch uses it by default: cuDNN convolutions yes, matmul no
    opts = {"tunable_op_enable": 1, "tunable_op_tuning_enable": 1, "prefer_nhwc": int(name in CNN),
            "use_tf32": int(name in CNN)}
    sess_cuda = sess_cpu = None
    for batch in batches:
        m, feeds = model_and_feeds(name, batch)
        data = m.SerializeToString()
        if sess_cuda is None or name in CNN:   # CNN inputs have a static batch: one session each
            t = time.perf_counter()
            sess_cuda = ep_core.InferenceSession(data, providers=[("cuda", opts), "cpu"])
            build_cuda = time.perf_counter() - t
            sess_cpu = ep_core.InferenceSession(data, providers=["cpu"])
            _SESSIONS[name] = (sess_cuda, sess_cpu)
        rec = {"model": name, "batch": batch, "session_build_s": round(build_cuda, 2)}
        for _ in range(3):   # warm-up: NVRTC (cached), autotuning, arena growth
            got = sess_cuda.run(None, feeds)
        rec["cuda_ms"] = wall_time(lambda: sess_cuda.run(None, feeds), reps=reps, warmup=0, budget_s=6)
        t = time.perf_counter()
        want = sess_cpu.run(None, feeds)
        first = (time.perf_counter() - t) * 1e3
        rec["cpu_ms"] = min(first, wall_time(lambda: sess_cpu.run(None, feeds), reps=3, warmup=0,
                                             budget_s=cpu_budget)) if first < cpu_budget * 1e3 else first
        rec["max_rel_err_vs_cpu"] = rel_err(got, want)
        rec["placement_nodes"] = len(sess_cuda.get_placement()["nodes"])
        rec["cpu_nodes"] = sum(1 for _, op, p in sess_cuda.get_placement()["nodes"]
                               if p == "cpu" and not op.startswith("Memcpy"))
        try:
            import torch
            torch.backends.cudnn.benchmark = True
            te = TorchEager(m)
            te.run(feeds)
            rec["torch_ms"] = wall_time(lambda: te.run(feeds), reps=reps, warmup=2, budget_s=6)
            rec["torch_rel_err_vs_cpu"] = rel_err(te.run(feeds), want)
            te = None  # free its GPU tensors before the next model
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - torch missing or an op it cannot map
            rec["torch_ms"] = None
            rec["torch_note"] = f"{type(e).__name__}: {e}"
        rec["speedup_vs_cpu"] = rec["cpu_ms"] / rec["cuda_ms"]
        rec["ours_over_torch"] = (rec["cuda_ms"] / rec["torch_ms"]) if rec["torch_ms"] else None
        print(rec, flush=True)
        out.append(rec)
    return out


def bert_launches() -> dict:
    """Kernel launches per run of the BERT encoder, fused vs not, against node counts."""
    import ep_core
    from ep_cuda import loader
    m, feeds = model_and_feeds("bert_base", 1)
    data = m.SerializeToString()
    res = {"model_nodes": len(m.graph.node)}
    outs = {}
    fused_sess, cpu_sess = _SESSIONS.get("bert_base", (None, None))
    for label, opts in (("fused", {}), ("unfused", {"enable_fusion": 0})):
        s = fused_sess if (label == "fused" and fused_sess is not None) else \
            ep_core.InferenceSession(data, providers=[("cuda", opts), "cpu"])
        s.run(None, feeds)
        before = loader.LAUNCHES[0]
        outs[label] = s.run(None, feeds)
        res[f"{label}_launches"] = loader.LAUNCHES[0] - before
        nodes = [(n, op) for n, op, _ in s.get_placement()["nodes"] if not op.startswith("Memcpy")]
        res[f"{label}_nodes"] = len(nodes)
        res[f"{label}_fused_nodes"] = sum(1 for n, _ in nodes if n.startswith("CudaFused"))
    cpu = (cpu_sess or ep_core.InferenceSession(data, providers=["cpu"])).run(None, feeds)
    res["fused_vs_unfused_rel_err"] = rel_err(outs["fused"], outs["unfused"])
    res["fused_vs_cpu_rel_err"] = rel_err(outs["fused"], cpu)
    res["pass"] = res["fused_launches"] < res["model_nodes"] and res["fused_vs_unfused_rel_err"] < 1e-2
    return res


def small_mlp() -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for k in range(4):
        w = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{k}")
        b = numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), f"b{k}")
        inits += [w, b]
        nodes += [helper.make_node("MatMul", [x, f"w{k}"], [f"m{k}"]),
                  helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"]),
                  helper.make_node("Relu", [f"a{k}"], [f"r{k}"])]
        x = f"r{k}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 256])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def graph_overhead(n: int = 2000) -> dict:
    """Host time per CUDA-graph replay of a small model's region vs its eager execution."""
    import cupy

    import ep_core
    from ep_cuda.compiled import GraphRegion
    data = small_mlp()
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    res = {}
    for label, opts in (("graph", {"enable_cuda_graph": 1}), ("eager", {})):
        s = ep_core.InferenceSession(data, providers=[("cuda", opts), "cpu"])
        for _ in range(3):
            y = s.run(None, {"x": x})[0]
        res[f"{label}_session_run_ms"] = wall_time(lambda: s.run(None, {"x": x}), reps=200, warmup=5)
        res[f"{label}_output"] = y
        if label == "graph":
            region = next(st.kernel.fn for st in s._plan.steps
                          if isinstance(getattr(st.kernel, "fn", None), GraphRegion))
            p = s._providers[0]
            dx = p.to_device(x)
            region(dx)
            with p.scope():
                stream = p.stream
                stream.synchronize()
                t = time.perf_counter()
                for _ in range(n):
                    region(dx)
                host = (time.perf_counter() - t) / n
                stream.synchronize()
                wall = (time.perf_counter() - t) / n
                ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
                ev0.record(stream)
                for _ in range(100):
                    region(dx)
                ev1.record(stream)
                ev1.synchronize()
                gpu = cupy.cuda.get_elapsed_time(ev0, ev1) / 100
                t = time.perf_counter()
                for _ in range(200):
                    region.run_eager((dx,))
                stream.synchronize()
                eager_host = (time.perf_counter() - t) / 200
            res.update(replay_host_us=host * 1e6, replay_wall_us=wall * 1e6, replay_gpu_us=gpu * 1e3,
                       eager_region_us=eager_host * 1e6, captured=bool(region.capture_ok))
    res["outputs_equal"] = bool(np.allclose(res.pop("graph_output"), res.pop("eager_output"), rtol=1e-5, atol=1e-5))
    res["pass"] = res["captured"] and res["outputs_equal"] and res["replay_host_us"] <= 100.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--cpu-budget", type=float, default=20.0, help="seconds of CPU runs per case")
    ap.add_argument("--out", action="append", help="output folder (repeatable)")
    args = ap.parse_args()
    require_gpu("gpu_vs_cpu")
    info = gpu_info()
    results = []
    for name in args.models:
        try:
            results += bench_model(name, args.batches, args.cpu_budget, args.reps)
        except Exception as e:  # noqa: BLE001 - keep the other models' numbers
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
            results.append({"model": name, "error": f"{type(e).__name__}: {e}"})
    launches = bert_launches() if "bert_base" in args.models else {}
    print("bert launches:", launches, flush=True)
    overhead = graph_overhead()
    print("cuda graph:", overhead, flush=True)
    rows = [[r["model"], r["batch"], round(r["cuda_ms"], 2), round(r["cpu_ms"], 1),
             round(r["torch_ms"], 2) if r.get("torch_ms") else "n/a", round(r["speedup_vs_cpu"], 1),
             round(r["ours_over_torch"], 2) if r.get("ours_over_torch") else "n/a",
             f"{r['max_rel_err_vs_cpu']:.1e}", r["cpu_nodes"]] for r in results if "error" not in r]
    accept = {}
    r50 = next((r for r in results if r.get("model") == "resnet50" and r.get("batch") == 32), None)
    if r50 and "error" not in r50:
        accept["resnet50_b32_vs_torch"] = {"ratio": r50["ours_over_torch"], "target": "<= 1.3",
                                           "pass": bool(r50["ours_over_torch"] and r50["ours_over_torch"] <= 1.3)}
        accept["resnet50_b32_vs_cpu"] = {"speedup": r50["speedup_vs_cpu"], "target": ">= 50",
                                         "pass": r50["speedup_vs_cpu"] >= 50}
    if launches:
        accept["bert_launches"] = {"launches": launches["fused_launches"], "nodes": launches["model_nodes"],
                                   "pass": launches["pass"]}
    accept["cuda_graph_overhead"] = {"replay_host_us": overhead["replay_host_us"], "target_us": 100,
                                     "pass": overhead["pass"]}
    md = machine_header("Models: our CUDA provider vs our CPU provider vs PyTorch eager", info)
    md += md_table(["model", "batch", "ours CUDA ms", "ours CPU ms", "PyTorch eager ms",
                    "CUDA vs CPU", "ours / PyTorch", "max rel err", "nodes on CPU"], rows)
    if launches:
        md += ("\n## BERT encoder: kernel launches per run (batch 1)\n\n" + md_table(
            ["", "value"], [[k, v] for k, v in launches.items()]))
    md += "\n## CUDA graph replay (4-layer MLP, 1x256)\n\n" + md_table(
        ["", "value"], [[k, round(v, 2) if isinstance(v, float) else v] for k, v in overhead.items()])
    md += "\n## Acceptance\n\n" + "\n".join(f"* {k}: {v}" for k, v in accept.items()) + "\n"
    for r in results:
        if "error" in r:
            md += f"\n* {r['model']}: failed ({r['error']})"
        elif r.get("torch_note"):
            md += f"\n* {r['model']} batch {r['batch']}: PyTorch n/a ({r['torch_note']})"

    def plot(fig):
        ok = [r for r in results if "error" not in r]
        ax = fig.add_subplot(111)
        labels = [f"{r['model']}\nb{r['batch']}" for r in ok]
        x = np.arange(len(ok))
        ax.bar(x - 0.27, [r["cuda_ms"] for r in ok], 0.27, label="ours CUDA")
        ax.bar(x, [r["torch_ms"] or 0 for r in ok], 0.27, label="PyTorch eager")
        ax.bar(x + 0.27, [r["cpu_ms"] for r in ok], 0.27, label="ours CPU")
        ax.set_yscale("log")
        ax.set_ylabel("ms per run (log)")
        ax.set_xticks(x, labels, fontsize=6)
        ax.set_title(f"Models on {info['gpu']}")
        ax.legend()
    write("gpu_vs_cpu", info, {"results": results, "bert_launches": launches,
                               "cuda_graph": overhead, "acceptance": accept}, md, plot, out_dirs(args.out))


if __name__ == "__main__":
    main()
