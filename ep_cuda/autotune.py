"""Autotuning of kernel variants per (op, shape, dtype, layout), like cuDNN's benchmark mode and
onnxruntime's TunableOp.

Provider options (off by default; the tests never tune):

| option | meaning |
|---|---|
| `tunable_op_enable` | use tuned choices (this process's and those cached on disk) |
| `tunable_op_tuning_enable` | time the candidates of a problem not seen before, on first use |
| `tunable_op_max_tuning_duration_ms` | time budget of one tuning (default 30 ms after warm-up) |

Choices are cached in `<cache dir>/autotune.json` (ep_cuda.loader.cache_dir(), i.e.
`$EP_CUDA_CACHE_DIR` or `~/.cache/ep_cuda`), keyed by GPU name and compute capability, so a later
process (or session) starts tuned. Nothing is measured while a CUDA graph is being captured.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from . import loader
from .launch import EMULATED, is_capturing

DEFAULT_BUDGET_MS = 30.0
_file_lock = threading.Lock()


def device_tag() -> str:
    if EMULATED[0]:
        return "emulator"
    import cupy
    dev = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(dev.id)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name} sm_{dev.compute_capability}"


class Tuner:
    """Chooses among kernel variants by timing them once per problem key."""

    def __init__(self, tuning: bool = False, max_ms: float = 0.0, path: str | Path | None = None):
        self.tuning = bool(tuning)
        self.max_ms = float(max_ms) or DEFAULT_BUDGET_MS
        self.path = Path(path) if path else loader.cache_dir() / "autotune.json"
        self.choices: dict[str, str] = self._load()
        self.timings: dict[str, dict[str, float]] = {}   # key -> variant -> ms (this process)
        self.tuned = 0

    def _load(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        with _file_lock:
            merged = self._load()
            merged.update(self.choices)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
            os.replace(tmp, self.path)

    def choose(self, key: str, candidates: Sequence[str], run: Callable[[str], None]) -> str | None:
        """The variant to launch for `key` (None: no opinion, use the heuristic). `run(variant)`
        launches one variant on the current stream (outputs may be overwritten freely)."""
        full = f"{device_tag()}|{key}"
        known = self.choices.get(full)
        if known in candidates:
            return known
        if not self.tuning or is_capturing():
            return None
        best = self._measure(full, list(candidates), run)
        self.choices[full] = best
        self.tuned += 1
        self._save()
        return best

    def _measure(self, key: str, candidates: list[str], run: Callable[[str], None]) -> str:
        times: dict[str, list[float]] = {c: [] for c in candidates}
        timer = _Timer()
        for c in candidates:      # warm-up: compile, first-touch
            run(c)
        timer.sync()
        deadline = time.perf_counter() + self.max_ms / 1e3
        rounds = 0
        while rounds < 3 or (time.perf_counter() < deadline and rounds < 50):
            for c in candidates:
                times[c].append(timer.time(lambda: run(c)))
            rounds += 1
        med = {c: sorted(v)[len(v) // 2] for c, v in times.items()}
        self.timings[key] = med
        return min(med, key=med.get)


class _Timer:
    """CUDA events on a GPU, wall clock in the emulator."""

    def __init__(self) -> None:
        self.gpu = not EMULATED[0]
        if self.gpu:
            import cupy
            self.cupy = cupy

    def sync(self) -> None:
        if self.gpu:
            self.cupy.cuda.get_current_stream().synchronize()

    def time(self, fn: Callable[[], None]) -> float:
        if not self.gpu:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(self.cupy.cuda.get_elapsed_time(start, end))
