"""Compile every CUDA kernel instantiation the registry can launch, through raw NVRTC (no GPU).

    python -m ep_cuda.check_kernels [--arch compute_80] [-v] [FILE ...]

Imports all launch wrappers (which declare their `(file, name_expression)` pairs), compiles each
`kernels_cu/<file>.cu` once with all of its name expressions and the runtime's NVRTC options,
prints one line per kernel and a summary, and exits non-zero if anything fails. When a file fails
as a whole, each expression is compiled alone so the failing ones are named.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import kernels_cu

from . import loader


def _nvrtc():
    from cupy_backends.cuda.libs import nvrtc
    return nvrtc


def default_arch() -> str:
    """The lowest architecture this NVRTC supports that has everything we use (sm_75+)."""
    archs = [a for a in _nvrtc().getSupportedArchs() if a >= 75]
    return f"compute_{min(archs) if archs else 75}"


def compile_file(file: str, exprs: list[str], arch: str) -> tuple[dict[str, str | None], str]:
    """Compile one file with `exprs`; returns ({expr: lowered name or None}, log)."""
    nvrtc = _nvrtc()
    src = kernels_cu.source(file)
    prog = nvrtc.createProgram(src, f"{file}.cu", [], [])
    try:
        for e in exprs:
            nvrtc.addNameExpression(prog, e)
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *loader.NVRTC_OPTIONS])
        except Exception as err:  # NVRTCError: the log says why
            return {e: None for e in exprs}, f"{err}\n{nvrtc.getProgramLog(prog)}"
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in exprs}
        nvrtc.getPTX(prog)
        return lowered, nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def check(files: list[str] | None = None, arch: str | None = None, verbose: bool = False,
          jobs: int = 2, out=sys.stdout) -> int:
    """Compile and report; returns the number of failed kernels (plus files that failed)."""
    arch = arch or default_arch()
    manifest = loader.manifest()
    names = files or sorted(set(manifest) | set(kernels_cu.categories()))
    failures = 0
    total = 0
    t0 = time.time()

    def one(file: str):
        exprs = manifest.get(file, [])
        t = time.time()
        lowered, log = compile_file(file, exprs, arch)
        if any(v is None for v in lowered.values()) or (not exprs and "error" in log):
            # attribute the failure: compile every expression alone
            single = {e: compile_file(file, [e], arch) for e in exprs}
            return file, exprs, {e: r[0][e] for e, r in single.items()}, log, \
                {e: r[1] for e, r in single.items()}, time.time() - t
        return file, exprs, lowered, log, {}, time.time() - t

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, names))
    for file, exprs, lowered, log, logs, dt in results:
        if not exprs:
            ok = "error" not in log
            print(f"{'ok  ' if ok else 'FAIL'} {file}.cu: no instantiations declared ({dt:.1f}s)", file=out)
            failures += 0 if ok else 1
            if not ok:
                print(log, file=out)
            continue
        for e in exprs:
            total += 1
            name = lowered.get(e)
            if name is None:
                failures += 1
                print(f"FAIL {file}.cu  {e}", file=out)
                print("     " + (logs.get(e) or log).strip().replace("\n", "\n     "), file=out)
            else:
                print(f"ok   {file}.cu  {e}" + (f"  -> {name}" if verbose else ""), file=out)
        if log.strip() and verbose:
            print(f"     [{file}.cu log] {log.strip()}", file=out)
        print(f"     {file}.cu: {len(exprs)} kernels compiled in {dt:.1f}s", file=out)
    ok = total - sum(1 for r in results for e in r[1] if r[2].get(e) is None)
    print(f"check_kernels: {total} kernels in {len(results)} files for {arch}: {ok} ok, "
          f"{failures} failed ({time.time() - t0:.1f}s)", file=out)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ep_cuda.check_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="kernel files (without .cu); default: all")
    ap.add_argument("--arch", default=None, help="NVRTC virtual architecture, e.g. compute_80")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="files compiled in parallel")
    ap.add_argument("-v", "--verbose", action="store_true", help="print lowered names and logs")
    args = ap.parse_args(argv)
    return 1 if check(args.files or None, args.arch, args.verbose, args.jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
