"""Convolutions on the GPU: ResNet-50's conv layer shapes, ours against cuDNN
(torch.nn.functional.conv2d, cudnn.benchmark on, TF32 allowed as PyTorch does by default).

    python benchmarks/conv_cuda.py [--batch 32] [--dtypes fp32 fp16] [--out DIR]

ours: ep_cuda.kernels.conv.Conv (implicit GEMM / 1x1 GEMM on the GEMM engine, bias + ReLU fused),
      every kernel variant timed (as the autotuner does), fastest reported. fp32 runs with TF32
      tensor cores (provider option use_tf32=1, as cuDNN in PyTorch), inputs channels-last (option
      prefer_nhwc: the layout the previous conv produced), weights pre-packed once.
      The NCHW (contiguous input) time is reported too.
cuDNN: F.conv2d + bias + relu_ on channels-last tensors (cuDNN's fast layout), same dtype.
Acceptance (issue "CUDA speed"): geometric mean of ours/cuDNN speed >= 0.6 over the layers.
Writes conv_cuda_<date>_<gpu>.{json,md,png}. Without a GPU: a message, exit 0, nothing written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cuda_common import (cuda_time, gpu_info, machine_header, md_table, out_dirs,  # noqa: E402
                                    require_gpu, write)

# (name, C_in, C_out, kernel, stride, input H = W): every distinct conv of torchvision's ResNet-50
LAYERS = [
    ("conv1", 3, 64, 7, 2, 224),
    ("l1.c1", 64, 64, 1, 1, 56), ("l1.c2", 64, 64, 3, 1, 56), ("l1.c3", 64, 256, 1, 1, 56),
    ("l1.c1b", 256, 64, 1, 1, 56), ("l1.ds", 64, 256, 1, 1, 56),
    ("l2.c1", 256, 128, 1, 1, 56), ("l2.c2s", 128, 128, 3, 2, 56), ("l2.c3", 128, 512, 1, 1, 28),
    ("l2.ds", 256, 512, 1, 2, 56), ("l2.c1b", 512, 128, 1, 1, 28), ("l2.c2", 128, 128, 3, 1, 28),
    ("l3.c1", 512, 256, 1, 1, 28), ("l3.c2s", 256, 256, 3, 2, 28), ("l3.c3", 256, 1024, 1, 1, 14),
    ("l3.ds", 512, 1024, 1, 2, 28), ("l3.c1b", 1024, 256, 1, 1, 14), ("l3.c2", 256, 256, 3, 1, 14),
    ("l4.c1", 1024, 512, 1, 1, 14), ("l4.c2s", 512, 512, 3, 2, 14), ("l4.c3", 512, 2048, 1, 1, 7),
    ("l4.ds", 1024, 2048, 1, 2, 14), ("l4.c1b", 2048, 512, 1, 1, 7), ("l4.c2", 512, 512, 3, 1, 7),
]
DT = {"fp32": np.float32, "fp16": np.float16}


def ours(batch: int, cin: int, cout: int, k: int, s: int, hw: int, dtype, channels_last: bool
         ) -> tuple[float, str, object]:
    import cupy

    from ep_core.graph import Node
    from ep_core.kernel import KernelContext
    from ep_cuda.kernels.conv import Conv
    from ep_cuda.kernels.gemm import candidates
    from ep_cuda.launch import Settings, using
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal((batch, hw, hw, cin) if channels_last else (batch, cin, hw, hw),
                            dtype=np.float32).astype(dtype)
    if channels_last:
        x = x.transpose(0, 3, 1, 2)
    w = (rng.standard_normal((cout, cin, k, k), dtype=np.float32) * (2.0 / (cin * k * k)) ** 0.5).astype(dtype)
    b = rng.standard_normal((cout,), dtype=np.float32).astype(dtype)
    node = Node("Conv", ["x", "w", "b"], ["y"], attrs={"strides": [s, s], "pads": [k // 2] * 4},
                since_version=11, opset=17)
    ctx = KernelContext(SimpleNamespace(), constant_inputs={1: w})   # constant weights: packed once
    kern = Conv(node, ctx)
    oh = (hw + 2 * (k // 2) - k) // s + 1
    with using(Settings(use_tf32=True)):
        cands = [c for c in candidates(dtype, cout, batch * oh * oh, 1) if c in
                 ("simt:big", "simt:small", "tc:big", "tc:small")]
    times = {}
    for v in cands:
        st = Settings(use_tf32=True, prefer_nhwc=True, force={"conv": v, "gemm": v})

        def run():
            with using(st):
                return kern.run(x, w, b, None, 0)
        times[v] = cuda_time(run, reps=10, budget_s=1.0)
    best = min(times, key=times.get)
    with using(Settings(use_tf32=True, prefer_nhwc=True, force={"conv": best, "gemm": best})):
        y = kern.run(x, w, b, None, 0)
    return times[best], best, (x, w, b, y)


def cudnn(batch, cin, cout, k, s, hw, dtype, tensors) -> tuple[float | None, float | None]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    x, w, b, y = tensors
    tx = torch.as_tensor(x.transpose(0, 2, 3, 1).copy(), device="cuda").permute(0, 3, 1, 2)
    tw = torch.as_tensor(w, device="cuda").contiguous(memory_format=torch.channels_last)
    tb = torch.as_tensor(b, device="cuda")

    def run():
        return F.conv2d(tx, tw, tb, stride=s, padding=k // 2).relu_()
    from benchmarks.gemm_cuda import _torch_time
    ms = _torch_time(run, reps=10)
    ref = run().permute(0, 2, 3, 1).contiguous().float().cpu().numpy()
    got = np.moveaxis(y.get().astype(np.float32), 1, -1)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6))
    return ms, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=list(DT))
    ap.add_argument("--layers", nargs="*", help="subset of layer names")
    ap.add_argument("--no-nchw", action="store_true", help="skip the NCHW-input timing")
    ap.add_argument("--out", action="append", help="output folder (repeatable)")
    args = ap.parse_args()
    require_gpu("conv_cuda")
    info = gpu_info()
    layers = [l for l in LAYERS if not args.layers or l[0] in args.layers]
    results, rows = [], []
    for dt in args.dtypes:
        for name, cin, cout, k, s, hw in layers:
            ms, variant, tensors = ours(args.batch, cin, cout, k, s, hw, DT[dt], True)
            ms_nchw = None if args.no_nchw else ours(args.batch, cin, cout, k, s, hw, DT[dt], False)[0]
            ref_ms, err = cudnn(args.batch, cin, cout, k, s, hw, DT[dt], tensors)
            oh = (hw + 2 * (k // 2) - k) // s + 1
            flop = 2.0 * args.batch * cout * oh * oh * cin * k * k
            rec = {"dtype": dt, "layer": name, "shape": [args.batch, cin, hw, hw, cout, k, s],
                   "ours_ms": ms, "ours_nchw_ms": ms_nchw, "variant": variant,
                   "ours_tflops": flop / ms / 1e9, "cudnn_ms": ref_ms,
                   "speed_vs_cudnn": (ref_ms / ms) if ref_ms else None, "max_rel_err": err}
            results.append(rec)
            rows.append([dt, name, f"{cin}->{cout} k{k} s{s} @{hw}", variant, round(ms, 3),
                         round(ms_nchw, 3) if ms_nchw else "n/a", round(ref_ms, 3) if ref_ms else "n/a",
                         round(rec["speed_vs_cudnn"], 2) if ref_ms else "n/a",
                         f"{err:.1e}" if err is not None else "n/a"])
            print(rows[-1], flush=True)
    accept = {}
    for dt in args.dtypes:
        r = [x["speed_vs_cudnn"] for x in results if x["dtype"] == dt and x["speed_vs_cudnn"]]
        if r:
            g = float(np.exp(np.mean(np.log(r))))
            accept[dt] = {"geomean": g, "target": 0.6, "pass": g >= 0.6}
    md = machine_header(f"ResNet-50 conv layers, batch {args.batch}: ours vs cuDNN", info)
    md += ("Ours: channels-last input (prefer_nhwc), TF32 for fp32, bias + ReLU fused, fastest "
           "variant; 'NCHW' = contiguous NCHW input. cuDNN: torch F.conv2d + relu_, channels_last, "
           "cudnn.benchmark, TF32 allowed.\n\n")
    md += md_table(["dtype", "layer", "shape", "our variant", "ours ms", "ours NCHW ms", "cuDNN ms",
                    "speed vs cuDNN", "max rel err"], rows)
    md += "\nGeometric mean speed vs cuDNN: " + ", ".join(
        f"{d} {a['geomean']:.2f}x (target 0.6x: {'PASS' if a['pass'] else 'FAIL'})"
        for d, a in accept.items()) + "\n"

    def plot(fig):
        ax = fig.add_subplot(111)
        for dt in args.dtypes:
            r = [x for x in results if x["dtype"] == dt]
            ax.plot([x["layer"] for x in r], [x["speed_vs_cudnn"] or 0 for x in r], "o-", label=dt)
        ax.axhline(0.6, color="gray", ls="--", lw=1)
        ax.set_ylabel("speed vs cuDNN (x)")
        ax.tick_params(axis="x", rotation=70, labelsize=7)
        ax.set_title(f"ResNet-50 conv layers on {info['gpu']}, batch {args.batch}")
        ax.legend()
    write("conv_cuda", info, {"batch": args.batch, "results": results, "acceptance": accept}, md,
          plot, out_dirs(args.out))


if __name__ == "__main__":
    main()
