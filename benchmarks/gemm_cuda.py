"""GEMM on the GPU: our tiled GEMM engine against cuBLAS (cupy.matmul), square M = N = K.

    python benchmarks/gemm_cuda.py [--sizes 1024 2048 4096 8192] [--modes fp32 tf32 fp16] [--out DIR]

ours:   ep_cuda.kernels.gemm.batched_gemm, every kernel variant of the mode timed (what the
        autotuner does); the fastest is reported with its name.
          fp32: SIMT kernels (exact fp32);  tf32: tensor-core kernels on fp32 data (TF32 inputs,
          fp32 accumulation);  fp16: tensor-core kernels on fp16 data (fp32 accumulation).
cuBLAS: cupy.matmul on the same arrays. TF32 needs CUPY_TF32=1 when CuPy is imported, so that
        baseline runs in a child process. PyTorch's matmul is recorded too when installed.
Acceptance (issue "CUDA speed"): 4096^3 fp32 >= 0.8x cuBLAS; tf32 and fp16 >= 0.7x cuBLAS.
Writes gemm_cuda_<date>_<gpu>.{json,md,png}. Without a GPU: a message, exit 0, nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cuda_common import (cuda_time, gpu_info, machine_header, md_table, out_dirs,  # noqa: E402
                                    require_gpu, write)

TARGET = {"fp32": 0.8, "tf32": 0.7, "fp16": 0.7}
DTYPE = {"fp32": np.float32, "tf32": np.float32, "fp16": np.float16}


def arrays(n: int, dtype):
    import cupy
    rng = cupy.random.default_rng(n)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    return a, b


def cublas_times(sizes: list[int], modes: list[str]) -> dict:
    import cupy
    out = {}
    for mode in modes:
        for n in sizes:
            a, b = arrays(n, DTYPE[mode])
            c = cupy.empty((n, n), DTYPE[mode])
            out[f"{mode}:{n}"] = cuda_time(lambda: cupy.matmul(a, b, out=c), reps=20)
    return out


def torch_times(sizes: list[int], modes: list[str]) -> dict:
    try:
        import torch
    except ImportError:
        return {}
    out = {}
    for mode in modes:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        dt = torch.float16 if mode == "fp16" else torch.float32
        for n in sizes:
            a = torch.randn(n, n, device="cuda", dtype=dt)
            b = torch.randn(n, n, device="cuda", dtype=dt)
            c = torch.empty(n, n, device="cuda", dtype=dt)
            out[f"{mode}:{n}"] = _torch_time(lambda: torch.matmul(a, b, out=c))
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def _torch_time(fn, reps: int = 20) -> float:
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return float(np.median(ts))


def ours_times(n: int, mode: str) -> tuple[dict, float]:
    """{variant: ms} and the max relative error of the best variant against cuBLAS."""
    import cupy

    from ep_cuda.kernels.gemm import batched_gemm, candidates
    from ep_cuda.launch import Settings, using
    a, b = arrays(n, DTYPE[mode])
    y = cupy.empty((n, n), DTYPE[mode])
    tf32 = mode == "tf32"
    with using(Settings(use_tf32=tf32)):
        cands = candidates(DTYPE[mode], n, n, 1)
    cands = [c for c in cands if c.startswith("simt")] if mode == "fp32" else \
        [c for c in cands if c.startswith("tc")]
    res = {}
    for v in cands:
        s = Settings(use_tf32=tf32, force={"gemm": v})

        def run():
            with using(s):
                batched_gemm([n, n], [n, 1], [n, n], [n, 1], a, b, out=y)
        res[v] = cuda_time(run, reps=15)
    best = min(res, key=res.get)
    with using(Settings(use_tf32=tf32, force={"gemm": best})):
        batched_gemm([n, n], [n, 1], [n, n], [n, 1], a, b, out=y)
    ref = cupy.matmul(a.astype(np.float32), b.astype(np.float32))
    err = float(cupy.abs(y.astype(np.float32) - ref).max() / cupy.abs(ref).max())
    return res, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--modes", nargs="+", default=["fp32", "tf32", "fp16"], choices=list(TARGET))
    ap.add_argument("--out", action="append", help="output folder (repeatable)")
    ap.add_argument("--cublas-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cublas_child:   # TF32 cuBLAS baseline (CUPY_TF32=1 set by the parent)
        print(json.dumps(cublas_times(args.sizes, args.modes)))
        return
    require_gpu("gemm_cuda")
    if os.environ.get("CUPY_TF32"):
        print("note: CUPY_TF32 is set in this process; the fp32 cuBLAS baseline may use TF32")
    info = gpu_info()
    base = cublas_times(args.sizes, [m for m in args.modes if m != "tf32"])
    if "tf32" in args.modes:
        env = dict(os.environ, CUPY_TF32="1")
        r = subprocess.run([sys.executable, __file__, "--cublas-child", "--modes", "tf32",
                            "--sizes", *map(str, args.sizes)], env=env, capture_output=True, text=True)
        try:
            base.update(json.loads(r.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            print(f"TF32 cuBLAS baseline failed: {r.stderr[-2000:]}")
    torch_ms = torch_times(args.sizes, args.modes)
    rows, results = [], []
    for mode in args.modes:
        for n in args.sizes:
            variants, err = ours_times(n, mode)
            best = min(variants, key=variants.get)
            ms = variants[best]
            flop = 2.0 * n ** 3
            cub = base.get(f"{mode}:{n}")
            ratio = (cub / ms) if cub else None
            rec = {"mode": mode, "n": n, "ours_ms": ms, "ours_tflops": flop / ms / 1e9,
                   "variant": best, "variants_ms": variants, "cublas_ms": cub,
                   "cublas_tflops": flop / cub / 1e9 if cub else None,
                   "torch_ms": torch_ms.get(f"{mode}:{n}"), "ours_over_cublas": ratio,
                   "max_rel_err": err}
            results.append(rec)
            rows.append([mode, n, best, round(rec["ours_tflops"], 1),
                         round(rec["cublas_tflops"], 1) if cub else "n/a",
                         round(ratio, 2) if ratio else "n/a", f"{err:.1e}"])
            print(rows[-1], flush=True)
    accept = {}
    for mode in args.modes:
        r = next((x for x in results if x["mode"] == mode and x["n"] == 4096), None)
        if r and r["ours_over_cublas"]:
            accept[mode] = {"ratio": r["ours_over_cublas"], "target": TARGET[mode],
                            "pass": r["ours_over_cublas"] >= TARGET[mode]}
    md = machine_header("GEMM: ours vs cuBLAS", info)
    md += ("Square GEMM, M = N = K. Ours: the fastest kernel variant of the mode; cuBLAS: "
           "cupy.matmul (TF32 via CUPY_TF32=1).\n\n")
    md += md_table(["mode", "n", "our variant", "ours TFLOP/s", "cuBLAS TFLOP/s",
                    "ours / cuBLAS", "max rel err"], rows)
    md += "\nAcceptance at 4096^3: " + ", ".join(
        f"{m} {a['ratio']:.2f}x (target {a['target']}x: {'PASS' if a['pass'] else 'FAIL'})"
        for m, a in accept.items()) + "\n"

    def plot(fig):
        ax = fig.add_subplot(111)
        labels = [f"{r['mode']}\n{r['n']}" for r in results]
        x = np.arange(len(results))
        ax.bar(x - 0.2, [r["ours_tflops"] for r in results], 0.4, label="ours")
        ax.bar(x + 0.2, [r["cublas_tflops"] or 0 for r in results], 0.4, label="cuBLAS")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"GEMM on {info['gpu']}")
        ax.legend()
    write("gemm_cuda", info, {"results": results, "acceptance": accept}, md, plot, out_dirs(args.out))


if __name__ == "__main__":
    main()
