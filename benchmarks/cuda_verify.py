"""The Python steps of benchmarks/gpu_verify.sh (one GPU verification run of the CUDA provider).

    python benchmarks/cuda_verify.py env      --out DIR   # driver, CuPy, compute capability; fails without a usable GPU
    python benchmarks/cuda_verify.py compile  --out DIR   # every kernel file compiled once, in parallel (warm cache)
    python benchmarks/cuda_verify.py gemm     --out DIR   # our GEMM vs cupy.matmul: fp32 / TF32 / fp16
    python benchmarks/cuda_verify.py int8     --out DIR   # int8 GEMM (IMMA / dp4a) vs our FP32 GEMM, BERT shapes
    python benchmarks/cuda_verify.py big      --out DIR   # tensors of more than 2**31 elements
    python benchmarks/cuda_verify.py models   --out DIR   # ResNet-50, MobileNetV2, BERT-base, GPT-2 step vs CPU
    python benchmarks/cuda_verify.py sanitize --out DIR   # kernels for compute-sanitizer (called under it)
    python benchmarks/cuda_verify.py report   --out DIR   # gpu_verify.json + gpu_verify.md from the steps

Each step writes <DIR>/<step>.json ({"ok": bool, ...}) and exits 1 when a check fails (0 when all
pass). cupy.matmul and the CPU provider are comparison baselines only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def step(fn: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
    STEPS[fn.__name__] = fn
    return fn


def _err(x: Any, ref: Any) -> float:
    """Max |x - ref| / max |ref| (device arrays, float64 on the device)."""
    import cupy
    d = cupy.abs(x.astype(cupy.float64) - ref.astype(cupy.float64)).max()
    return float(d / max(float(cupy.abs(ref.astype(cupy.float64)).max()), 1e-30))


def kernel(op: str, examples: list, attrs: dict | None = None, opset: int = 17):
    """The CUDA kernel of a one-node model whose inputs have the examples' dtypes (direct call:
    the current device and stream, no provider)."""
    from ep_cuda.testing import cuda_kernel_def, make_model, node_of
    node = node_of(make_model(op, examples, attrs, opset))
    return cuda_kernel_def(node).factory(node, None)


# --------------------------------------------------------------------------------- steps
@step
def env(args: argparse.Namespace) -> dict:
    """The machine: fails (ok False) when the CUDA provider is not available."""
    from ep_cuda import CUDAExecutionProvider
    ok, why = CUDAExecutionProvider.availability()
    rec: dict[str, Any] = {"ok": ok, "available": ok, "reason": why}
    try:
        import cupy
        rec["cupy"] = cupy.__version__
        rec["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        rec["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        from cupy_backends.cuda.libs import nvrtc
        rec["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
        if ok:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            rec["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            rec["compute_capability"] = cupy.cuda.Device(0).compute_capability
            rec["multiprocessors"] = int(props.get("multiProcessorCount", 0))
            rec["memory_gib"] = round(int(props.get("totalGlobalMem", 0)) / 2**30, 1)
            rec["devices"] = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - what could be read is reported
        rec["probe_error"] = f"{type(e).__name__}: {e}"
    print(("CUDA provider available" if ok else f"CUDA provider NOT available: {why}"), flush=True)
    return rec


@step
def compile(args: argparse.Namespace) -> dict:   # noqa: A001 - the step's name
    """Every kernel file's RawModule (all declared instantiations) built once, files in parallel:
    later steps and runs load them from CuPy's disk cache."""
    from concurrent.futures import ThreadPoolExecutor

    import cupy

    from ep_cuda import loader

    man = loader.manifest()

    def one(file: str) -> tuple[str, float, str]:
        t = time.perf_counter()
        try:
            with cupy.cuda.Device(0):
                loader.get_kernel(file, man[file][0])
            return file, time.perf_counter() - t, ""
        except Exception as e:  # noqa: BLE001 - reported per file
            return file, time.perf_counter() - t, f"{type(e).__name__}: {str(e)[:2000]}"

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, sorted(man)))
    files = {f: {"seconds": round(dt, 1), "kernels": len(man[f]), "error": err} for f, dt, err in results}
    for f, r in files.items():
        print(f"{'FAIL' if r['error'] else 'ok  '} {f}.cu: {r['kernels']} kernels, {r['seconds']}s {r['error']}")
    return {"ok": not any(r["error"] for r in files.values()), "files": files}


GEMM_SHAPES = [  # (name, batch, M, N, K, view): view = a misaligned slice of a wider array
    ("square_1024", 1, 1024, 1024, 1024, False), ("square_4096", 1, 4096, 4096, 4096, False),
    ("ragged", 1, 1023, 517, 259, False), ("misaligned_view", 1, 777, 333, 129, True),
    ("batch_70000", 70000, 8, 16, 12, False),
]
GEMM_TOL = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 5e-3}


@step
def gemm(args: argparse.Namespace) -> dict:
    """Our matmul vs cupy.matmul (cuBLAS) on square, ragged, misaligned-view and 70 000-batch
    shapes in fp32, TF32 and fp16; max relative error against a float64 reference."""
    import cupy

    from benchmarks.cuda_common import cuda_time
    from ep_cuda.kernels.gemm import matmul
    from ep_cuda.launch import Settings, using

    rng = cupy.random.default_rng(0)
    rows, ok = [], True
    for mode in ("fp32", "tf32", "fp16"):
        dtype = cupy.float16 if mode == "fp16" else cupy.float32
        for name, batch, m, n, k, view in GEMM_SHAPES:
            shape_a, shape_b = ((batch,) if batch > 1 else ()) + (m, k), ((batch,) if batch > 1 else ()) + (k, n)
            if view:   # offset by one element: breaks 16-byte alignment and contiguity of rows
                a = rng.standard_normal((m, k + 3), dtype=cupy.float32).astype(dtype)[:, 1:k + 1]
                b = rng.standard_normal((k, n + 3), dtype=cupy.float32).astype(dtype)[:, 1:n + 1]
            else:
                a = rng.standard_normal(shape_a, dtype=cupy.float32).astype(dtype)
                b = rng.standard_normal(shape_b, dtype=cupy.float32).astype(dtype)
            with using(Settings(use_tf32=(mode == "tf32"))):
                ours = matmul(a, b)
                t_ours = cuda_time(lambda: matmul(a, b), reps=5, budget_s=0.5)
            ref = cupy.matmul(a.astype(cupy.float64), b.astype(cupy.float64))
            err = _err(ours, ref)
            t_cublas = cuda_time(lambda: cupy.matmul(a, b), reps=5, budget_s=0.5)
            good = bool(np.isfinite(err) and err <= GEMM_TOL[mode] and ours.shape == ref.shape)
            ok &= good
            rows.append({"mode": mode, "shape": name, "batch": batch, "m": m, "n": n, "k": k,
                         "rel_err": err, "ours_ms": t_ours, "cublas_ms": t_cublas, "ok": good})
            print(rows[-1], flush=True)
    return {"ok": ok, "rows": rows}


# BERT-base's GEMMs (tokens = batch x 128): QKV, attention output, FFN in, FFN out
INT8_SHAPES = [("qkv", 768, 2304), ("attn_out", 768, 768), ("ffn_in", 768, 3072), ("ffn_out", 3072, 768)]
INT8_TOKENS = (128, 1024, 4096)


@step
def int8(args: argparse.Namespace) -> dict:
    """The integer GEMM (ep_cuda/kernels/quant_gemm.py) on BERT-base shapes: uint8 activations x
    int8 weights (a K-major constant, as MatMulInteger keeps it) -> int32, each main loop (the
    device's default, IMMA 64x64 / 128x128, dp4a) checked exactly against a float64 product and
    timed against our FP32 GEMM on the same shape; plus the whole DynamicQuantizeMatMul path
    (dynamic quantization + int8 GEMM + float epilogue) against FP32 MatMul."""
    import cupy

    from benchmarks.cuda_common import cuda_time
    from ep_cuda.kernels.gemm import matmul
    from ep_cuda.kernels.quant_gemm import MODE_FLOAT, QEpilogue, choose, int_matmul
    from ep_cuda.kernels.quant import dynamic_quantize
    from ep_cuda.launch import Settings, using

    rng = np.random.default_rng(0)
    rows, ok = [], True
    variants = ["imma", "imma:big", "dp4a"] if int(cupy.cuda.Device(0).compute_capability) >= 80 else ["dp4a"]
    for tokens in INT8_TOKENS:
        for name, k, n in INT8_SHAPES:
            a = cupy.asarray(rng.integers(0, 256, (tokens, k)).astype(np.uint8))
            w_nk = cupy.asarray(rng.integers(-128, 128, (n, k)).astype(np.int8))   # K-major weight
            b = w_nk.T
            za, zb = cupy.asarray(np.uint8(131)), cupy.asarray(np.int8(0))
            ref = cupy.matmul(a.astype(cupy.float64) - 131.0, b.astype(cupy.float64))
            af, bf = a.astype(cupy.float32), cupy.ascontiguousarray(b.astype(cupy.float32))
            t_fp32 = cuda_time(lambda: matmul(af, bf), reps=10, budget_s=0.5)
            rec: dict[str, Any] = {"tokens": tokens, "gemm": name, "m": tokens, "k": k, "n": n,
                                   "default": choose(tokens, n, 1), "fp32_ms": round(t_fp32, 4)}
            good = True
            for v in variants:
                with using(Settings(force={"qgemm": v})):
                    y = int_matmul(a, b, np.int32, QEpilogue(za=za, zb=zb))
                    exact = bool(cupy.all(y.astype(cupy.float64) == ref))
                    t = cuda_time(lambda: int_matmul(a, b, np.int32, QEpilogue(za=za, zb=zb)),
                                  reps=10, budget_s=0.5)
                good &= exact
                rec[f"{v}_ms"] = round(t, 4)
                rec[f"{v}_exact"] = exact
                rec[f"{v}_tops"] = round(2 * tokens * k * n / t / 1e9, 1)
                rec[f"{v}_vs_fp32"] = round(t / t_fp32, 3)
            x = cupy.asarray(rng.standard_normal((tokens, k)).astype(np.float32))
            b_scale = cupy.asarray(np.full(n, 0.01, np.float32))

            def dqmm():
                qa, s, z = dynamic_quantize(x)
                return int_matmul(qa, b, np.float32, QEpilogue(MODE_FLOAT, z, zb, s, b_scale))
            t_dq = cuda_time(dqmm, reps=10, budget_s=0.5)
            rec.update(dynamic_quantize_matmul_ms=round(t_dq, 4), dqmm_vs_fp32=round(t_dq / t_fp32, 3),
                       ok=good)
            ok &= good
            rows.append(rec)
            print(rec, flush=True)
    return {"ok": ok, "rows": rows}


@step
def big(args: argparse.Namespace) -> dict:
    """More than 2**31 elements: element-wise, strided copy (transpose) and a reduction, checked
    at the ends and around the 2**31 boundary (64-bit indexing in every grid-stride loop)."""
    import cupy

    n = 2**31 + 4099
    checks, ok = [], True

    def check(name: str, got: Any, want: Any) -> None:
        nonlocal ok
        idx = cupy.asarray(np.array([0, 1, 2**31 - 1, 2**31, 2**31 + 1, n - 1], np.int64) % got.size)
        good = bool(cupy.all(got.reshape(-1)[idx] == want.reshape(-1)[idx]))
        ok &= good
        checks.append({"check": name, "elements": int(got.size), "ok": good})
        print(checks[-1], flush=True)

    h = (cupy.arange(n, dtype=cupy.uint32) % 7).astype(cupy.float16)   # exact small integers
    f16 = np.zeros(2, np.float16)
    y = kernel("Add", [f16, f16]).compute(h, h)
    check("Add float16", y, h * 2)
    del y, h
    x = (cupy.arange(n, dtype=cupy.uint32) % 7).astype(cupy.int8)
    x2 = x.reshape(2, -1) if n % 2 == 0 else x[:n - 1].reshape(2, -1)
    t = kernel("Transpose", [np.zeros((2, 2), np.int8)], {"perm": [1, 0]}).compute(x2)
    check("Transpose int8 (2, 2**30+...)", t, x2.T)
    del t, x2
    ones = cupy.ones(n, dtype=cupy.float32)
    s = kernel("ReduceSum", [np.zeros(3, np.float32)], {"keepdims": 0}).compute(ones, None)
    good = abs(float(s.reshape(-1)[0]) - n) / n < 1e-3
    ok &= good
    checks.append({"check": "ReduceSum float32 over 2**31+ elements", "value": float(s.reshape(-1)[0]),
                   "expected": n, "ok": good})
    print(checks[-1], flush=True)
    return {"ok": ok, "checks": checks}


MODEL_TOL = {"resnet50": 1e-3, "mobilenetv2": 1e-3, "bert_base": 1e-3, "gpt2_decoder_step": 1e-3}


@step
def models(args: argparse.Namespace) -> dict:
    """ResNet-50, MobileNetV2, BERT-base, GPT-2 decoder step (batch 1): providers ['cuda','cpu']
    vs the CPU provider; exact fp32 (no TF32), every node on the GPU but metadata ops."""
    import ep_core
    from benchmarks.gpu_vs_cpu import model_and_feeds, rel_err

    rows, ok = [], True
    for name in MODEL_TOL:
        rec: dict[str, Any] = {"model": name}
        try:
            m, feeds = model_and_feeds(name, 1)
            data = m.SerializeToString()
            t = time.perf_counter()
            gpu = ep_core.InferenceSession(data, providers=[("cuda", {"use_tf32": 0}), "cpu"])
            rec["build_s"] = round(time.perf_counter() - t, 1)
            got = gpu.run(None, feeds)
            t = time.perf_counter()
            got = gpu.run(None, feeds)
            rec["cuda_ms"] = round((time.perf_counter() - t) * 1e3, 2)
            want = ep_core.InferenceSession(data, providers=["cpu"]).run(None, feeds)
            rec["rel_err"] = rel_err(got, want)
            rec["cpu_nodes"] = [op for _, op, p in gpu.get_placement()["nodes"]
                                if p == "cpu" and not op.startswith("Memcpy")]
            rec["ok"] = bool(rec["rel_err"] <= MODEL_TOL[name])
        except Exception as e:  # noqa: BLE001 - reported per model
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
        ok &= rec["ok"]
        print({k: v for k, v in rec.items() if k != "trace"}, flush=True)
        rows.append(rec)
    return {"ok": ok, "rows": rows}


@step
def sanitize(args: argparse.Namespace) -> dict:
    """A small workload of the tensor-core GEMM, NHWC fp16 conv, softmax and scatter kernels,
    meant to run under `compute-sanitizer --tool racecheck|memcheck` (gpu_verify.sh does)."""
    import cupy

    from ep_cuda.kernels.gemm import matmul
    from ep_cuda.launch import Settings, using

    rng = cupy.random.default_rng(0)
    f16, f32 = np.zeros((1, 1, 1, 1), np.float16), np.zeros((1, 1), np.float32)
    with using(Settings(use_tf32=True, prefer_nhwc=True)):
        a = rng.standard_normal((192, 160), dtype=cupy.float32).astype(cupy.float16)
        matmul(a, a.T)                                           # fp16 tensor cores
        matmul(a.astype(cupy.float32), a.T.astype(cupy.float32))  # TF32 tensor cores
        x = rng.standard_normal((2, 5, 5, 16), dtype=cupy.float32).astype(cupy.float16).transpose(0, 3, 1, 2)
        w = rng.standard_normal((8, 16, 3, 3), dtype=cupy.float32).astype(cupy.float16)
        kernel("Conv", [f16, f16], {"pads": [1, 1, 1, 1]}).compute(x, w)   # NHWC fp16 conv
    kernel("Softmax", [f32], {"axis": -1}).compute(rng.standard_normal((33, 700), dtype=cupy.float32))
    data = cupy.zeros((64, 8), cupy.float32)
    idx = cupy.asarray(np.random.default_rng(0).integers(0, 64, (256, 8)), dtype=cupy.int64)
    for itype in (cupy.int64, cupy.int32):   # atomic-CAS scatter-add, both index types
        kernel("ScatterElements", [f32, np.zeros((1, 1), np.dtype(itype)), f32],
               {"axis": 0, "reduction": "add"}, opset=18).compute(data, idx.astype(itype),
                                                                  cupy.ones((256, 8), cupy.float32))
    cupy.cuda.get_current_stream().synchronize()
    return {"ok": True}


@step
def report(args: argparse.Namespace) -> dict:
    """gpu_verify.json + gpu_verify.md from steps.tsv (written by gpu_verify.sh) and the steps'
    JSON files; ok only when every step succeeded."""
    out = Path(args.out)
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines() if (out / "steps.tsv").exists() else []:
        name, rc, secs = line.split("\t")[:3]
        detail = out / f"{name}.json"
        steps.append({"step": name, "exit": int(rc), "seconds": int(secs),
                      "result": json.loads(detail.read_text()) if detail.exists() else None})
    env_rec = next((s["result"] for s in steps if s["step"] == "env" and s["result"]), {}) or {}
    ok = bool(steps) and all(s["exit"] == 0 for s in steps)
    summary = {"ok": ok, "gpu": env_rec.get("gpu"), "env": env_rec, "steps": steps,
               "total_seconds": sum(s["seconds"] for s in steps)}
    (out / "gpu_verify.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [f"# GPU verification: {'PASS' if ok else 'FAIL'}", "",
             f"GPU: {env_rec.get('gpu', 'none')} (compute capability {env_rec.get('compute_capability', '?')}), "
             f"driver {env_rec.get('cuda_driver', '?')}, CUDA runtime {env_rec.get('cuda_runtime', '?')}, "
             f"CuPy {env_rec.get('cupy', '?')}" + ("" if env_rec.get("available", False)
                                                  else f". Provider unavailable: {env_rec.get('reason')}"),
             "", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['exit']} | {s['seconds']} |" for s in steps]
    lines += ["", f"Total {summary['total_seconds']} s. Logs: `<step>.log`; details: `<step>.json`."]
    (out / "gpu_verify.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"ok": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/cuda_verify.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=sorted(STEPS))
    ap.add_argument("--out", required=True, help="results folder (the step writes <out>/<step>.json)")
    ap.add_argument("-j", "--jobs", type=int, default=8, help="compile: files compiled in parallel")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        rec = STEPS[args.step](args)
    except Exception as e:  # noqa: BLE001 - a crashing step is a failed step, with its reason
        traceback.print_exc()
        rec = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if args.step != "report":
        (Path(args.out) / f"{args.step}.json").write_text(json.dumps(rec, indent=1, default=str))
    return 0 if rec.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
