"""The tuner: which providers, threads, execution mode, optimization level and provider options
run a model fastest on this machine (`ep_core.tune`, `python -m ep_core tune`; docs/cli.md).

The search is coordinate descent from the defaults: one stage per knob (provider order, intra-op
threads, execution mode with inter-op threads, optimization level, provider options), each stage
timing the current best, the defaults and that knob's variations alternately in short blocks
after idle gaps (so machine noise hits them alike, and no trial runs among another's still
spinning worker threads), keeping a variation only when its median beats the current best by
more than the measured noise. A last round times the winner against the defaults again. Results
are cached on disk by (model hash, feed shapes/dtypes, machine, package version, search space): a
second `tune` with the same key measures nothing.

The configuration is JSON (ep_core/tune_config.py); `InferenceSession(model, **load_config(path))`
uses all of it, `SessionOptions.from_config(path)` its session options alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import InvalidArgument
from .options import GraphOptimizationLevel
from .tune_config import DEFAULTS, Trial, cores, load_config, options_from_dict, resolved_default_providers
CACHE_ENV = "EP_CORE_TUNE_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/ep_core/tune")
NOISE_FLOOR = 0.01            # a win must beat the reference by at least 1% of its median as well
NOISE_Z = 2.0                 # ... and by 2 standard errors of the difference of the medians
SETTLE_S = 0.15               # idle gap before each timed block (spinning worker threads, see below)
BLOCK_S = 0.05                # a timed block lasts about this long
# CUDA provider options worth trying (each alone, turned on); they exist in ep_cuda/provider.py.
CUDA_OPTIONS = ("use_tf32", "prefer_nhwc", "enable_cuda_graph")

Measure = Callable[[list[Callable[[], Any]], int, Any], list[list[float]]]


# --- measuring -----------------------------------------------------------------------------------

@dataclass
class TrialResult:
    trial: Trial
    stage: str
    times_ms: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def median_ms(self) -> float:
        return float(np.median(self.times_ms)) if self.times_ms else float("inf")

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.times_ms, 90)) if self.times_ms else float("inf")

    @property
    def sigma_ms(self) -> float:
        """Robust spread of one run (1.4826 x median absolute deviation)."""
        if not self.times_ms:
            return float("inf")
        t = np.asarray(self.times_ms)
        return float(1.4826 * np.median(np.abs(t - np.median(t))))

    def to_dict(self) -> dict:
        return {"name": self.trial.name, "stage": self.stage, "config": self.trial.config(),
                "median_ms": self.median_ms if self.times_ms else None,
                "p90_ms": self.p90_ms if self.times_ms else None, "runs": len(self.times_ms),
                "times_ms": list(self.times_ms), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> "TrialResult":
        return cls(Trial.from_config(d["config"], d["name"]), d["stage"], list(d["times_ms"]), d["error"])


def noise_ms(reference: TrialResult, candidate: TrialResult) -> float:
    """How much faster (median) `candidate` must be to count: NOISE_Z standard errors of the
    difference of the two medians (each 1.2533 sigma / sqrt(runs), sigma the robust spread of one
    run), and at least NOISE_FLOOR of the reference's median."""
    se = 1.2533 * float(np.sqrt(reference.sigma_ms ** 2 / max(len(reference.times_ms), 1) +
                                candidate.sigma_ms ** 2 / max(len(candidate.times_ms), 1)))
    return max(NOISE_Z * se, NOISE_FLOOR * reference.median_ms)


def select(results: Sequence[TrialResult], reference: int = 0) -> int:
    """Index of the trial to keep: the fastest median if it beats `results[reference]` by more
    than the noise (`noise_ms`), else the reference. Failed trials never win."""
    ref = results[reference]
    ok = [k for k, r in enumerate(results) if r.times_ms and not r.error]
    if not ok:
        return reference
    best = min(ok, key=lambda k: (results[k].median_ms, k != reference))
    if best == reference or not ref.times_ms or ref.error:
        return best
    if ref.median_ms - results[best].median_ms > noise_ms(ref, results[best]):
        return best
    return reference


def measure_alternating(runners: list[Callable[[], Any]], runs: int, bar: Any = None, *,
                        settle_s: float = SETTLE_S, block_s: float = BLOCK_S) -> list[list[float]]:
    """Per runner, `runs` timings in ms. After two untimed warm-up runs each, the runners take
    turns in blocks (round i starts with runner i mod n). Each block starts after `settle_s` of
    idle time and its first run is not timed: a multi-threaded configuration's worker threads
    (BLAS, OpenMP) keep spinning for a while after a run and would slow whichever trial runs
    next. A block lasts about `block_s` (at least one timed run), so fast models are not
    dominated by the gaps."""
    slowest = 0.0
    for w in range(2):
        for fn in runners:
            t = time.perf_counter()
            fn()
            if w:
                slowest = max(slowest, time.perf_counter() - t)
    block = max(1, min(runs, int(block_s / max(slowest, 1e-6))))
    times: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    i = 0
    while len(times[0]) < runs:
        take = min(block, runs - len(times[0]))
        for j in range(n):
            k = (i + j) % n
            if settle_s:
                time.sleep(settle_s)
            runners[k]()
            for _ in range(take):
                t = time.perf_counter()
                runners[k]()
                times[k].append((time.perf_counter() - t) * 1e3)
        if bar is not None:
            bar.update(take)
        i += 1
    return times


def _build_session(model: Any, trial: Trial):
    """The session a trial runs (a module function so tests can count or replace it)."""
    import warnings
    from .session import InferenceSession
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return InferenceSession(model, **trial.session_kwargs())


# --- the search ----------------------------------------------------------------------------------

def thread_counts(cores: int) -> list[int]:
    """1..cores; on many-core machines powers of two and `cores`."""
    if cores <= 8:
        return list(range(1, cores + 1))
    counts = [1]
    while counts[-1] * 2 < cores:
        counts.append(counts[-1] * 2)
    return counts + [cores]


def provider_orders(available: Sequence[str]) -> list[list[str]]:
    """Every order of the available non-CPU providers (CPU last), plus CPU alone."""
    import itertools
    others = [p for p in available if p != "cpu"]
    orders = [list(p) + ["cpu"] for r in range(len(others), 0, -1)
              for p in itertools.permutations(others, r)][:6]
    return orders + [["cpu"]]


def _stage_variations(stage: str, inc: Trial, available: Sequence[str], cores: int) -> list[Trial]:
    """One stage's variations of the incumbent `inc` (each stage varies the previous winner)."""
    if stage == "providers":
        out = [inc.with_(providers=o, provider_options=None) for o in provider_orders(available)]
        return out + [inc.with_(providers="auto", provider_options=None)]
    if stage == "intra_op_threads":
        return [inc.with_(intra_op_num_threads=n) for n in thread_counts(cores)]
    if stage == "execution_mode":
        out = [inc.with_(execution_mode="ORT_SEQUENTIAL", inter_op_num_threads=0)]
        for n in sorted({2, cores}):
            if n >= 2:
                out.append(inc.with_(execution_mode="ORT_PARALLEL", inter_op_num_threads=n))
        return out
    if stage == "optimization_level":
        return [inc.with_(graph_optimization_level=lvl.name)
                for lvl in (GraphOptimizationLevel.ORT_DISABLE_ALL, GraphOptimizationLevel.ORT_ENABLE_BASIC,
                            GraphOptimizationLevel.ORT_ENABLE_EXTENDED, GraphOptimizationLevel.ORT_ENABLE_ALL)]
    if stage == "provider_options":
        provs = inc.providers if isinstance(inc.providers, (list, tuple)) else None
        if provs is None and inc.providers is None:
            provs = resolved_default_providers()
        if not provs or "cuda" not in provs:
            return []
        base = [dict(p) for p in inc.provider_options] if inc.provider_options else [{} for _ in provs]
        out = []
        for opt in CUDA_OPTIONS:
            po = [dict(d) for d in base]
            po[list(provs).index("cuda")][opt] = True
            out.append(inc.with_(providers=list(provs), provider_options=po))
        return out
    raise ValueError(stage)


STAGES = ("providers", "intra_op_threads", "execution_mode", "optimization_level", "provider_options")


# --- results and cache ---------------------------------------------------------------------------

@dataclass
class TuneResult:
    """What `tune` found. `best` is the configuration to use; `trials` every measurement (stage by
    stage); `default`/`chosen` the final alternating re-measurement of the two."""
    best: Trial
    trials: list[TrialResult]
    default: TrialResult
    chosen: TrialResult
    key: dict
    cached: bool = False
    cache_path: str = ""

    @property
    def speedup(self) -> float:
        """Default median / chosen median in the final round (1.0 when the defaults were kept)."""
        if self.best.identity() == DEFAULTS.identity() or not self.chosen.times_ms:
            return 1.0
        return self.default.median_ms / self.chosen.median_ms

    def config(self) -> dict:
        cfg = self.best.config()
        cfg["name"] = self.best.name
        cfg["measured"] = {"median_ms": self.chosen.median_ms, "p90_ms": self.chosen.p90_ms,
                           "default_median_ms": self.default.median_ms,
                           "default_p90_ms": self.default.p90_ms, "speedup": self.speedup}
        cfg["key"] = self.key
        return cfg

    def save(self, path: str | os.PathLike) -> str:
        """Write the chosen configuration as JSON (`load_config` / `SessionOptions.from_config`)."""
        path = os.fspath(path)
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.config(), f, indent=2)
        return path

    def to_dict(self) -> dict:
        return {"best": self.best.config() | {"name": self.best.name}, "speedup": self.speedup,
                "default": self.default.to_dict(), "chosen": self.chosen.to_dict(),
                "trials": [t.to_dict() for t in self.trials], "key": self.key, "cached": self.cached,
                "cache_path": self.cache_path}

    @classmethod
    def from_dict(cls, d: dict) -> "TuneResult":
        return cls(Trial.from_config(d["best"], d["best"].get("name", "best")),
                   [TrialResult.from_dict(t) for t in d["trials"]], TrialResult.from_dict(d["default"]),
                   TrialResult.from_dict(d["chosen"]), d["key"], d.get("cached", False),
                   d.get("cache_path", ""))

    def plot(self, path: str | os.PathLike) -> str:
        """PNG: each trial's median (bar) and p90 (whisker), per stage; defaults and the choice marked."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("TuneResult.plot needs matplotlib: pip install matplotlib") from None
        rows = [r for r in self.trials if r.times_ms]   # the final round included
        labels = [f"{r.stage}: {r.trial.name}" for r in rows]
        med = [r.median_ms for r in rows]
        err = [r.p90_ms - r.median_ms for r in rows]
        best_id = self.best.identity()
        colors = ["tab:green" if r.trial.identity() == best_id else
                  "tab:gray" if r.trial.identity() == DEFAULTS.identity() else "tab:blue" for r in rows]
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(rows) + 1.5))
        y = np.arange(len(rows))[::-1]
        ax.barh(y, med, xerr=[np.zeros(len(err)), err], color=colors, capsize=2)
        ax.set_yticks(y, labels, fontsize=7)
        ax.set(xlabel="latency ms (bar: median, whisker: p90)",
               title=f"tune: chosen {self.best.name!r}, {self.speedup:.2f}x the defaults")
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=100)
        plt.close(fig)
        return os.fspath(path)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The tuner's cache folder: the argument, else $EP_CORE_TUNE_CACHE, else ~/.cache/ep_core/tune."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _model_sha256(model: Any) -> str:
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError:
            from .errors import NoSuchFile
            raise NoSuchFile(f"model file not found: {model}") from None
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString(deterministic=True)
    else:
        raise InvalidArgument(f"tune: model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    return hashlib.sha256(data).hexdigest()


def _package_version() -> str:
    try:
        from importlib.metadata import version
        return version("ep-runtime")
    except Exception:
        return "unknown"


def cache_key(model: Any, feeds: dict[str, Any], trials: Sequence[dict] | None = None) -> dict:
    """What a cached result depends on: the model's bytes, the feeds' shapes and dtypes, the
    machine (CPU model and count, available providers), the package version, the search space."""
    from .providers import get_available_providers
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"model_sha256": _model_sha256(model),
            "feeds": {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in sorted(feeds.items())},
            "machine": {"cpu": cpu, "cores": cores(), "providers": list(get_available_providers())},
            "version": _package_version(),
            "search": "stages:" + ",".join(STAGES) if trials is None else
            hashlib.sha256(json.dumps(trials, sort_keys=True, default=str).encode()).hexdigest()}


def _key_file(directory: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return directory / f"{digest}.json"


def _random_feeds(model: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for every required input; symbolic dims 1."""
    import warnings
    from .session import InferenceSession
    from .types import np_dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sess = InferenceSession(model, providers=["cpu"])
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in sess._feed_spec.required:
        tt = v.type.tensor_type if v.type is not None and v.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            raise InvalidArgument(f"tune: input '{v.name}' has no tensor shape; pass sample_feeds")
        dtype = np_dtype(tt.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else 1 for d in tt.shape.dim]
        if dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iub":
            feeds[v.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            raise InvalidArgument(f"tune: cannot make a random '{v.name}' of {dtype}; pass sample_feeds")
    return feeds


# --- tune ----------------------------------------------------------------------------------------

def tune(model: Any, sample_feeds: dict[str, Any] | None = None, *, runs: int = 20,
         trials: Sequence[dict] | None = None, cache_dir: str | os.PathLike | None = None,
         progress: bool = True, use_cache: bool = True, providers: Sequence[str] | None = None,
         measure: Measure | None = None, log: Callable[[str], None] | None = None) -> TuneResult:
    """Find the fastest configuration of `model` (path, bytes or ModelProto) on this machine.

    `sample_feeds`: the inputs to time (default: random, symbolic dims 1). `runs`: timed runs per
    trial per round. `trials`: configurations to try instead of the staged search (dicts with
    `providers`, `provider_options`, `session_options`, optionally `name`); the defaults are always
    a trial. `cache_dir`: see `cache_dir()`; `use_cache=False` measures even on a cache hit (and
    refreshes the entry). `providers`: the providers whose orders to try (default: every
    available one; "auto" is tried too where sessions accept it). `measure(runners, runs, bar)
    -> times per runner` replaces the timing (tests inject timings). `log` receives one line per
    decision. Returns a TuneResult; `.save(path)` writes the configuration.
    """
    if runs < 1:
        raise InvalidArgument(f"tune: runs must be >= 1, got {runs}")
    feeds = dict(sample_feeds) if sample_feeds is not None else _random_feeds(model)
    available = list(providers) if providers is not None else _available()
    key = cache_key(model, feeds, trials if trials is not None or providers is None
                    else [{"providers": available}])
    directory = _cache_dir_arg(cache_dir)
    path = _key_file(directory, key)
    if use_cache and path.is_file():
        try:
            result = TuneResult.from_dict(json.loads(path.read_text()))
            result.cached, result.cache_path = True, str(path)
            return result
        except (ValueError, KeyError, TypeError):
            pass   # an unreadable entry (older format, partial write): measure again
    measure = measure or measure_alternating
    say = log or (lambda s: None)
    sessions: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def runner(trial: Trial):
        ident = trial.identity()
        if ident not in sessions and ident not in errors:
            try:
                sess = _build_session(model, trial)
                sess.run(None, feeds)
                sessions[ident] = sess
            except Exception as e:   # a configuration this machine or model refuses: not a winner
                if ident == DEFAULTS.identity():
                    raise   # the model itself does not load or run: nothing to tune
                errors[ident] = f"{type(e).__name__}: {e}"
                if trial.providers == "auto":
                    errors[ident] = f"providers='auto' not accepted by this build ({errors[ident]})"
        sess = sessions.get(ident)
        return None if sess is None else (lambda: sess.run(None, feeds))

    def round_(stage: str, candidates: list[Trial]) -> list[TrialResult]:
        results = [TrialResult(t, stage) for t in candidates]
        fns = [runner(t) for t in candidates]
        live = [k for k, f in enumerate(fns) if f is not None]
        for k, r in enumerate(results):
            if fns[k] is None:
                r.error = errors.get(r.trial.identity(), "session failed")
        if len(live) < 2 and stage != "final":   # the others failed: nothing to compare
            return [r for r in results if r.error]
        bar = _bar(runs, f"tune {stage}", progress)
        try:
            times = measure([fns[k] for k in live], runs, bar)
        finally:
            if bar is not None:
                bar.close()
        for k, ts in zip(live, times):
            results[k].times_ms = [float(t) for t in ts]
        return results

    all_results: list[TrialResult] = []
    incumbent = DEFAULTS
    if trials is not None:
        plan = [("trials", [Trial.from_config(t, t.get("name") or f"trial {i + 1}")
                            for i, t in enumerate(trials)])]
    else:
        plan = [(s, None) for s in STAGES]
    n_cores = cores()
    for stage, given in plan:
        variations = given if given is not None else _stage_variations(stage, incumbent, available, n_cores)
        candidates, seen = [incumbent], {incumbent.identity()}
        if DEFAULTS.identity() not in seen:
            candidates.append(DEFAULTS)
            seen.add(DEFAULTS.identity())
        for t in variations:
            if t.identity() not in seen:
                seen.add(t.identity())
                candidates.append(t)
        if len(candidates) == 1 or (given is None and all(
                t.identity() in (incumbent.identity(), DEFAULTS.identity()) for t in variations)):
            continue   # nothing new to try at this stage
        results = round_(stage, candidates)
        all_results += results
        if results and results[0].trial is incumbent:   # else every variation failed: keep it
            incumbent = results[select(results, 0)].trial
        say(f"{stage}: kept {incumbent.name!r}")
        keep = {incumbent.identity(), DEFAULTS.identity()}
        for ident in [i for i in sessions if i not in keep]:
            del sessions[ident]
    # The final round: the choice against the defaults, alternating, defaults preferred on a tie.
    if incumbent.identity() != DEFAULTS.identity():
        final = round_("final", [DEFAULTS, incumbent])
        all_results += final
        default, chosen = final
        if select(final, 0) == 0:
            say(f"final: {incumbent.name!r} not faster than the defaults beyond the noise")
            incumbent, chosen = DEFAULTS, default
    else:
        default = chosen = round_("final", [DEFAULTS])[0]
        all_results.append(default)
    result = TuneResult(incumbent, all_results, default, chosen, key)
    try:   # a measured result always (re)writes its cache entry
        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        os.replace(tmp, path)
        result.cache_path = str(path)
    except OSError as e:   # a read-only home: the result is still returned
        say(f"tune cache not written ({e})")
    return result


def _cache_dir_arg(override: str | os.PathLike | None) -> Path:
    """`cache_dir()` under another name: inside `tune` its argument `cache_dir` hides the function."""
    return cache_dir(override)


def _available() -> list[str]:
    from .providers import get_available_providers
    return list(get_available_providers())


def _bar(runs: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from .cli.common import Progress
    return Progress(runs, desc, True)


__all__ = ["tune", "TuneResult", "TrialResult", "Trial", "load_config", "options_from_dict", "select",
           "noise_ms", "measure_alternating", "cache_dir", "cache_key", "DEFAULTS", "STAGES"]
