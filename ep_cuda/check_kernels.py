"""Compile every CUDA kernel instantiation the registry can launch, through raw NVRTC (no GPU).

    python -m ep_cuda.check_kernels [--arch compute_80 ...] [--no-sass] [--cupy] [-v] [FILE ...]

Imports all launch wrappers (which declare their `(file, name_expression)` pairs) and compiles
each `kernels_cu/<file>.cu` with all of its name expressions and the runtime's NVRTC options:

* to PTX for the lowest supported architecture (compute_75), every file;
* to PTX for compute_90 as well, for the files with architecture-specific code
  (`__CUDA_ARCH__` guards: the cp.async / tensor-core paths of gemm.cu and conv.cu);
* to SASS (CUBIN, i.e. through ptxas) for sm_75 and sm_90, one instantiation per (kernel,
  element type) of those files: NVRTC alone passes inline PTX through unchecked, ptxas does not
  (plus the SASS_EXTRA instantiations: each int8 mma.sync type pair for sm_80 and sm_90, and
  all of quant.cu for sm_75 and sm_90).

With `--cupy`, every file is compiled the way the provider compiles it at run time, through
CuPy's `RawModule` path (its option assembly with the CUDA header lookup, then NVRTC to SASS), for
sm_75 and sm_90 (or the `--arch sm_XX` given): this is what fails on a machine whose install lacks
the CUDA runtime headers (ep_cuda.probe.cupy_compile).

Prints one line per kernel and a summary, exits non-zero if anything fails. When a chunk fails as
a whole, each expression is compiled alone so the failing ones are named. Large files are split
into chunks compiled in parallel (`-j`).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import kernels_cu

from . import loader

CHUNK = 12   # expressions per NVRTC program when a file is split across jobs
# Instantiations that also go through ptxas, beyond one per (kernel, element type): the integer
# GEMM's mma.sync PTX differs per operand type pair, so each pair is checked for sm_80 and sm_90.
# quant.cu (no arch-specific code, cheap) goes through ptxas whole, for sm_75 and sm_90.
SASS_EXTRA = {"quant_gemm": ((80, 90), re.compile(r"^qgemm_tc_k<.*, QImma>$")),
              "quant": ((75, 90), re.compile(r"."))}


def _nvrtc():
    from cupy_backends.cuda.libs import nvrtc
    return nvrtc


def supported() -> tuple[int, ...]:
    return tuple(_nvrtc().getSupportedArchs())


def default_arch() -> str:
    """The lowest architecture this NVRTC supports that has everything we use (sm_75+)."""
    archs = [a for a in supported() if a >= 75]
    return f"compute_{min(archs) if archs else 75}"


def arch_specific(file: str) -> bool:
    return "__CUDA_ARCH__" in kernels_cu.source(file)


def compile_file(file: str, exprs: list[str], arch: str) -> tuple[dict[str, str | None], str]:
    """Compile one file with `exprs` for `arch` (compute_XX: PTX; sm_XX: CUBIN through ptxas;
    cupy:sm_XX: through CuPy's RawModule compile path); returns ({expr: lowered name or None}, log)."""
    if arch.startswith("cupy:"):
        from .probe import cupy_compile
        try:
            return cupy_compile(kernels_cu.source(file), exprs, int(arch[len("cupy:sm_"):])), ""
        except Exception as err:  # CompileException / missing headers: the message says why
            return {e: None for e in exprs}, f"{type(err).__name__}: {err}"
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
        if arch.startswith("sm_"):
            nvrtc.getCUBIN(prog)
        else:
            nvrtc.getPTX(prog)
        return lowered, nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)


def sass_subset(exprs: list[str]) -> list[str]:
    """One expression per (kernel template, first template argument)."""
    seen, out = set(), []
    for e in exprs:
        m = re.match(r"\s*([\w:]+)\s*<\s*([^,>]+)", e)
        key = (m.group(1), m.group(2).strip()) if m else (e, "")
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def plan(files: list[str], manifest: dict[str, list[str]], archs: list[str] | None,
         sass: bool, cupy: bool = False) -> list[tuple[str, str, list[str]]]:
    """(file, arch, expressions) compile jobs."""
    have = supported()
    if cupy:
        targets = [f"cupy:{a}" for a in (archs or ["sm_75", "sm_90"])]
        return [(f, t, manifest.get(f, [])[k:k + CHUNK]) for f in files for t in targets
                for k in range(0, max(len(manifest.get(f, [])), 1), CHUNK)]
    base = default_arch()
    jobs = []
    for f in files:
        exprs = manifest.get(f, [])
        targets = list(archs) if archs else [base]
        if not archs and arch_specific(f) and 90 in have:
            targets.append("compute_90")
        for a in targets:
            if len(exprs) > CHUNK:
                jobs += [(f, a, exprs[k:k + CHUNK]) for k in range(0, len(exprs), CHUNK)]
            else:
                jobs.append((f, a, exprs))
        if sass and not archs and arch_specific(f) and exprs:
            for sm in (75, 90):
                if sm in have:
                    jobs.append((f, f"sm_{sm}", sass_subset(exprs)))
        if sass and not archs and f in SASS_EXTRA:
            sms, pattern = SASS_EXTRA[f]
            extra = [e for e in exprs if pattern.search(e)]
            jobs += [(f, f"sm_{sm}", extra[k:k + CHUNK]) for sm in sms if sm in have
                     for k in range(0, len(extra), CHUNK)]
    return jobs


def check(files: list[str] | None = None, arch: str | list[str] | None = None,
          verbose: bool = False, jobs: int = 2, out=sys.stdout, sass: bool = True,
          cupy: bool = False) -> int:
    """Compile and report; returns the number of failed kernels (plus files that failed)."""
    archs = [arch] if isinstance(arch, str) else (list(arch) if arch else None)
    manifest = loader.manifest()
    names = files or sorted(set(manifest) | set(kernels_cu.categories()))
    t0 = time.time()
    if cupy and archs and any(not a.startswith("sm_") for a in archs):
        raise ValueError("--cupy compiles to SASS like CuPy: give --arch sm_XX")
    work = plan(names, manifest, archs, sass, cupy)

    def one(job):
        file, a, exprs = job
        t = time.time()
        lowered, log = compile_file(file, exprs, a)
        logs: dict[str, str] = {}
        if any(v is None for v in lowered.values()) or (not exprs and "error" in log):
            # attribute the failure: compile every expression alone
            single = {e: compile_file(file, [e], a) for e in exprs}
            lowered = {e: r[0][e] for e, r in single.items()}
            logs = {e: r[1] for e, r in single.items()}
        return file, a, exprs, lowered, log, logs, time.time() - t

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, work))
    failures = total = 0
    per_file: dict[tuple[str, str], list[float]] = {}
    for file, a, exprs, lowered, log, logs, dt in results:
        per_file.setdefault((file, a), []).append(dt)
        if not exprs:
            ok = "error" not in log
            print(f"{'ok  ' if ok else 'FAIL'} {file}.cu [{a}]: no instantiations declared", file=out)
            failures += 0 if ok else 1
            if not ok:
                print(log, file=out)
            continue
        for e in exprs:
            total += 1
            name = lowered.get(e)
            if name is None:
                failures += 1
                print(f"FAIL {file}.cu [{a}]  {e}", file=out)
                print("     " + (logs.get(e) or log).strip().replace("\n", "\n     "), file=out)
            elif verbose:
                print(f"ok   {file}.cu [{a}]  {e}  -> {name}", file=out)
        if log.strip() and verbose:
            print(f"     [{file}.cu {a} log] {log.strip()}", file=out)
    for (file, a), dts in sorted(per_file.items()):
        n = sum(len(r[2]) for r in results if r[0] == file and r[1] == a)
        print(f"     {file}.cu [{a}]: {n} kernels, {sum(dts):.1f}s of compile time", file=out)
    used = sorted({r[1] for r in results})
    print(f"check_kernels: {total} kernel compilations ({len(names)} files; targets "
          f"{', '.join(used)}): {total - failures} ok, {failures} failed "
          f"({time.time() - t0:.1f}s)", file=out)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ep_cuda.check_kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="kernel files (without .cu); default: all")
    ap.add_argument("--arch", action="append", default=None,
                    help="NVRTC target (compute_80: PTX, sm_80: SASS); repeatable; "
                         "default: compute_75 + compute_90 and sm_75/sm_90 SASS where needed")
    ap.add_argument("--no-sass", action="store_true", help="skip the ptxas (CUBIN) checks")
    ap.add_argument("--cupy", action="store_true",
                    help="compile through CuPy's RawModule path (header lookup included), to SASS")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="compile jobs in parallel")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every kernel, lowered names, logs")
    args = ap.parse_args(argv)
    return 1 if check(args.files or None, args.arch, args.verbose, args.jobs,
                      sass=not args.no_sass, cupy=args.cupy) else 0


if __name__ == "__main__":
    sys.exit(main())
