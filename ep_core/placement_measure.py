"""What a node costs on a provider, and what a copy between memory spaces costs (cost-model
placement, `placement_cost`).

A node's cost is measured by running its kernel alone on representative inputs of its inferred
shapes and dtypes (random floats, zeros for integer inputs, the constant initializer itself where
the input is a session constant). A node that cannot be measured (unknown rank, a control-flow
body, a kernel that fails on made-up data, no registered kernel) gets an estimate from its bytes
and FLOPs, the same on every provider, so copies and the priority order decide it. A copy is
measured per direction through the provider's DataTransfer at two sizes (latency + per byte).

Every measurement is cached on disk, keyed by op, domain, schema version, attributes, input
shapes and dtypes, provider type and device, and this machine, so a second session measures
nothing. The directory: the session config entry `ep_core.placement.cache_dir`, else
`$EP_CORE_CACHE_DIR/placement`, else `~/.cache/ep_core/placement`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .graph import Graph, Node
from .kernel import KernelContext, KernelDef
from .provider import HOST, Device, ExecutionProvider
from .types import tensor_dtype, tensor_shape

CACHE_CONFIG_KEY = "ep_core.placement.cache_dir"
CACHE_ENV = "EP_CORE_CACHE_DIR"
_FORMAT = 1
_REPEATS = 5              # timed runs after one warm-up (the fastest taken: least disturbed)
_BUDGET_S = 0.05          # stop repeating once this much time went into one node
_MAX_MEASURE_BYTES = 1 << 30   # made-up inputs/outputs above this are estimated, not allocated
_UNKNOWN_BYTES = 4096     # a value whose shape is unknown is costed as this many bytes


def cache_dir(options: Any = None) -> Path:
    """Where measurements are kept (see the module docstring for the order of the overrides)."""
    config = getattr(options, "config", None) or {}
    if config.get(CACHE_CONFIG_KEY):
        return Path(config[CACHE_CONFIG_KEY])
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "placement"
    return Path.home() / ".cache" / "ep_core" / "placement"


def machine_id() -> str:
    """Identifies the machine a measurement was taken on (host name, CPU, core count)."""
    text = "|".join([platform.node(), platform.machine(), platform.processor(), str(os.cpu_count())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CostCache:
    """Seconds per key, one JSON file per machine; written atomically, merged with what another
    process wrote meanwhile."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / f"costs-{machine_id()}.json"
        self._values: dict[str, float] | None = None
        self._dirty: dict[str, float] = {}

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return {}
        return {k: float(v) for k, v in data.get("seconds", {}).items()}

    def get(self, key: str) -> float | None:
        if self._values is None:
            self._values = self._load()
        return self._values.get(key)

    def put(self, key: str, seconds: float) -> None:
        if self._values is None:
            self._values = self._load()
        self._values[key] = float(seconds)
        self._dirty[key] = float(seconds)

    def save(self) -> None:
        """Write new entries; an unwritable cache directory only costs the next session time."""
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = self._load()
            merged.update(self._dirty)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"format": _FORMAT, "seconds": merged}, f, sort_keys=True)
            os.replace(tmp, self.path)
            self._dirty = {}
        except OSError:
            pass


def _digest(value: Any) -> str:
    """A stable text for attribute values and small constants (graphs: their structure)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype}{value.shape}:{hashlib.sha256(value.tobytes()).hexdigest()[:16]}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_digest(v) for v in value) + "]"
    if isinstance(value, Graph):
        return "graph:" + ",".join(f"{n.op_type}" for n in value.nodes)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}={_digest(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def _shape_of(tp) -> list[int] | None:
    """Concrete dims of a value (symbolic or unknown dims taken as 1); None if the rank is unknown."""
    shape = tensor_shape(tp)
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else 1 for d in shape]


def value_bytes(tp) -> int:
    shape, dtype = _shape_of(tp), tensor_dtype(tp)
    if shape is None or dtype is None:
        return _UNKNOWN_BYTES
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def node_key(node: Node, provider: ExecutionProvider, constants: dict[str, np.ndarray],
             threads: int) -> str:
    """The cache key of one node on one provider (op, domain, version, attributes, input shapes,
    dtypes and constant inputs, provider type, device, threads)."""
    parts = [node.domain, node.op_type, str(node.since_version), _digest(node.attrs)]
    for name, tp in zip(node.inputs, node.input_types):
        if not name:
            parts.append("-")
        elif name in constants and constants[name].size <= 64:
            parts.append("const " + _digest(constants[name]))
        else:
            parts.append(f"{tensor_dtype(tp)}{_shape_of(tp)}{' const' if name in constants else ''}")
    parts += [provider.type, str(provider.device), f"threads={threads}"]
    return "node:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def estimate_seconds(node: Node) -> float:
    """A rough cost from bytes moved and FLOPs, the same on every provider."""
    moved = sum(value_bytes(t) for n, t in zip(node.inputs, node.input_types) if n) + \
        sum(value_bytes(t) for n, t in zip(node.outputs, node.output_types) if n)
    flops = 0.0
    if node.op_type in ("MatMul", "Gemm", "FusedMatMul") and len(node.input_types) >= 2:
        a, b = _shape_of(node.input_types[0]), _shape_of(node.input_types[1])
        if a and b:
            flops = 2.0 * float(np.prod(a, dtype=np.float64)) * b[-1]
    elif node.op_type == "Conv" and len(node.input_types) >= 2 and node.output_types:
        w, y = _shape_of(node.input_types[1]), _shape_of(node.output_types[0])
        if w and y:
            flops = 2.0 * float(np.prod(y, dtype=np.float64)) * float(np.prod(w[1:], dtype=np.float64))
    return 2e-6 + moved / 10e9 + flops / 50e9


class Unmeasurable(Exception):
    """This node's kernel cannot be run alone on made-up inputs."""


class Measurer:
    """Node and copy costs for one session build, through the on-disk cache. Counts what it did:
    `measured` kernels run now, `cached` ones found on disk, `estimated` ones costed by formula."""

    def __init__(self, graph: Graph, options: Any, providers: list[ExecutionProvider],
                 cache: CostCache | None = None):
        self.graph, self.options, self.providers = graph, options, providers
        self.cache = cache if cache is not None else CostCache(cache_dir(options))
        self.threads = int(getattr(options, "intra_op_num_threads", 0) or 0)
        self.max_bytes = int(getattr(options, "max_tensor_bytes", 0) or 0)
        constant_names = graph.constant_initializers()
        self.constants = {n: v for n, v in graph.initializers.items()
                          if n in constant_names and isinstance(v, np.ndarray)}
        self.measured = self.cached = self.estimated = 0
        self.copies_measured = 0
        self._copy_models: dict[tuple, tuple[float, float]] = {}
        self._rng = np.random.default_rng(0)

    # --- nodes ---------------------------------------------------------------------------------
    def node_seconds(self, node: Node, provider: ExecutionProvider, kdef: KernelDef | None
                     ) -> tuple[float, str]:
        """(seconds, "measured" | "cached" | "estimated") of `node` run by `provider`."""
        if kdef is None or node.subgraphs:
            self.estimated += 1
            return estimate_seconds(node), "estimated"
        key = node_key(node, provider, self.constants, self.threads)
        found = self.cache.get(key)
        if found is not None:
            self.cached += 1
            return (found, "cached") if found >= 0 else (estimate_seconds(node), "estimated")
        try:
            seconds = self._measure(node, provider, kdef)
        except Exception:   # made-up data a kernel refuses, an op needing real values: estimate
            self.cache.put(key, -1.0)   # remembered as unmeasurable: the next session skips it
            self.estimated += 1
            return estimate_seconds(node), "estimated"
        self.cache.put(key, seconds)
        self.measured += 1
        return seconds, "measured"

    def _input_value(self, name: str, tp) -> np.ndarray:
        if name in self.constants:
            return self.constants[name]
        shape, dtype = _shape_of(tp), tensor_dtype(tp)
        if shape is None or dtype is None or dtype.kind not in "fiub":
            raise Unmeasurable(name)
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > _MAX_MEASURE_BYTES:
            raise Unmeasurable(name)
        if dtype.kind == "f":
            return self._rng.standard_normal(shape).astype(dtype)
        return np.zeros(shape, dtype)   # valid indices/counts for index inputs of any size

    def _measure(self, node: Node, provider: ExecutionProvider, kdef: KernelDef) -> float:
        host = [self._input_value(n, t) if n else None for n, t in zip(node.inputs, node.input_types)]
        ctx = KernelContext(provider, self.options,
                            constant_inputs={k: self.constants[n] for k, n in enumerate(node.inputs)
                                             if n in self.constants},
                            intra_op_threads=self.threads,
                            max_tensor_bytes=min(self.max_bytes or _MAX_MEASURE_BYTES, _MAX_MEASURE_BYTES))
        kernel = kdef.factory(node, ctx)
        values = []
        for k, v in enumerate(host):
            if v is not None and not provider.device.is_host and k not in kdef.host_inputs:
                v = self._transfer(HOST, provider.device).copy(v, provider.device)
            values.append(v)
        times: list[float] = []
        with provider.limit_threads(self.threads), np.errstate(all="ignore"):
            provider.on_run_start(None)
            try:
                kernel.compute(*values)   # warm-up (first-call compilation, caches)
                provider.sync()
                spent = 0.0
                while len(times) < _REPEATS and spent < _BUDGET_S:
                    t0 = time.perf_counter()
                    kernel.compute(*values)
                    provider.sync()
                    times.append(time.perf_counter() - t0)
                    spent += times[-1]
            finally:
                provider.on_run_end(None)
        return min(times)

    # --- copies --------------------------------------------------------------------------------
    def _transfer(self, src: Device, dst: Device):
        for p in self.providers:
            t = p.get_data_transfer()
            if t is not None and t.can_copy(src, dst):
                return t
        return None

    def has_direct_copy(self, src: Device, dst: Device) -> bool:
        return self._transfer(src, dst) is not None

    def copy_seconds(self, src: Device, dst: Device, nbytes: int) -> float:
        """One copy of `nbytes` from src to dst (through the host where no transfer copies
        directly); inf where no provider can copy at all."""
        if src == dst:
            return 0.0
        if not src.is_host and not dst.is_host and not self.has_direct_copy(src, dst):
            return self.copy_seconds(src, HOST, nbytes) + self.copy_seconds(HOST, dst, nbytes)
        latency, per_byte = self._copy_model(src, dst)
        return latency + per_byte * nbytes

    def _copy_model(self, src: Device, dst: Device) -> tuple[float, float]:
        """(latency s, s per byte) of src -> dst, measured at 4 KiB and 4 MiB, cached."""
        if (src, dst) in self._copy_models:
            return self._copy_models[(src, dst)]
        transfer = self._transfer(src, dst)
        if transfer is None:
            model = (float("inf"), 0.0)
        else:
            key = f"copy:{type(transfer).__module__}.{type(transfer).__qualname__}:{src}->{dst}"
            lat, per = self.cache.get(key + ":latency"), self.cache.get(key + ":per_byte")
            if lat is None or per is None:
                try:
                    lat, per = self._measure_copy(transfer, src, dst)
                except Exception:   # a transfer that fails on test data: a PCIe-like guess
                    lat, per = 10e-6, 1 / 10e9
                self.cache.put(key + ":latency", lat)
                self.cache.put(key + ":per_byte", per)
                self.copies_measured += 1
            model = (lat, per)
        self._copy_models[(src, dst)] = model
        return model

    def _measure_copy(self, transfer, src: Device, dst: Device) -> tuple[float, float]:
        small, big = 4096, 4 << 20
        timings = []
        for nbytes in (small, big):
            value: Any = np.ones(nbytes // 4, np.float32)
            if not src.is_host:
                value = self._transfer(HOST, src).copy(value, src)
            samples = []
            for _ in range(4):
                t0 = time.perf_counter()
                out = transfer.copy(value, dst)
                for p in self.providers:
                    p.sync()
                samples.append(time.perf_counter() - t0)
                del out
            timings.append(min(samples[1:]))
        per_byte = max(0.0, (timings[1] - timings[0]) / (big - small))
        return max(0.0, timings[0] - per_byte * small), per_byte
