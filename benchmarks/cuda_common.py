"""Shared plumbing of the GPU benchmarks (gemm_cuda, conv_cuda, gpu_vs_cpu): GPU detection,
CUDA-event timing, and writing `<name>_<date>_<gpu>.{json,md,png}` into the output folders."""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
TODAY = datetime.date.today().isoformat()


def require_gpu(what: str) -> None:
    """Exit with a clear message (and nothing written) when no usable GPU is present: status 0,
    or 1 under EP_REQUIRE_GPU=1 (a GPU run must not look green without having run)."""
    from ep_cuda import CUDAExecutionProvider
    from ep_cuda.testing import gpu_required
    ok, why = CUDAExecutionProvider.availability()
    if not ok:
        print(f"{what}: no usable CUDA GPU ({why}); nothing measured, nothing written.")
        sys.exit(1 if gpu_required() else 0)


def gpu_info() -> dict:
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    dev = cupy.cuda.Device(0)
    info = {"gpu": name, "compute_capability": dev.compute_capability,
            "multiprocessors": int(props.get("multiProcessorCount", 0)),
            "memory_gib": round(int(props.get("totalGlobalMem", 0)) / 2**30, 1),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "cupy": cupy.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "date": TODAY}
    try:
        import torch
        info["torch"] = torch.__version__
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001 - torch is optional
        info["torch"] = "not installed"
    return info


def gpu_tag(info: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")[:40] or "gpu"


def cuda_time(fn: Callable[[], Any], reps: int = 20, warmup: int = 3, budget_s: float = 2.0
              ) -> float:
    """Median milliseconds of fn() on the current stream (CUDA events around each call)."""
    import cupy
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    t_end = time.perf_counter() + budget_s
    for k in range(reps):
        s, e = cupy.cuda.Event(), cupy.cuda.Event()
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(cupy.cuda.get_elapsed_time(s, e))
        if k >= 2 and time.perf_counter() > t_end:
            break
    return float(np.median(times))


def wall_time(fn: Callable[[], Any], reps: int = 10, warmup: int = 1, budget_s: float = 5.0
              ) -> float:
    """Median wall milliseconds of fn() (for whole session runs, which synchronize)."""
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + budget_s
    for k in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
        if k >= 0 and time.perf_counter() > t_end:
            break
    return float(np.median(times))


def out_dirs(args_out: list[str] | None) -> list[Path]:
    dirs = [Path(d) for d in (args_out or [str(RESULTS)])]
    if os.environ.get("OUT") and not args_out:
        dirs.append(Path(os.environ["OUT"]))
    return dirs


def write(name: str, info: dict, data: dict, markdown: str, plot: Callable[[Any], None] | None,
          dirs: list[Path]) -> list[Path]:
    """<name>_<date>_<gpu>.json/.md/.png into every folder; returns the paths."""
    stem = f"{name}_{TODAY}_{gpu_tag(info)}"
    written = []
    png_ok = False
    fig = None
    if plot is not None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig = plt.figure(figsize=(9, 5))
            plot(fig)
            fig.tight_layout()
            png_ok = True
        except Exception as e:  # noqa: BLE001 - the numbers matter more than the picture
            markdown += f"\n(no plot: {type(e).__name__}: {e})\n"
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{stem}.json"
        p.write_text(json.dumps({"machine": info, **data}, indent=1, default=str))
        written.append(p)
        p = d / f"{stem}.md"
        p.write_text(markdown)
        written.append(p)
        if png_ok:
            p = d / f"{stem}.png"
            fig.savefig(p, dpi=110)
            written.append(p)
    for p in written:
        print(f"wrote {p}")
    return written


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def machine_header(title: str, info: dict) -> str:
    return (f"# {title}\n\nGPU: **{info['gpu']}** (sm_{info['compute_capability']}, "
            f"{info['multiprocessors']} SMs, {info['memory_gib']} GiB), CUDA runtime "
            f"{info['cuda_runtime']}, driver {info['cuda_driver']}, CuPy {info['cupy']}, "
            f"PyTorch {info.get('torch')}. Date: {info['date']}.\n\n")
