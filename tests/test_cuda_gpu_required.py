"""Issue 13 bug 4: without a usable GPU, a GPU run must fail, not report green. EP_REQUIRE_GPU=1
(set by benchmarks/gpu_verify.sh) turns the GPU tests' skips into failures, and the GPU scripts
exit non-zero with the reason. These tests run where no GPU is usable (CI)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ep_cuda import CUDAExecutionProvider

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(CUDAExecutionProvider.availability()[0],
                                reason="a usable GPU is present: nothing to refuse")


def _run(cmd, **env):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_gpu_tests_fail_instead_of_skipping():
    test = "tests/test_cuda_session.py::test_unsupported_dtype_falls_back_to_cpu"
    skipped = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", "gpu"])
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", "gpu"],
             EP_REQUIRE_GPU="1")
    assert r.returncode != 0 and ("1 failed" in r.stdout or "1 error" in r.stdout), r.stdout[-2000:]
    assert "EP_REQUIRE_GPU=1 but the CUDA provider is unavailable" in r.stdout


def test_run_gpu_all_exits_nonzero_with_the_reason():
    r = _run(["bash", "benchmarks/run_gpu_all.sh"])
    assert r.returncode != 0, (r.stdout + r.stderr)[-2000:]
    assert "not available" in r.stdout + r.stderr


def test_benchmarks_exit_nonzero_when_gpu_required():
    code = "from benchmarks.cuda_common import require_gpu; require_gpu('x')"
    assert _run([sys.executable, "-c", code]).returncode == 0
    r = _run([sys.executable, "-c", code], EP_REQUIRE_GPU="1")
    assert r.returncode == 1 and "no usable CUDA GPU" in r.stdout


def test_gpu_verify_fails_with_the_reason(tmp_path):
    import json
    r = _run(["bash", "benchmarks/gpu_verify.sh"], OUT=str(tmp_path))
    assert r.returncode == 1, (r.stdout + r.stderr)[-3000:]
    assert "gpu_verify: FAIL: CUDA provider NOT available" in r.stdout
    summary = json.loads((tmp_path / "gpu_verify.json").read_text())
    assert summary["ok"] is False and summary["env"]["reason"]
    assert (tmp_path / "gpu_verify.md").exists() and (tmp_path / "details.tar.gz").exists()
    assert len(list(tmp_path.iterdir())) <= 8   # what the device tool brings back


@pytest.mark.parametrize("args", [["benchmarks/cuda_verify.py", "--help"],
                                  ["-m", "ep_cuda.conformance", "--help"],
                                  ["-m", "ep_cuda.kernel_coverage", "--help"],
                                  ["-m", "ep_cuda.check_kernels", "--help"]])
def test_gpu_verify_steps_are_importable_and_have_help(args):
    r = _run([sys.executable, *args])
    assert r.returncode == 0 and "usage" in r.stdout, r.stderr[-2000:]
