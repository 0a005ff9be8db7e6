"""Which declared kernel instantiations no emulator test launches.

    python -m ep_cuda.kernel_coverage [--list] [pytest args ...]

Runs the CUDA tests that launch kernels on the CPU emulator (`pytest -m "not cuda"` over
tests/test_cuda_*.py but those in NOT_LAUNCHING, or the pytest arguments given) in a subprocess with EP_CUDA_EMU_LAUNCH_LOG set, so every first launch of
a `(file, name expression)` is logged, then compares the log with the manifest every wrapper
declares (ep_cuda.loader). Prints the instantiations never launched, per file, and exits non-zero
if there is any: each must get a test, or be removed from its `loader.declare`. The BF16 GEMM
instantiations (compiled and checked, unreachable from ONNX) are the one listed exception.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import loader

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = ["-m", "not cuda", "-q", "-p", "no:cacheprovider", "-x"]
# declared on purpose without an ONNX path to them (see ep_cuda/kernels/gemm.py BF16_ONLY)
NOT_REACHABLE = {("gemm", "gemm_tc_k<bf16_t, TcBig, true, true>")}


# CUDA test modules that launch kernels (the others check builds, scripts or provider logic)
NOT_LAUNCHING = ("test_cuda_build.py", "test_cuda_gpu_required.py", "test_cuda_provider_logic.py",
                 "test_cuda_kernel_coverage.py", "test_cuda_node_cases.py")


def test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cuda_*.py")
                  if p.name not in NOT_LAUNCHING)


def launched_by(pytest_args: list[str]) -> tuple[set[tuple[str, str]], int, str]:
    """(logged launches, pytest exit status, pytest output tail) of one pytest run."""
    from .emulator import LAUNCH_LOG_ENV
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "launches.tsv"
        log.touch()
        env = {**os.environ, LAUNCH_LOG_ENV: str(log), "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        seen = {tuple(line.split("\t", 1)) for line in log.read_text().splitlines() if "\t" in line}
    return seen, r.returncode, (r.stdout + r.stderr)[-3000:]


def unlaunched(seen: set[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for file, exprs in sorted(loader.manifest().items()):
        for e in exprs:
            if (file, e) not in seen and (file, e) not in NOT_REACHABLE:
                out.setdefault(file, []).append(e)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ep_cuda.kernel_coverage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pytest_args", nargs="*", help="default: the CUDA test files, -m 'not cuda'")
    args = ap.parse_args(argv)
    seen, status, tail = launched_by(args.pytest_args or [*test_files(), *DEFAULT_ARGS])
    if status != 0:
        print(f"the emulator tests failed (pytest exit {status}):\n{tail}")
        return 2
    missing = unlaunched(seen)
    total = sum(len(v) for v in loader.manifest().values())
    for file, exprs in missing.items():
        for e in exprs:
            print(f"UNLAUNCHED {file}.cu  {e}")
    n = sum(len(v) for v in missing.values())
    print(f"kernel_coverage: {total - n - len(NOT_REACHABLE)} of {total} declared instantiations launched "
          f"by emulator tests, {n} never launched, {len(NOT_REACHABLE)} unreachable by design")
    return 1 if n else 0


if __name__ == "__main__":
    sys.exit(main())
