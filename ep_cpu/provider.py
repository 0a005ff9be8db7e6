"""The CPU execution provider: numpy kernels for every ONNX op."""
from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from typing import Any, Callable, Sequence

import numpy as np

from ep_core.errors import InvalidArgument
from ep_core.graph import Graph, Node
from ep_core.kernel import KernelRegistry
from ep_core.provider import HOST, ComputeCapability, ExecutionProvider, GraphView

from . import blas_threads, host_memory, jit_tier
from .registry import registry


class _ThreadLimits:
    """Process-wide thread settings (our GEMM's tiling threads, the BLAS library's) changed
    while runs with an intra-op limit are active, restored when the last such run ends.

    Every run enters this, so entering costs as little as Python allows: what a thread count
    sets (BLAS's count, whether BLAS is held) is worked out once per count (`_Limit`), the BLAS
    libraries are set through their own get/set entry points (a ctypes call each, see
    `blas_threads.blas_thread_controls`), in one compiled call once it is built, and only where their
    count differs. A streaming model's run (~95 us) spent 7-9 us in this context, ~5 now (in
    the model, where its code is cold; ~2.5 in a loop of its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._saved: tuple[int, list] | None = None   # (gemm threads, [(set, count before)])
        self._by_threads: dict[int, _Limit] = {}
        self._counts: tuple | None = None   # (BLAS entry points, counts saved, scratch counts)

    def limit(self, threads: int) -> "_Limit | nullcontext":
        """The context of a run with `threads` intra-op threads (0 or less: the default)."""
        found = self._by_threads.get(threads)
        if found is not None:
            return found
        gemm, microkernel, native_call = _modules()
        if not threads or threads <= 0:
            if not (native_call.parallel_ok() and microkernel.convs_beat_blas(gemm.get_num_threads())):
                return _NO_LIMIT
            # no intra-op limit, but BLAS still held to one thread: decided per run (the
            # default count follows `gemm.set_num_threads`)
            return _Limit(self, 0, _holds_blas(gemm.get_num_threads()))
        threads = int(threads)
        lim = self._by_threads[threads] = _Limit(self, threads, _holds_blas(threads))
        return lim

    def enter(self, threads: int, hold: bool) -> None:
        """Set the limits for a run starting (`threads` intra-op threads, 0: all; `hold`: BLAS
        runs on the calling thread only, see `_holds_blas`)."""
        gemm = _imported[0]
        blas_count = 1 if hold else threads
        with self._lock:
            entries = blas_threads.blas_entry_points() if _blas_compiled() else None
            if entries is not None:   # one compiled call (~0.25 us hot) for the ctypes calls' ~2
                # the counts before: kept for the last run out where this run is the first in
                # (arrays made once per set of libraries: no allocation a run)
                if self._counts is None or self._counts[0] is not entries:
                    self._counts = (entries, np.empty(entries.size // 2, dtype=np.int64),
                                    np.empty(entries.size // 2, dtype=np.int64))
                before = self._counts[1 if self._active == 0 else 2]
                _imported[2].set_blas_threads(entries, before, blas_count)
                restore = (entries, before)
            else:
                restore = []
                for get, put in blas_threads.blas_thread_controls():
                    n = get()
                    if n != blas_count:
                        restore.append((put, n))
                        put(blas_count)
            if self._active == 0:
                self._saved = (gemm.get_num_threads(), restore)
            self._active += 1
            if threads > 0 and threads != gemm.get_num_threads():
                gemm.set_num_threads(threads)
            if hold:   # counted last: a failure above leaves no hold behind
                gemm.blas_holds += 1

    def exit(self, held: bool) -> None:
        """A run ends: `held` as its `enter` was given; the last run out restores the settings."""
        with self._lock:
            gemm = _imported[0]
            if held:
                gemm.blas_holds -= 1
            self._active -= 1
            if self._active == 0:
                saved = self._saved
                if saved is not None:
                    self._saved = None
                    gemm_threads, restore = saved
                    if gemm_threads != gemm.get_num_threads():
                        gemm.set_num_threads(gemm_threads)
                    if isinstance(restore, tuple):
                        _imported[2].restore_blas_threads(*restore)
                    else:
                        for put, n in restore:
                            put(n)


def _blas_compiled() -> bool:
    """Whether `native_call.set_blas_threads` / `restore_blas_threads` are compiled (or loaded
    from the disk cache): built beside the first run (`jit_tier`), which meanwhile sets BLAS
    through ctypes."""
    if _blas_state:
        return _blas_state[0]
    native_call = _imported[2]
    if native_call.numba is None:
        _blas_state.append(False)
        return False

    def build() -> None:
        from numba import types
        arr = types.Array(types.int64, 1, "C")
        native_call.set_blas_threads.compile((arr, arr, types.int64))
        native_call.restore_blas_threads.compile((arr, arr))
    if jit_tier.ready("blas_threads", build):
        _blas_state.append(True)
        return True
    return False


_blas_state: list = []   # [compiled] once known


def _holds_blas(threads: int) -> bool:
    """Whether a run at `threads` intra-op threads holds BLAS to the calling thread.

    With our spinning workers / numba's TBB threads doing the parallel work (the compiled
    conv/GEMM drivers), the BLAS library runs on the calling thread only: OpenBLAS's workers
    busy-wait ~0.1 s after each threaded call and took the second core from every parallel conv
    after it (ResNet-50 at 2 threads ran no faster than at 1). Where BLAS does the products
    (AVX2 at one thread: `microkernel.convs_beat_blas`) it gets the threads. While BLAS is held
    (`gemm.blas_holds`), a large GEMM runs on `ep_cpu.gemm`'s tiles, one one-thread BLAS call
    each. A one-thread run has BLAS on its one thread anyway: nothing to hold."""
    _, microkernel, native_call = _modules()
    return threads > 1 and native_call.parallel_ok() and microkernel.convs_beat_blas(threads)


_imported: list = []


def _modules() -> tuple:
    """(ep_cpu.gemm, ep_cpu.microkernel, ep_cpu.native_call), imported on the first run (numba
    with them), then kept: an import statement per run cost ~1 us."""
    if not _imported:
        from . import gemm, microkernel, native_call
        _imported[:] = [gemm, microkernel, native_call]
    return _imported[0], _imported[1], _imported[2]


class _Limit:
    """Entered around each run at one thread count; holds no per-run state, so one object
    serves every run at that count, also runs that overlap."""
    __slots__ = ("limits", "threads", "hold")

    def __init__(self, limits: _ThreadLimits, threads: int, hold: bool) -> None:
        self.limits, self.threads, self.hold = limits, threads, hold

    def __enter__(self) -> None:
        self.limits.enter(self.threads, self.hold)

    def __exit__(self, *exc: object) -> None:
        self.limits.exit(self.hold)


_NO_LIMIT = nullcontext()


_limits = _ThreadLimits()
log = logging.getLogger(__name__)
GROUP_ATTR = "ep_cpu.group"   # MetaDef attribute: the planned ep_core.fusion.Group compile builds
FUSION_LEVEL = 2   # fused groups are made from ORT_ENABLE_EXTENDED on, with the level-2 fusions


def _group_name(g, k: int) -> str:
    """Name of the k-th group of one get_capability call (unique within the graph)."""
    return f"CpuFused{k}_" + "_".join(g.ops()[:4]) + ("_etc" if len(g.nodes) > 4 else "")


def _option_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidArgument(f"CPU provider option {name}={value!r}: expected true/false or 1/0")


class CPUExecutionProvider(ExecutionProvider):
    """Provider options: `enable_fusion` (default true): chains of element-wise nodes run as one
    generated kernel each (`ep_cpu.fused`), at graph optimization level 2 and above."""
    type = "cpu"
    device = HOST

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.fusion = _option_bool("enable_fusion", self.options.get("enable_fusion", True))
        # freed numpy blocks stay in the process for the next run (`ep_cpu.host_memory`)
        host_memory.keep_freed_memory()

    @classmethod
    def kernel_registry(cls) -> KernelRegistry:
        from . import kernels  # noqa: F401 - importing registers the kernels
        return registry

    def limit_threads(self, intra_op_threads: int):
        return _limits.limit(intra_op_threads)

    def get_capability(self, graph_view: GraphView,
                       kernel_lookup: Callable[[Node], Any]) -> list[ComputeCapability]:
        """Every node with a kernel; with `enable_fusion`, element-wise chains among them as
        fused nodes (`ep_cpu.fused.plan_groups`). Side-effect free: the planned group travels to
        `compile` in the MetaDef's attributes (GROUP_ATTR)."""
        claimed = [n for n in graph_view.nodes if kernel_lookup(n) is not None]
        if not self.fusion or not claimed:
            return [ComputeCapability([n]) for n in claimed]
        from . import fused
        try:
            groups = fused.plan_groups(graph_view.graph, claimed)
        except Exception as e:  # noqa: BLE001 - fusion is an optimization: never fail a session
            log.warning("CPU fusion planning failed (%s: %s); running nodes one by one",
                        type(e).__name__, e)
            return [ComputeCapability([n]) for n in claimed]
        from ep_core.fusion import group_capabilities
        return group_capabilities(groups, claimed, GROUP_ATTR, _group_name, min_level=FUSION_LEVEL)

    def nchwc_block(self) -> int:
        """Channels a block of the channel-blocked layout this provider's convolution chains run
        in (`ep_core.rewrites_layout`; 16 with AVX-512), 0 where it has no blocked kernels or
        they are not compiled yet (`conv_nchwc.ready`: on an empty disk cache the first session
        stays in NCHW while they compile). Called by the level-3 rewrite at session build."""
        from . import conv_nchwc
        return conv_nchwc.BLOCK if conv_nchwc.available() and conv_nchwc.ready() else 0

    def compile(self, fused_node: Node, subgraph: Graph) -> Callable[..., Sequence[Any]]:
        """The compute callable of a fused node made from one of our MetaDefs: built from the
        group its attributes carry; its kernel compiles on first use (`ep_cpu.jit_tier`)."""
        from .fused import FusedElementwise
        from .gemm import get_num_threads
        g = fused_node.attrs.get(GROUP_ATTR)
        if g is None:
            raise InvalidArgument(f"CPU provider: fused node '{fused_node.name}' carries no "
                                  f"'{GROUP_ATTR}' attribute (not one of our capabilities)")
        return FusedElementwise(g, threads=get_num_threads)
