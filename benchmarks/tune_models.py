"""The tuner on the benchmark models: is the chosen configuration at least as fast as the defaults?

    python benchmarks/tune_models.py [--models mobilenetv2 lstm ...] [--runs N] [--confirm N]
                                     [--cache-dir DIR] [--out benchmarks/results] [--merge]

For each model of `benchmarks.models` (built once, cached under benchmarks/.cache/): `ep_core.tune`
on the model's benchmark feeds (staged search, `--runs` timed runs per trial per stage), then an
independent re-measurement of the chosen configuration against the defaults: two fresh sessions
timed alternately in blocks, each block after an idle gap with its first run untimed (the
`time_pair` of benchmarks/cpu_vs_onnxruntime.py, so neither meets the other's spinning worker
threads). A second `tune` call with the same key shows the cache at work (its time, no trials).

Acceptance (issue 18): on every model the chosen configuration's re-measured median is at most the
defaults' median plus the measured noise (the tuner's `noise_ms`: 2 standard errors of the
difference of the medians, at least 1%), or the tuner kept the defaults: "pass". Writes
`tune_models_<date>_<machine>.{json,md}` into --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import models as M  # noqa: E402
from benchmarks.cpu_vs_onnxruntime import time_pair  # noqa: E402
from benchmarks.machine import machine_info, machine_tag  # noqa: E402

DATE = datetime.date.today().isoformat()
DEFAULT_MODELS = ["mobilenetv2", "resnet50", "yolov8n_320", "bert_base", "gpt2_decoder_step", "lstm", "gru",
                  "sklearn_scaler_logreg", "sklearn_scaler_forest", "vad_lstm"]


def tune_model(name: str, runs: int, confirm: int, cache_dir: str, budget_s: float) -> dict:
    import ep_core
    from ep_core.tune import TrialResult, noise_ms
    from ep_core.tune_config import DEFAULTS, load_config

    path = str(M.path(name))
    feeds = M.feeds(name)
    t0 = time.perf_counter()
    result = ep_core.tune(path, feeds, runs=runs, cache_dir=cache_dir, progress=False, use_cache=False)
    tune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ep_core.tune(path, feeds, runs=runs, cache_dir=cache_dir, progress=False)
    cached_s = time.perf_counter() - t0
    kept_defaults = result.best.identity() == DEFAULTS.identity()
    row = {"model": name, "chosen": result.best.name, "config": result.config(),
           "kept_defaults": kept_defaults, "tune_s": round(tune_s, 2),
           "second_tune_cached": again.cached, "second_tune_s": round(cached_s, 3),
           "trials": [{"stage": r.stage, "trial": r.trial.name, "median_ms": r.median_ms if r.times_ms else None,
                       "p90_ms": r.p90_ms if r.times_ms else None, "error": r.error} for r in result.trials],
           "tuner_final_default_ms": result.default.median_ms, "tuner_final_chosen_ms": result.chosen.median_ms}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        default = ep_core.InferenceSession(path, **load_config(DEFAULTS.config()))
        chosen = ep_core.InferenceSession(path, **load_config(result.best.config()))
    # Independent re-measurement, even when the defaults were kept (then both sessions are the
    # defaults and the ratio shows the noise of the method itself).
    td, tc = time_pair(lambda: default.run(None, feeds), lambda: chosen.run(None, feeds),
                       warmup=2, repeat=confirm, budget_s=budget_s)
    td, tc = np.asarray(td) * 1e3, np.asarray(tc) * 1e3
    med_d, med_c = float(np.median(td)), float(np.median(tc))
    noise = noise_ms(TrialResult(DEFAULTS, "confirm", list(td)), TrialResult(result.best, "confirm", list(tc)))
    row.update(default_ms=round(med_d, 4), chosen_ms=round(med_c, 4),
               default_p90_ms=round(float(np.percentile(td, 90)), 4),
               chosen_p90_ms=round(float(np.percentile(tc, 90)), 4),
               ratio_chosen_over_default=round(med_c / med_d, 4), noise_ms=round(noise, 4),
               confirm_runs=int(len(td)),
               # kept defaults: both sessions are the defaults (the ratio shows the method's noise)
               passed=bool(kept_defaults or med_c <= med_d + noise))
    print(f"{name:24s} chosen {result.best.name!r:34s} default {med_d:9.3f} ms  chosen {med_c:9.3f} ms  "
          f"ratio {med_c / med_d:5.3f}  {'pass' if row['passed'] else 'FAIL'}  tune {tune_s:6.1f} s  "
          f"second tune {'cached' if again.cached else 'measured'} {cached_s:.3f} s", flush=True)
    return row


def write(rows: list[dict], args: argparse.Namespace, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"tune_models_{DATE}_{machine_tag()}"
    if args.merge and stem.with_suffix(".json").exists():   # keep the other models of earlier runs
        done = {r["model"] for r in rows}
        rows = [r for r in json.loads(stem.with_suffix(".json").read_text())["models"]
                if r["model"] not in done] + rows
    doc = {"date": DATE, "machine": machine_info(), "models": rows, "all_passed": all(r["passed"] for r in rows)}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    lines = [f"# Tuner vs defaults ({DATE}, {doc['machine']['cpu']}, {doc['machine']['cores']} cores)", "",
             "`python benchmarks/tune_models.py --runs R --confirm C --models ...` (R, C per model below). "
             "Re-measured: fresh default and chosen sessions "
             "timed alternately in blocks after idle gaps. pass: chosen median <= default median + noise, "
             "or the defaults were kept (then both columns time the defaults).",
             "", "| model | R, C | chosen | default ms | chosen ms | chosen/default | noise ms | result | tune s | "
             "second tune |", "|---|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['runs_per_trial']}, {r['confirm_blocks']} | {r['chosen']} | "
                     f"{r['default_ms']:.3f} | {r['chosen_ms']:.3f} | "
                     f"{r['ratio_chosen_over_default']:.3f} | {r['noise_ms']:.3f} | "
                     f"{'pass' if r['passed'] else 'FAIL'} | {r['tune_s']:.1f} | "
                     f"{'cache hit' if r['second_tune_cached'] else 'measured'} ({r['second_tune_s']:.3f} s) |")
    lines += ["", f"All passed: {doc['all_passed']}.", "", "Trials (tuner's own measurements, median / p90 ms):", ""]
    for r in rows:
        lines.append(f"- **{r['model']}**: " + "; ".join(
            f"{t['stage']}/{t['trial']} " + (f"{t['median_ms']:.3f}/{t['p90_ms']:.3f}" if t["median_ms"]
                                              is not None else "failed") for t in r["trials"]))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(M.MODELS))
    ap.add_argument("--runs", type=int, default=10, help="tuner: timed runs per trial per stage")
    ap.add_argument("--confirm", type=int, default=10, help="re-measurement: alternating blocks")
    ap.add_argument("--budget-s", type=float, default=20.0, help="re-measurement time cap per model")
    ap.add_argument("--cache-dir", default=None, help="tuner cache (default: a fresh temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models of today's result file (runs in several short parts)")
    args = ap.parse_args()
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="ep_core_tune_bench_")
    rows = []
    for name in args.models:
        if M.MODELS[name].missing():
            print(f"skip {name}: needs {M.MODELS[name].missing()}")
            continue
        row = tune_model(name, args.runs, args.confirm, cache_dir, args.budget_s)
        rows.append(row | {"runs_per_trial": args.runs, "confirm_blocks": args.confirm})
    stem = write(rows, args, Path(args.out))
    print(f"wrote {stem}.json and .md; all passed (this run): {all(r['passed'] for r in rows)}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
