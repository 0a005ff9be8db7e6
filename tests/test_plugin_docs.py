"""Every code block of docs/writing-a-provider.md is exercised.

- ```c blocks: concatenated in order into tiny_relu.c (the doc says they are one file) and built
  by the doc's own ```bash block with -Wall -Wextra -Werror added;
- ```bash blocks: `mkdir`/`cc` lines run as written in a scratch directory that mirrors the
  repository root; `pip install ... -e <dir>` runs with `--target <scratch site>` instead of `-e`
  so the environment is left untouched (the installed package is put on the doc's PYTHONPATH);
- ```toml blocks: parsed, and must match the example package's pyproject.toml;
- ```python blocks: concatenated in order and run as one script from the scratch directory.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-provider.md"


def blocks(lang: str) -> list[str]:
    text = DOC.read_text()
    return [m.group(2) for m in re.finditer(r"^```(\w+)\n(.*?)^```$", text, re.S | re.M)
            if m.group(1) == lang]


def test_doc_has_every_kind_of_block():
    text = DOC.read_text()
    langs = re.findall(r"^```(\w*)$", text, re.M)
    opening = langs[0::2]
    assert set(opening) <= {"python", "c", "bash", "toml"}, opening  # nothing goes unchecked
    assert {"python", "c", "bash", "toml"} <= set(opening)


def test_toml_block_matches_example():
    example = tomllib.loads((ROOT / "examples" / "python_provider" / "pyproject.toml").read_text())
    for block in blocks("toml"):
        doc = tomllib.loads(block)
        assert doc["project"]["entry-points"]["ep_core.providers"] == \
            example["project"]["entry-points"]["ep_core.providers"]


def _run_bash_line(line: str, cwd: Path, site: Path) -> None:
    argv = shlex.split(line)
    if argv[:1] == ["cc"]:
        argv = argv[:1] + ["-Wall", "-Wextra", "-Werror"] + argv[1:]
    elif "pip" in argv and "install" in argv:
        k = argv.index("-e")
        argv = [sys.executable if a == "python" else a for a in argv[:k]] + \
            ["--target", str(site), argv[k + 1]] + argv[k + 2:]
        done = subprocess.run(argv + ["--no-build-isolation"], cwd=cwd, capture_output=True, text=True)
        if done.returncode == 0:
            return
    elif argv[:1] != ["mkdir"]:
        pytest.fail(f"the doc test does not know how to check this command: {line}")
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
def test_doc_blocks_run(tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("ep_core", "ep_cpu"):  # the paths the doc's commands use
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "examples", work / "examples",  # pip builds in-tree: use a copy
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    (work / "tiny_relu.c").write_text("\n".join(blocks("c")))
    site = tmp_path / "site"
    for block in blocks("bash"):
        for line in block.strip().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                _run_bash_line(line.strip(), work, site)
    assert (work / "build" / "libtiny_relu.so").exists()
    script = work / "doc_script.py"
    script.write_text("\n\n".join(blocks("python")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    done = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, f"doc script failed:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "tiny_fused_0" in out and "MemcpyToHost" in out
    assert "provider plugin 'future' was built for ep_core plugin ABI 2.0" in out
    assert "plugin 'nothing'" in out
