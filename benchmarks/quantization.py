"""INT8 quantization on real architectures: accuracy, size and latency, ours and onnxruntime's.

    python benchmarks/quantization.py [--models bert_base resnet50] [--repeat N] [--threads N]
                                      [--calib-batches N] [--out benchmarks/results] [--kernels]

BERT-base is quantized dynamically (ep_core.quantization.quantize_dynamic, per-channel weights;
every MatMul, and again with MatMulConstBOnly: the attention MatMuls of two activations in FP32;
and with onnxruntime.quantization.quantize_dynamic, whose MatMulInteger chains our optimizer fuses),
ResNet-50 statically (quant_pre_process, then quantize_static in QDQ and in QOperator format,
per-channel, MinMax over a few random calibration batches run through our runtime). For each: cosine similarity of the INT8 outputs to
FP32 (ours, and onnxruntime running the same files), file sizes, and the latency of FP32 and INT8
on our CPU provider and on onnxruntime's, in the same process, timed in alternating rounds so
machine noise hits all four alike (median; the INT8/FP32 ratios also per round, min/median/max).
Writes quantization_<date>_<machine>.{json,md}; rows of models not re-run are kept from an
existing file of the same day and machine.

Acceptance (issue 17): cosine >= 0.99; INT8 <= 0.3x the FP32 file; INT8 BERT-base on our CPU
provider <= 1.0x our FP32 latency.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import models as M  # noqa: E402
from benchmarks.machine import machine_info, machine_tag  # noqa: E402

DATE = datetime.date.today().isoformat()


def _ours(path: str, threads: int):
    import ep_core
    opts = ep_core.SessionOptions()
    opts.intra_op_num_threads = threads
    return ep_core.InferenceSession(path, opts, providers=["cpu"])


def _ort(path: str, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


class RandomImages:
    """Calibration batches of random images (the benchmark models have random weights anyway)."""

    def __init__(self, feeds: dict, n: int) -> None:
        rng = np.random.default_rng(7)
        self.batches = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in feeds.items()}
                        for _ in range(n)]
        self.pos = 0

    def get_next(self):
        self.pos += 1
        return self.batches[self.pos - 1] if self.pos <= len(self.batches) else None


def quantize(name: str, src: str, work: Path, calib_batches: int) -> list[tuple[str, str, str, float]]:
    """[(variant, description, quantized path, seconds)] for one model."""
    from ep_core.quantization import QuantFormat, quant_pre_process, quantize_dynamic, quantize_static
    out = []
    if name == "resnet50":
        # onnxruntime's recommended order: pre-process (BatchNormalization folds into Conv, so each
        # Conv + Relu quantizes as one unit), then quantize.
        pre = str(work / f"{name}_pre.onnx")
        quant_pre_process(src, pre)
        for variant, fmt in (("int8", QuantFormat.QDQ), ("int8_qoperator", QuantFormat.QOperator)):
            t = time.perf_counter()
            dst = str(work / f"{name}_{variant}.onnx")
            quantize_static(pre, dst, RandomImages(M.feeds(name), calib_batches), quant_format=fmt,
                            per_channel=True)
            out.append((variant, f"quant_pre_process + static {fmt.name}, per-channel, MinMax over "
                        f"{calib_batches} random batches", dst, time.perf_counter() - t))
    else:
        for variant, extra, desc in (("int8", {}, "dynamic, per-channel, every MatMul"),
                                     ("int8_constb", {"MatMulConstBOnly": True},
                                      "dynamic, per-channel, MatMulConstBOnly (attention MatMuls in FP32)")):
            t = time.perf_counter()
            dst = str(work / f"{name}_{variant}.onnx")
            quantize_dynamic(src, dst, per_channel=True, extra_options=extra)
            out.append((variant, desc, dst, time.perf_counter() - t))
        # onnxruntime's own tool writes the MatMulInteger chains our optimizer fuses (rewrites_quant)
        from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic
        t = time.perf_counter()
        dst = str(work / f"{name}_int8_ort_tool.onnx")
        ort_quantize_dynamic(src, dst, per_channel=True)
        out.append(("int8_ort_tool", "onnxruntime.quantization.quantize_dynamic, per-channel", dst,
                    time.perf_counter() - t))
    return out


def time_rounds(runs: dict, repeat: int) -> dict:
    """Each callable once per round, rounds rotating the order; times per round in ms."""
    times = {k: [] for k in runs}
    keys = list(runs)
    for fn in runs.values():     # warm-up
        fn()
    for r in range(repeat):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) * 1e3 for k, v in times.items()}


def _ratio_spread(num: np.ndarray, den: np.ndarray) -> list[float]:
    """[min, median, max] over rounds of num / den timed in the same round."""
    r = num / den
    return [round(float(r.min()), 3), round(float(np.median(r)), 3), round(float(r.max()), 3)]


def bench(name: str, threads: int, repeat: int, calib_batches: int, work: Path) -> list[dict]:
    src = str(M.path(name))
    variants = quantize(name, src, work, calib_batches)
    feeds = M.feeds(name)
    sessions = {"ours_fp32": _ours(src, threads), "ort_fp32": _ort(src, threads)}
    for variant, _, dst, _ in variants:
        sessions[f"ours_{variant}"] = _ours(dst, threads)
        sessions[f"ort_{variant}"] = _ort(dst, threads)
    outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
    per_round = time_rounds({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, repeat)
    lat = {k: float(np.median(v)) for k, v in per_round.items()}
    load = round(os.getloadavg()[0], 2)
    size_f = os.path.getsize(src)
    rows = []
    for variant, desc, dst, q_s in variants:
        size_q = os.path.getsize(dst)
        o, r = f"ours_{variant}", f"ort_{variant}"
        rows.append({"model": name, "variant": variant, "quantization": desc, "quantize_s": round(q_s, 1),
                     "size_fp32_mb": round(size_f / 1e6, 2), "size_int8_mb": round(size_q / 1e6, 2),
                     "size_ratio": round(size_q / size_f, 3),
                     "cosine_ours_int8_vs_fp32": cosine(outs[o], outs["ours_fp32"]),
                     "cosine_ort_int8_vs_fp32": cosine(outs[r], outs["ort_fp32"]),
                     "max_abs_ours_int8_vs_ort_int8": float(np.max(np.abs(outs[o] - outs[r]))),
                     "max_abs_fp32": float(np.max(np.abs(outs["ort_fp32"]))),
                     "latency_ms": {"ours_fp32": round(lat["ours_fp32"], 2), "ours_int8": round(lat[o], 2),
                                    "ort_fp32": round(lat["ort_fp32"], 2), "ort_int8": round(lat[r], 2)},
                     "ours_int8_over_fp32": round(lat[o] / lat["ours_fp32"], 3),
                     "ort_int8_over_fp32": round(lat[r] / lat["ort_fp32"], 3),
                     "ours_int8_over_fp32_per_round_min_median_max":
                         _ratio_spread(per_round[o], per_round["ours_fp32"]),
                     "ort_int8_over_fp32_per_round_min_median_max":
                         _ratio_spread(per_round[r], per_round["ort_fp32"]),
                     "repeat": repeat, "load_avg_1m_after": load})
    return rows


KERNEL_SHAPES = [(512, 768, 768), (512, 768, 3072), (128, 768, 768), (128, 768, 3072), (128, 3072, 768)]


def kernel_gops(threads_list=(1, 2), repeat: int = 15) -> list[dict]:
    """The int8 VNNI GEMM (`ep_cpu.microkernel_int8`, B packed, A already quantized; and with A's
    dynamic quantization) against the FP32 GEMM with a constant B (our compiled microkernel),
    on BERT-base shapes M x K x N: best of `repeat`, GOPS = 2 M K N / s."""
    from ep_cpu import gemm as G
    from ep_cpu import microkernel_int8 as mi
    from ep_cpu.kernels.quantize import Int8Weight
    if not mi.available():
        return []
    rng = np.random.default_rng(0)

    def best(fn):
        fn()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    rows, before = [], G.get_num_threads()
    try:
        for threads in threads_list:
            G.set_num_threads(threads)
            for m, k, n in KERNEL_SHAPES:
                x = rng.standard_normal((m, k)).astype(np.float32)
                packed = G.pack_constant(rng.standard_normal((k, n)).astype(np.float32))
                w = Int8Weight(rng.integers(-127, 128, (k, n)).astype(np.int8), None)
                scale, bias = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
                ap, sums, _, zp = mi.quantize_pack(x, mi.choose_mr(m))
                y = np.empty((m, n), np.float32)
                ops = 2.0 * m * k * n
                t_f = best(lambda: G.gemm(x, packed, bias))
                t_k = best(lambda: mi.matmul(ap, sums, m, w.packed, zp, scale, bias, y.view(np.int32),
                                             threads, G._get_pool))
                t_d = best(lambda: w.dynamic_matmul(x, scale, bias))
                rows.append({"m": m, "k": k, "n": n, "threads": threads,
                             "fp32_gops": round(ops / t_f / 1e9), "int8_kernel_gops": round(ops / t_k / 1e9),
                             "int8_dynamic_gops": round(ops / t_d / 1e9),
                             "int8_kernel_over_fp32_speed": round(t_f / t_k, 2)})
    finally:
        G.set_num_threads(before)
    return rows


def _spread(row: dict, who: str) -> str:
    s = row.get(f"{who}_int8_over_fp32_per_round_min_median_max")
    return f" ({s[0]}-{s[2]})" if s else ""


def markdown(rows: list[dict], info: dict, kernels: list[dict] | None = None) -> str:
    lines = [f"# INT8 quantization, {DATE}", "",
             f"Machine: {info.get('cpu')}, {info.get('threads')} threads, numpy BLAS {info.get('blas')}, "
             f"onnxruntime {info.get('onnxruntime')}. Latency: median of alternating rounds, ms.", "",
             "| model | quantization | FP32 MB | INT8 MB | ratio | cosine ours | cosine ort | ours FP32 | ours INT8 "
             "| ours INT8/FP32 (rounds: min-max) | ort FP32 | ort INT8 | ort INT8/FP32 (rounds: min-max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(f"| {r['model']} ({r['variant']}) | {r['quantization']} | {r['size_fp32_mb']} | {r['size_int8_mb']} | "
                     f"{r['size_ratio']} | {r['cosine_ours_int8_vs_fp32']:.5f} | {r['cosine_ort_int8_vs_fp32']:.5f} | "
                     f"{lat['ours_fp32']} | {lat['ours_int8']} | {r['ours_int8_over_fp32']}{_spread(r, 'ours')} | "
                     f"{lat['ort_fp32']} | {lat['ort_int8']} | {r['ort_int8_over_fp32']}{_spread(r, 'ort')} |")
    lines += ["", "The 1-minute load average after each model is in the JSON: the machine is shared, so "
              "absolute figures are noisy; all sessions of a model were timed in the same rounds."]
    if kernels:
        lines += ["", "## int8 GEMM (AVX-512 VNNI) vs FP32 GEMM, BERT-base shapes", "",
                  "GOPS = 2MKN / best time. int8 kernel: A already quantized and packed; int8 dynamic: "
                  "DynamicQuantizeMatMul's whole work (A's min/max, quantization, packing, GEMM, scale + bias).", "",
                  "| M x K x N | threads | FP32 GOPS | int8 kernel GOPS | int8 dynamic GOPS | kernel / FP32 |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['m']}x{r['k']}x{r['n']} | {r['threads']} | {r['fp32_gops']} | {r['int8_kernel_gops']} | "
                  f"{r['int8_dynamic_gops']} | {r['int8_kernel_over_fp32_speed']}x |" for r in kernels]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=["bert_base", "resnet50"])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--calib-batches", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--kernels", action="store_true",
                   help="also time the int8 VNNI GEMM against the FP32 GEMM on BERT-base shapes")
    args = p.parse_args(argv)
    info = machine_info(args.threads)
    kernels = kernel_gops() if args.kernels else None
    for r in kernels or ():
        print(json.dumps(r))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            for row in bench(name, args.threads, args.repeat, args.calib_batches, Path(work)):
                print(json.dumps(row))
                rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"quantization_{DATE}_{machine_tag()}"
    if stem.with_suffix(".json").exists():   # keep the rows of models not re-run today
        ran = {r["model"] for r in rows}
        previous = json.loads(stem.with_suffix(".json").read_text())
        rows = [r for r in previous.get("results", []) if r.get("model") not in ran] + rows
        kernels = kernels if kernels is not None else previous.get("int8_kernels")
    doc = {"date": DATE, "machine": info, "results": rows}
    if kernels:
        doc["int8_kernels"] = kernels
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    stem.with_suffix(".md").write_text(markdown(rows, info, kernels))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
