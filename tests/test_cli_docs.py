"""The commands and the Python block of docs/cli.md run as written, on a small stand-in for the
MobileNetV2 file the doc builds (every `models/mobilenetv2.onnx` becomes that model)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "cli.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)


def _stand_in(path: Path) -> None:
    """A small CNN with MobileNetV2's input/output names and shapes (1x3x224x224 -> 1x1000)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((8, 1000)) * 0.1).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "stand_in", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "models").mkdir()
    _stand_in(tmp_path / "models" / "mobilenetv2.onnx")
    return tmp_path


def test_documented_commands_run(workdir):
    pytest.importorskip("matplotlib")
    commands = [line for block in _blocks("bash") for line in block.splitlines()
                if line.startswith(("python -m ep_core ", "python -c "))]
    assert len(commands) >= 6
    for line in commands:
        args = shlex.split(line)
        if "--runs" in args:   # the doc's flags, fewer runs
            args[args.index("--runs") + 1] = "3"
        proc = subprocess.run([sys.executable, *args[1:]], cwd=workdir, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                "EP_CORE_TUNE_CACHE": str(workdir / "tune-cache")})
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    for produced in ("bench.png", "profile.png", "trace.json", "tuned.json", "tune.png", "image.npy"):
        assert (workdir / produced).exists(), produced


def test_documented_python_block_runs(workdir, monkeypatch):
    (block,) = [b for b in _blocks("python") if "ep_core.tune(" in b]
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("EP_CORE_TUNE_CACHE", str(workdir / "tune-cache"))
    namespace: dict = {}
    exec(compile(block.replace("runs=20", "runs=2"), "docs/cli.md", "exec"), namespace)
    assert (workdir / "tuned.json").exists()
    assert namespace["session"].run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})[0].shape == (1, 1000)
