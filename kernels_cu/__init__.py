"""CUDA C sources of the CUDA execution provider (package data: one `.cu` file per op category).

The loader (`ep_cuda.loader`) reads them with `source(name)`, which inlines `#include "..."` lines
of headers in this directory so that the text handed to NVRTC (and hashed by CuPy's cache) is
self-contained.
"""
from __future__ import annotations

import re
from pathlib import Path

DIR = Path(__file__).resolve().parent
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def source(name: str) -> str:
    """Text of `kernels_cu/<name>.cu` with local `#include "x.cuh"` lines expanded (once each)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        text = (DIR / fname).read_text()

        def repl(m: re.Match) -> str:
            inc = m.group(1)
            if inc in seen:
                return f"// {inc} already included\n"
            seen.add(inc)
            return f"// ---- begin {inc}\n{expand(inc)}\n// ---- end {inc}\n"
        return _INCLUDE.sub(repl, text)

    return expand(f"{name}.cu")


def categories() -> list[str]:
    """Every kernel file, by name without `.cu`."""
    return sorted(p.stem for p in DIR.glob("*.cu"))
