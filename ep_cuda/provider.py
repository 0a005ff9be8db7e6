"""The CUDA execution provider: device arena, pinned staging buffers, data transfer, one stream.

Values on the device are `cupy.ndarray`. CuPy is imported lazily: `availability()` and
`kernel_registry()` work on machines without CuPy or without a GPU.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.kernel import KernelRegistry
from ep_core.provider import (HOST, Allocator, ComputeCapability, DataTransfer, Device,
                              ExecutionProvider, GraphView)

from .launch import Settings, using
from .registry import registry

log = logging.getLogger("ep_cuda")

_STRATEGIES = {"knextpoweroftwo": "kNextPowerOfTwo", "0": "kNextPowerOfTwo",
               "ksameasrequested": "kSameAsRequested", "1": "kSameAsRequested"}
SHRINK_KEY = "memory.enable_memory_arena_shrinkage"
_METADATA_OPS = ("Shape", "Size")


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _as_int(name: str, v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise InvalidArgument(f"CUDA provider option '{name}' must be an integer, got {v!r}") from None


class CudaAllocator(Allocator):
    """Device memory from a private `cupy.cuda.MemoryPool` (the arena).

    `gpu_mem_limit` caps the bytes the pool may hold (0: no cap). `kNextPowerOfTwo` rounds every
    request up to a power of two so freed blocks are reused across nearby sizes (faster, up to 2x
    memory); `kSameAsRequested` asks the pool for the exact size. `release_unused()` returns all
    cached free blocks to the driver (arena shrink).
    """

    def __init__(self, device: Device, limit: int = 0, strategy: str = "kNextPowerOfTwo") -> None:
        import cupy

        self.device = device
        self.limit = int(limit)
        self.strategy = strategy
        self.pool = cupy.cuda.MemoryPool()
        if self.limit > 0:
            with cupy.cuda.Device(device.index):
                self.pool.set_limit(size=self.limit)

    def round(self, nbytes: int) -> int:
        if self.strategy == "kNextPowerOfTwo" and nbytes > 1:
            return 1 << (int(nbytes) - 1).bit_length()
        return int(nbytes)

    recording: list | None = None   # set while a CUDA graph is captured: its blocks stay reserved

    def malloc(self, nbytes: int):
        """The function handed to `cupy.cuda.using_allocator` inside the provider's scope."""
        mem = self.pool.malloc(self.round(nbytes))
        if self.recording is not None:
            self.recording.append(mem)
        return mem

    def empty(self, shape, dtype) -> Any:
        import cupy

        with cupy.cuda.Device(self.device.index), cupy.cuda.using_allocator(self.malloc):
            return cupy.empty(shape, dtype)

    # cupy.cuda.MemoryPool keeps one pool per device and these act on the *current* device's
    def _on_device(self):
        import cupy
        return cupy.cuda.Device(self.device.index)

    def release_unused(self) -> None:
        with self._on_device():
            self.pool.free_all_blocks()

    def used_bytes(self) -> int:
        with self._on_device():
            return int(self.pool.used_bytes())

    def total_bytes(self) -> int:
        with self._on_device():
            return int(self.pool.total_bytes())


class PinnedAllocator(Allocator):
    """Page-locked host buffers (staging for asynchronous host<->device copies)."""
    device = HOST

    def __init__(self) -> None:
        import cupy

        self.pool = cupy.cuda.PinnedMemoryPool()

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        mem = self.pool.malloc(max(count * dtype.itemsize, 1))
        return np.ndarray(tuple(shape), dtype, buffer=mem)  # as cupyx.empty_pinned does

    def release_unused(self) -> None:
        self.pool.free_all_blocks()


class CudaDataTransfer(DataTransfer):
    """numpy <-> cupy copies through pinned staging buffers, on the provider's stream
    (or on a separate copy stream ordered by events when do_copy_in_default_stream=0)."""

    def __init__(self, provider: "CUDAExecutionProvider") -> None:
        self.provider = provider

    def can_copy(self, src: Device, dst: Device) -> bool:
        kinds = {src.kind, dst.kind}
        return kinds <= {"cpu", "cuda"} and "cuda" in kinds

    def copy(self, value: Any, dst: Device, stream: Any = None) -> Any:
        p = self.provider
        if dst.is_host:
            return p.to_host(value, stream)
        return p.to_device(value, stream)


class CUDAExecutionProvider(ExecutionProvider):
    """Runs nodes with the project's CUDA kernels. Options (onnxruntime names where they exist):
    device_id, gpu_mem_limit, arena_extend_strategy, do_copy_in_default_stream, use_tf32,
    prefer_nhwc, enable_cuda_graph, tunable_op_enable, tunable_op_tuning_enable,
    tunable_op_max_tuning_duration_ms; and enable_fusion (ours). See docs/cuda.md."""
    type = "cuda"

    def __init__(self, device_id: Any = 0, gpu_mem_limit: Any = 0,
                 arena_extend_strategy: Any = "kNextPowerOfTwo",
                 do_copy_in_default_stream: Any = True, use_tf32: Any = False, **options: Any) -> None:
        super().__init__(device_id=device_id, gpu_mem_limit=gpu_mem_limit,
                         arena_extend_strategy=arena_extend_strategy,
                         do_copy_in_default_stream=do_copy_in_default_stream, use_tf32=use_tf32,
                         **options)
        ok, reason = self.availability()
        if not ok:
            raise RuntimeError(f"CUDA execution provider is not available: {reason}")
        self._parse_options()
        self._init_device()

    def _parse_options(self) -> None:
        """Everything option-related that needs no GPU (shared with the emulated provider)."""
        o = self.options
        self.device_id = _as_int("device_id", o.get("device_id", 0))
        self.device = Device("cuda", self.device_id)
        limit = _as_int("gpu_mem_limit", o.get("gpu_mem_limit", 0))
        if limit >= 2**63 - 1:  # onnxruntime's default (SIZE_MAX) means no limit
            limit = 0
        self.mem_limit = limit
        strategy = _STRATEGIES.get(str(o.get("arena_extend_strategy", "kNextPowerOfTwo")).strip().lower())
        if strategy is None:
            raise InvalidArgument(f"CUDA provider option arena_extend_strategy="
                                  f"{o.get('arena_extend_strategy')!r}: expected kNextPowerOfTwo or "
                                  f"kSameAsRequested")
        self.arena_strategy = strategy
        self.copy_in_default_stream = _as_bool(o.get("do_copy_in_default_stream", True))
        # TF32 tensor cores for float32 GEMM/Conv (sm_80+); fp32 accumulation either way. Off by
        # default (onnxruntime: on): results then match the CPU provider to fp32 rounding.
        self.use_tf32 = _as_bool(o.get("use_tf32", False))
        self.prefer_nhwc = _as_bool(o.get("prefer_nhwc", False))
        self.cuda_graph = _as_bool(o.get("enable_cuda_graph", False))
        self.fusion = _as_bool(o.get("enable_fusion", True))
        tuner = None
        if _as_bool(o.get("tunable_op_enable", False)) or _as_bool(o.get("tunable_op_tuning_enable", False)):
            from .autotune import Tuner
            tuner = Tuner(tuning=_as_bool(o.get("tunable_op_tuning_enable", False)),
                          max_ms=float(o.get("tunable_op_max_tuning_duration_ms", 0) or 0))
        self.tuner = tuner
        self.settings = Settings(use_tf32=self.use_tf32, prefer_nhwc=self.prefer_nhwc, tuner=tuner)
        self.shrink_arena_on_run_end = False

    def _init_device(self) -> None:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= self.device_id < count:
            raise InvalidArgument(f"CUDA provider option device_id={self.device_id}: this machine "
                                  f"has {count} CUDA device(s)")
        self._cp_device = cupy.cuda.Device(self.device_id)
        with self._cp_device:
            self.allocator = CudaAllocator(self.device, self.mem_limit, self.arena_strategy)
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.copy_stream = (self.stream if self.copy_in_default_stream
                                else cupy.cuda.Stream(non_blocking=True))
        self.pinned = PinnedAllocator()
        self._transfer = CudaDataTransfer(self)
        self._staging: list[Any] = []    # pinned buffers of host->device copies still in flight
        self._staging_lock = threading.Lock()

    # ---- availability and kernels (no GPU needed) --------------------------------------------
    @classmethod
    def availability(cls) -> tuple[bool, str]:
        return _probe()

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        from . import kernels  # noqa: F401 - importing registers the kernels (no CuPy import)
        return registry

    def get_capability(self, graph_view: GraphView, kernel_lookup) -> list[ComputeCapability]:
        """Nodes with a kernel whose attributes that kernel supports (others go to the CPU),
        grouped into fused nodes (compile API) where ep_cuda.fusion finds groups.

        No side effects: everything `compile` needs (the planned group: its nodes, inputs,
        outputs, dtypes, the constants it bakes, sub-groups of a CUDA-graph region) travels in
        the MetaDef's attributes under GROUP_ATTR, which become the fused node's attrs."""
        claimed = []
        for n in graph_view.nodes:
            kdef = kernel_lookup(n)
            if kdef is None:
                continue
            check = getattr(kdef.factory, "supports", None)
            if check is None or check(n):
                claimed.append(n)
        # Shape/Size only read metadata: take them only when their input is produced on this
        # device, so a host tensor is never copied to the GPU just to have its shape read.
        ours = {o for n in claimed if n.op_type not in _METADATA_OPS for o in n.outputs if o}
        claimed = [n for n in claimed if n.op_type not in _METADATA_OPS or (n.inputs and n.inputs[0] in ours)]
        graph = graph_view.graph
        if not (getattr(self, "fusion", False) or getattr(self, "cuda_graph", False)) or len(claimed) < 2:
            return [ComputeCapability([n]) for n in claimed]
        try:
            groups = self._plan_groups(graph, claimed, kernel_lookup)
        except Exception as e:  # noqa: BLE001 - fusion is an optimization: never fail a session
            log.warning("CUDA fusion planning failed (%s: %s); running nodes one by one",
                        type(e).__name__, e)
            return [ComputeCapability([n]) for n in claimed]
        from ep_core.fusion import group_capabilities
        return group_capabilities(groups, claimed, GROUP_ATTR, _group_name)

    def _plan_groups(self, graph, claimed, kernel_lookup) -> list:
        from .fusion import (Analysis, capturable, host_reads_from_outside, plan_elementwise_groups,
                             plan_gemm_groups, plan_regions, prepare_for_compile)
        an = Analysis(graph)
        if self.cuda_graph:
            ok, blocked = [], []
            for n in claimed:
                why = capturable(an, n, kernel_lookup(n))
                (blocked.append((n, why)) if why else ok.append(n))
            while True:   # a node may only read on the host what its region computes or a constant
                regions = plan_regions(an, ok)
                moved = [m for g in regions for m in host_reads_from_outside(an, g, kernel_lookup)]
                if not moved:
                    break
                gone = {id(n) for n, _ in moved}
                ok = [n for n in ok if id(n) not in gone]
                blocked += moved
            regions = [g for g in regions if len(g.nodes) >= 2 or not blocked]
            if blocked or len(regions) > 1:
                detail = "; ".join(f"{n.describe()}: {why}" for n, why in blocked[:5])
                warnings.warn(f"enable_cuda_graph: the run is split into {len(regions)} captured "
                              f"region(s) and {len(claimed) - sum(len(g.nodes) for g in regions)} "
                              f"node(s) outside any graph" + (f" ({detail})" if detail else ""),
                              RuntimeWarning, stacklevel=4)
            groups = regions
        else:
            taken: set[int] = set()
            groups = plan_gemm_groups(an, claimed, taken)
            groups += plan_elementwise_groups(an, claimed, taken)
        for g in groups:
            prepare_for_compile(an, g, fuse=self.fusion)
        return groups

    def compile(self, fused_node, subgraph):
        """The compute callable of a fused node created from one of our MetaDefs: built from
        the group its attributes carry (nothing is looked up in the provider)."""
        from .compiled import GraphRegion, fused_callable
        g = fused_node.attrs.get(GROUP_ATTR)
        if g is None:
            raise InvalidArgument(f"CUDA provider: fused node '{fused_node.name}' carries no "
                                  f"'{GROUP_ATTR}' attribute (not one of our capabilities)")
        if g.kind == "region":
            return GraphRegion(self, g)
        return fused_callable(self, g)

    # ---- memory, transfers, streams ------------------------------------------------------------
    def get_allocator(self, mem_type: str = "default") -> Allocator:
        if mem_type in ("default", "device", "cuda"):
            return self.allocator
        if mem_type in ("pinned", "cpu", "cpu_input", "cpu_output", "host"):
            return self.pinned
        raise InvalidArgument(f"CUDA provider has no allocator for memory type '{mem_type}'")

    def get_data_transfer(self) -> DataTransfer:
        return self._transfer

    def device_of(self, value: Any) -> Device:
        if not _is_cuda_value(value):
            return HOST
        dev = getattr(value, "device", None)
        index = getattr(dev, "id", None)
        if index is None:
            index = getattr(dev, "index", None)   # torch.device
        return Device("cuda", int(index if index is not None else self.device_id))

    @contextlib.contextmanager
    def scope(self):
        """Device, compute stream and arena for everything a kernel does."""
        import cupy

        with self._cp_device, self.stream, cupy.cuda.using_allocator(self.allocator.malloc), \
                using(self.settings):
            yield

    def to_device(self, value: Any, stream: Any = None) -> Any:
        """Host value -> cupy array on this device (asynchronous, pinned staging). A device value
        the caller hands us (CuPy array, DLPack or __cuda_array_interface__ object, e.g. a PyTorch
        tensor) is used in place, ordered after the caller's pending work on it."""
        import cupy

        caller = cupy.cuda.get_current_stream()   # where the caller issued its own work
        with self.scope():
            if _is_cuda_value(value):
                return self._adopt(value, caller)
            arr = np.asarray(value)
            if arr.dtype == object or arr.dtype.kind in "USV":
                raise TypeError(f"cannot copy a {arr.dtype} tensor to a CUDA device")
            out = cupy.empty(arr.shape, arr.dtype)
            if arr.size == 0:
                return out
            buf = self.pinned.empty(arr.shape, arr.dtype)
            np.copyto(buf, arr)
            copy_stream = stream or self.copy_stream
            if copy_stream is not self.stream:
                # `out` may reuse a block the compute stream freed while work on it is pending
                copy_stream.wait_event(self.stream.record())
            out.set(buf, stream=copy_stream)
            if copy_stream is not self.stream:
                self.stream.wait_event(copy_stream.record())
            with self._staging_lock:
                self._staging.append(buf)  # keep the pinned buffer alive until the next sync
            return out

    def _adopt(self, value: Any, caller: Any) -> Any:
        """A user's device value as a CuPy array on our device, our stream ordered after it."""
        import cupy

        if isinstance(value, cupy.ndarray):
            arr = value
        elif hasattr(value, "__dlpack__"):
            arr = cupy.from_dlpack(value)   # our stream is current: the producer orders with it
        else:
            arr = cupy.asarray(value)       # __cuda_array_interface__ (CuPy syncs its stream)
        # our stream is non-blocking: without this wait it may read the value while a copy the
        # caller issued (on the legacy default stream or its own) is still in flight
        if caller is not None and caller.ptr != self.stream.ptr:
            self.stream.wait_event(caller.record())
        if arr.device.id != self.device_id:
            arr = cupy.array(arr, copy=True)   # peer copy onto our device, on our stream
        return arr

    def to_host(self, value: Any, stream: Any = None) -> np.ndarray:
        """cupy array -> numpy array (synchronizes the copy)."""
        import cupy

        if not isinstance(value, cupy.ndarray):
            return np.asarray(value)
        from .launch import contiguous

        with self.scope():
            src = contiguous(value)   # our copy kernel, on the compute stream
            if src.size == 0:
                return np.empty(src.shape, src.dtype)
            buf = self.pinned.empty(src.shape, src.dtype)
            copy_stream = stream or self.copy_stream
            if copy_stream is not self.stream:
                copy_stream.wait_event(self.stream.record())
            src.get(stream=copy_stream, out=buf)
            copy_stream.synchronize()
            return np.array(buf, copy=True)  # pageable copy: pinned buffers go back to the pool

    def sync(self) -> None:
        # Only buffers staged before the synchronize are known to be done: another thread's run
        # may stage more meanwhile, and its copy is still in flight.
        with self._staging_lock:
            done = len(self._staging)
        self.stream.synchronize()
        if self.copy_stream is not self.stream:
            self.copy_stream.synchronize()
        with self._staging_lock:
            del self._staging[:done]

    def on_run_start(self, run_options: Any = None) -> None:
        pass

    def on_run_end(self, run_options: Any = None) -> None:
        """Synchronize; shrink the arena when asked (run config entry
        'memory.enable_memory_arena_shrinkage' naming 'gpu:<device_id>', as in onnxruntime)."""
        self.sync()
        if self.shrink_arena_on_run_end or _shrink_requested(run_options, self.device_id):
            self.allocator.release_unused()
            self.pinned.release_unused()


_DLPACK_CUDA = (2, 13)   # kDLCUDA, kDLCUDAManaged


def _is_cuda_value(value: Any) -> bool:
    """Whether `value` is CUDA device memory (CuPy, PyTorch, Numba... arrays), not host memory."""
    if isinstance(value, (np.ndarray, np.generic)):
        return False
    if hasattr(value, "__cuda_array_interface__"):
        return True
    dev = getattr(value, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA
    except Exception:  # noqa: BLE001 - not a usable DLPack producer: treat as host data
        return False


GROUP_ATTR = "ep_cuda.group"   # MetaDef attribute: the planned ep_cuda.fusion.Group compile builds


def _group_name(g, k: int) -> str:
    """Name of the k-th group of one get_capability call (unique within the graph)."""
    prefix = {"gemm": "CudaFusedGemm", "elementwise": "CudaFused", "region": "CudaGraph"}[g.kind]
    ops = "_".join(g.ops()[:4]) + ("_etc" if len(g.nodes) > 4 else "")
    return f"{prefix}{k}_{ops}" if g.kind != "region" else f"{prefix}{k}_{len(g.nodes)}nodes"


def _shrink_requested(run_options: Any, device_id: int) -> bool:
    if run_options is None:
        return False
    try:
        value = run_options.get_run_config_entry(SHRINK_KEY)
    except (KeyError, AttributeError):
        return False
    return f"gpu:{device_id}" in [s.strip() for s in str(value).split(";")]


@lru_cache(maxsize=1)
def _probe() -> tuple[bool, str]:
    """Whether CuPy, the CUDA headers, a driver and a GPU are usable, and a trivial kernel
    compiles and runs (ep_cuda.probe; every failure is a reason). Once per process."""
    from .probe import probe
    return probe()
