"""Runs the hostile-model cases in child processes with memory and time limits.

    python tests/hostile_runner.py worker ours|ort [--long]    # the child (reads case names)

`run_cases(runner)` starts `workers` children; each reads case names on stdin and answers one
JSON line per case. A child that stops answering within `timeout` seconds is killed (the case is
a "hang"); one that dies is a "crash" (signal or exit code in the detail). Either way a fresh
child takes the remaining cases. Children run with RLIMIT_AS (their size at start + 4 GiB) and
single-threaded BLAS, so several cases can run side by side.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEMORY_HEADROOM = 4 << 30


def run_cases(runner: str = "ours", long: bool = False, workers: int = 2, timeout: float = 60.0,
              names: list[str] | None = None) -> dict[str, dict]:
    """{case name: {"category", "expect", "outcome", "detail", "seconds"}} for every case."""
    sys.path.insert(0, str(HERE))
    import hostile_cases
    cases = {c.name: c for c in hostile_cases.cases(long)}
    todo = [n for n in (names or list(cases))]
    results: dict[str, dict] = {}
    lock = threading.Lock()
    shares = [todo[k::workers] for k in range(workers)]

    def drive(share: list[str]) -> None:
        got = _drive(share, runner, long, timeout)
        with lock:
            results.update(got)

    threads = [threading.Thread(target=drive, args=(s,)) for s in shares if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in results.items():
        r["category"], r["expect"] = cases[name].category, cases[name].expect
    return results


class _Child:
    def __init__(self, runner: str, long: bool) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.log = tempfile.TemporaryFile()
        args = [sys.executable, str(HERE / "hostile_runner.py"), "worker", runner] + (["--long"] if long else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=str(HERE.parent), start_new_session=True)
        self.buffer = b""
        self.answered = 0

    def ask(self, name: str, timeout: float) -> dict | None:
        """The child's answer for `name`, or None when it hung (killed) or died."""
        try:
            self.proc.stdin.write(name.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                return {"outcome": "hang", "detail": f"no answer within {timeout:.0f} s"}
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.proc.wait()
                    why = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit code {code}"
                    return {"outcome": "crash", "detail": f"child died: {why}; {self.tail()}"}
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.answered += 1
        return json.loads(line)

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-400:].decode(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.kill()
        self.log.close()


def _drive(names: list[str], runner: str, long: bool, timeout: float) -> dict[str, dict]:
    out: dict[str, dict] = {}
    child = None
    for name in names:
        if child is None:
            child = _Child(runner, long)
        start = time.monotonic()
        # the first answer of a fresh child includes its imports: allow for them
        answer = child.ask(name, timeout if child.answered else timeout + 60)
        if answer is None:
            answer = {"outcome": "crash", "detail": f"child gone; {child.tail()}"}
        answer["seconds"] = round(time.monotonic() - start, 3)
        out[name] = answer
        if answer["outcome"] in ("hang", "crash"):
            child.close()
            child = None
    if child is not None:
        child.close()
    return out


# --- the child ------------------------------------------------------------------------------------------

def _worker(runner: str, long: bool) -> None:
    import resource
    import shutil
    import traceback

    import hostile_base
    import hostile_cases
    import onnx.reference  # noqa: F401 - imported before the memory limit
    import onnxruntime  # noqa: F401
    if runner == "ours":
        import ep_core  # noqa: F401
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                          # anything printed goes to the log, not the protocol
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, size + MEMORY_HEADROOM))
    cases = {c.name: c for c in hostile_cases.cases(long)}
    tmp = Path(tempfile.mkdtemp(prefix="ep_hostile_"))
    try:
        for line in sys.stdin:
            name = line.strip()
            case = cases[name]
            folder = tmp / name
            folder.mkdir()
            try:
                inp = case.build(folder)
            except Exception:
                answer = {"outcome": "build_error", "detail": traceback.format_exc()[-600:]}
            else:
                outcome, detail = hostile_base.classify(case, inp, runner)
                answer = {"outcome": outcome, "detail": detail}
            protocol.write(json.dumps(answer) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str(HERE.parent))
        _worker(sys.argv[2], "--long" in sys.argv)
