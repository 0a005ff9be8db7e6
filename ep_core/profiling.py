"""Session profiling (Chrome trace JSON, as onnxruntime writes) and logging configuration.

With `SessionOptions.enable_profiling`, a session records one complete event ("ph": "X") per
build phase (load, optimize, partition, plan) and, on every run, one per node (op type, provider,
input types and shapes) plus one per run. `InferenceSession.end_profiling()` writes
`<profile_file_prefix>_<date>_<time>.json` — an object with a `traceEvents` list that
chrome://tracing and Perfetto open — and returns its path. Timestamps and durations are in µs.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import threading
import time
from typing import Any, Iterator

import numpy as np

LOGGER_NAME = "ep_core"
# onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
_SEVERITY_TO_LEVEL = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR,
                      4: logging.CRITICAL}


def configure_logging(severity: int, verbosity: int = 0) -> logging.Logger:
    """Set the "ep_core" logger's level from onnxruntime's `log_severity_level`.

    Verbose (0) with `log_verbosity_level` > 0 logs everything (level 1, below DEBUG). A handler
    writing to stderr is added once, unless the application configured its own.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if int(severity) < 0:  # onnxruntime's -1: keep the default logger's severity
        return logger
    level = _SEVERITY_TO_LEVEL.get(int(severity), logging.WARNING)
    if int(severity) == 0 and int(verbosity) > 0:
        level = 1
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
        logger.addHandler(handler)
    return logger


def _shape_entry(value: Any) -> dict:
    """onnxruntime's {"<type>": [dims]} description of one input (numpy or device arrays)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {np.dtype(value.dtype).name: [int(d) for d in value.shape]}
    if isinstance(value, list):
        return {"sequence": [len(value)]}
    if value is None:
        return {"none": []}
    return {type(value).__name__: []}


class Profiler:
    """Collects trace events for one session; a disabled profiler records nothing and costs ~0."""

    def __init__(self, enabled: bool = False, prefix: str = "ep_core_profile", session_name: str = ""):
        self.enabled = bool(enabled)
        self.prefix = prefix or "ep_core_profile"
        self.session_name = session_name
        self.events: list[dict] = []
        self._t0 = time.perf_counter()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._started = datetime.datetime.now()

    @classmethod
    def for_session(cls, options: Any) -> "Profiler":
        """The profiler a session's options ask for; also applies their log levels."""
        configure_logging(getattr(options, "log_severity_level", 2), getattr(options, "log_verbosity_level", 0))
        return cls(getattr(options, "enable_profiling", False),
                   getattr(options, "profile_file_prefix", "ep_core_profile"),
                   getattr(options, "logid", ""))

    def _us(self, t: float) -> float:
        return round((t - self._t0) * 1e6, 3)

    def add(self, name: str, cat: str, start: float, end: float, args: dict | None = None) -> None:
        """Record one complete event from perf_counter() times `start`..`end`."""
        if not self.enabled:
            return
        ev = {"name": name, "cat": cat, "ph": "X", "ts": self._us(start),
              "dur": round((end - start) * 1e6, 3), "pid": self._pid, "tid": threading.get_native_id(),
              "args": args or {}}
        with self._lock:
            self.events.append(ev)

    @contextlib.contextmanager
    def phase(self, name: str, **args: Any) -> Iterator[None]:
        """Time a session-build phase (load, optimize, partition, plan, ...)."""
        if not self.enabled:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, "Session", t, time.perf_counter(), args)

    def node_observer(self):
        """The executor callback `(step, inputs, seconds)`, or None when disabled."""
        if not self.enabled:
            return None

        def observe(step: Any, inputs: list, seconds: float) -> None:
            end = time.perf_counter()
            node = step.node
            self.add(node.name or node.op_type, "Node", end - seconds, end, {
                "op_name": node.op_type,
                "domain": node.domain or "ai.onnx",
                "provider": getattr(step.provider, "type", str(step.provider)),
                "input_type_shape": [_shape_entry(v) for v in inputs],
                "duration_us": round(seconds * 1e6, 3),
            })
        return observe

    def end(self) -> str:
        """Write the trace file, stop profiling and return the file's path ("" when disabled)."""
        if not self.enabled:
            return ""
        stamp = self._started.strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self.prefix}_{stamp}.json"
        k = 1
        while os.path.exists(path):
            path = f"{self.prefix}_{stamp}_{k}.json"
            k += 1
        with self._lock:
            events = sorted(self.events, key=lambda e: e["ts"])
            self.enabled = False
        meta = [{"name": "process_name", "ph": "M", "pid": self._pid, "tid": 0,
                 "args": {"name": f"ep_core session {self.session_name}".strip()}}]
        doc = {"traceEvents": meta + events, "displayTimeUnit": "ms",
               "otherData": {"producer": "ep_core", "start_time": self._started.isoformat()}}
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            json.dump(doc, f)
        return path
