"""The hostile-model cases of tests/test_hostile_models.py through both runtimes, side by side.

    python benchmarks/hostile_models.py [--long] [--workers 2] [--out benchmarks/results]

Each case runs in a child process with a memory limit and a time limit (tests/hostile_runner.py),
once with our runtime and once with onnxruntime as the runtime under test. Outcomes: typed error
(ours: an `ep_core.errors.EPError`; onnxruntime: one of its status exceptions), correct (ran and
matched an oracle: onnxruntime for ours, onnx.reference for onnxruntime), unverified (ran, no
oracle could run it), silently wrong (ran a model that must be refused — every file read outside
the model's folder is one — or differed from the oracle), untyped exception, out of memory,
hang, crash; "refused valid" counts typed refusals of models that must run. Writes
`hostile_models_<date>_<machine>.{json,md}`.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.machine import machine_info, machine_tag  # noqa: E402
from hostile_runner import run_cases  # noqa: E402

ROWS = [("typed", "typed error"), ("correct", "ran, matches an oracle"),
        ("unverified", "ran, no oracle runs it"), ("refused_valid", "refused a model that must run"),
        ("wrong", "silently wrong"), ("untyped", "untyped exception"), ("oom", "out of memory"),
        ("hang", "hang"), ("crash", "crash"), ("build_error", "case failed to build")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true", help="the EP_FUZZ_LONG case list (~4400 cases)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    results, seconds = {}, {}
    for runner in ("ours", "ort"):
        start = time.monotonic()
        results[runner] = run_cases(runner, long=args.long, workers=args.workers, timeout=args.timeout)
        seconds[runner] = round(time.monotonic() - start, 1)
        print(runner, dict(collections.Counter(r["outcome"] for r in results[runner].values())), flush=True)
    write(results, seconds, machine_info(), Path(args.out), args.long)


def _outcome(r: dict) -> str | dict:
    """The outcome; with its detail only where it is not a plain typed error or correct run."""
    if r["outcome"] in ("typed", "correct"):
        return r["outcome"]
    return {"outcome": r["outcome"], "detail": r["detail"][:300]}


def write(results: dict, seconds: dict, info: dict, out_dir: Path, long: bool) -> None:
    date = datetime.date.today().isoformat()
    stem = f"hostile_models_{date}_{machine_tag()}" + ("_long" if long else "")
    names = sorted(results["ours"])
    counts = {r: collections.Counter(v["outcome"] for v in results[r].values()) for r in results}
    by_category: dict[str, dict[str, collections.Counter]] = collections.defaultdict(dict)
    for runner in results:
        for n in names:
            r = results[runner][n]
            by_category[r["category"]].setdefault(runner, collections.Counter())[r["outcome"]] += 1
    doc = {"benchmark": "hostile_models", "date": date, "machine": info, "long": long,
           "cases": len(names), "seconds": seconds,
           "counts": {r: dict(c) for r, c in counts.items()},
           "cases_detail": {n: {"category": results["ours"][n]["category"], "expect": results["ours"][n]["expect"],
                                **{r: _outcome(results[r][n]) for r in results}} for n in names}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")

    lines = [f"# Hostile models: ours vs onnxruntime ({date})", "",
             f"Machine: {info['cpu']} ({info['cores']} cores); onnxruntime {info['onnxruntime']}. "
             f"Command: `python benchmarks/hostile_models.py{' --long' if long else ''}`. "
             f"{len(names)} cases (tests/hostile_cases.py), each in a child process with a memory "
             f"limit and a {60:.0f} s time limit; wall time: ours {seconds['ours']} s, onnxruntime "
             f"{seconds['ort']} s.", "",
             "Oracles: onnxruntime checks our results, onnx.reference checks onnxruntime's. "
             "\"Silently wrong\" is a run of a model that must be refused (a file read outside the "
             "model's folder, an invalid graph) or a result that differs from the oracle.", "",
             "| outcome | ours | onnxruntime |", "|---|---:|---:|"]
    lines += [f"| {label} | {counts['ours'][key]} | {counts['ort'][key]} |" for key, label in ROWS]
    lines += ["", "## By category (ours / onnxruntime)", "",
              "| category | cases | typed | correct | unverified | wrong | untyped | hang | crash |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cat in sorted(by_category):
        o, t = by_category[cat]["ours"], by_category[cat]["ort"]
        cells = " | ".join(f"{o[k]} / {t[k]}" for k in ("typed", "correct", "unverified", "wrong", "untyped",
                                                        "hang", "crash"))
        lines.append(f"| {cat} | {sum(o.values())} | {cells} |")
    for runner, title in (("ours", "ours"), ("ort", "onnxruntime")):
        bad = [n for n in names if results[runner][n]["outcome"] in ("wrong", "untyped", "oom", "hang", "crash",
                                                                     "refused_valid", "build_error")]
        lines += ["", f"## Cases {title} gets wrong ({len(bad)})", ""]
        lines += [f"- `{n}` ({results[runner][n]['outcome']}): {results[runner][n]['detail'][:200]}"
                  .replace("\n", " ").replace("|", "/") for n in bad] or ["none"]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / stem}.json/.md")


if __name__ == "__main__":
    main()
