"""Machine description shared by the benchmarks (CPU model, cores, library versions)."""
from __future__ import annotations

import os
import platform
import re
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info
        libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            i = libs[0]
            return f"{i.get('internal_api')} {i.get('version')} {i.get('architecture') or ''}".strip()
    except Exception:
        pass
    return "unknown BLAS"


def _has_flag(flag: str) -> bool | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return None


# Idle gap before each timed block: OpenBLAS's workers spin ~0.1 s after a threaded call (measured
# as process CPU time during a sleep), and a variant timed inside that window runs its own threads
# on a core the spinning worker holds (a 2-thread 1024^3 GEMM: 11.7 ms instead of 6.0).
SETTLE_S = 0.3


def machine_tag() -> str:
    """Short file-name tag, e.g. 'amd-epyc-2c'."""
    name = re.sub(r"\(.*?\)|cpu|processor|\d+-core", "", cpu_model().lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    name = "-".join(name.split("-")[:3]) or platform.machine()
    return f"{name}-{cores()}c"


def machine_info(threads: int | None = None) -> dict:
    info = {"cpu": cpu_model(), "cores": cores(), "threads": threads or cores(),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas_name(),
            "platform": platform.platform()}
    # OPENBLAS_CORETYPE=Haswell (set on the shared benchmark machine) holds OpenBLAS to its AVX2
    # kernels on an AVX-512 CPU: ResNet-50's GEMMs then run ~1.4x slower than with the detected
    # SkylakeX kernels (onnxruntime's MLAS picks AVX-512 itself). Recorded with every result.
    info["openblas_coretype_env"] = os.environ.get("OPENBLAS_CORETYPE")
    info["openblas_l2_size_env"] = os.environ.get("OPENBLAS_L2_SIZE")
    info["cpu_avx512"] = _has_flag("avx512f")
    info["effective_cores"] = effective_cores()
    try:
        import onnxruntime
        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = "not installed"
    return info


def effective_cores(workers: int | None = None, seconds: float = 0.15) -> float:
    """How many cores' worth of CPU this process gets now: the same compute-bound job alone and
    then on `workers` threads at once (each releases the GIL), as (workers x alone) / together.
    On a shared VM the vCPUs can be backed by less than that many host cores: this machine's 2
    vCPUs measured 0.98-1.64 on 2026-12-03, so 2-thread figures there are host contention as much
    as our threads. Recorded with every result."""
    import threading
    workers = workers or cores()
    if workers < 2:
        return 1.0
    try:
        import numba
    except ImportError:
        return float("nan")

    @numba.njit(nogil=True)
    def burn(n):   # pragma: no cover - compiled
        acc = 0.0
        for i in range(n):
            acc += np.sqrt(i * 1.0)
        return acc

    burn(10)
    n = 1_000_000
    t0 = time.perf_counter()
    burn(n)
    n = max(n, int(n * seconds / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        burn(n)
        alone = time.perf_counter() - t0
        threads = [threading.Thread(target=burn, args=(n,)) for _ in range(workers)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        best = max(best, workers * alone / (time.perf_counter() - t0))
    return round(best, 2)


def wait_for_idle(max_load: float | None, timeout_s: float = 600.0) -> float | None:
    """Block until the 1-minute load average is below `max_load` (or the timeout passes).

    Benchmarks on a shared 2-core machine are meaningless while other work holds a core; this
    lets a run start each measurement on an idle machine. Returns the load seen at the start.
    """
    if not max_load:
        return None
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            return None
        if load < max_load or time.monotonic() > deadline:
            return load
        time.sleep(5)
