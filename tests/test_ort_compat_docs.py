"""docs/compatibility.md is true: every public name of onnxruntime's module, InferenceSession,
SessionOptions, RunOptions, OrtValue and IOBinding exists in ep_core.onnxruntime or is listed in
the doc's section for that object; names listed but present are stale; the doc's Python blocks run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as real_ort
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import ep_core.onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "compatibility.md"


def model_bytes() -> bytes:
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(np.array([1, -2, 3], np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def surfaces(mod):
    """The objects compared: the module and instances of its classes (instance attributes count)."""
    sess = mod.InferenceSession(model_bytes(), providers=["CPUExecutionProvider"])
    value = mod.OrtValue.ortvalue_from_numpy(np.zeros(2, np.float32))
    return {"module": mod, "InferenceSession": sess, "SessionOptions": mod.SessionOptions(),
            "RunOptions": mod.RunOptions(), "OrtValue": value, "IOBinding": sess.io_binding()}


def listed(section: str) -> set[str]:
    """Names in backticks in the first column of the table under '### <section>'."""
    text = DOC.read_text()
    m = re.search(rf"^### {re.escape(section)}\n(.*?)(?=^#|\Z)", text, re.S | re.M)
    assert m, f"docs/compatibility.md has no '### {section}' section"
    names = set()
    for row in re.findall(r"^\|([^|]*)\|", m.group(1), re.M):
        names.update(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row))
    return names


def public(obj) -> set[str]:
    names = {n for n in dir(obj) if not n.startswith("_")}
    if obj is real_ort:   # subpackages other tests imported (quantization, transformers) are not
        names &= _fresh_module_names()   # what `import onnxruntime` gives a user
    return names


def _fresh_module_names() -> set[str]:
    out = subprocess.run([sys.executable, "-c", "import onnxruntime; print(' '.join(dir(onnxruntime)))"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("section", ["module", "InferenceSession", "SessionOptions", "RunOptions",
                                     "OrtValue", "IOBinding"])
def test_every_onnxruntime_name_is_present_or_documented(section):
    theirs, ours = surfaces(real_ort)[section], surfaces(ort)[section]
    missing = public(theirs) - public(ours)
    documented = listed(section)
    assert missing - documented == set(), f"{section}: undocumented missing names"
    assert documented & public(ours) == set(), f"{section}: documented as missing but present"


def test_doc_python_blocks_run(tmp_path):
    (tmp_path / "model.onnx").write_bytes(model_bytes())
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    assert len(blocks) == 2
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for block in blocks:
        r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "CPUExecutionProvider" in r.stdout or "cpu [2, 3]" in r.stdout


def test_doc_bash_blocks_use_the_shim():
    bash = re.findall(r"^```bash\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    lines = [ln for b in bash for ln in b.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("python -m ep_core.shim ") for ln in lines)
