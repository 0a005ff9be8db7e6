"""Run unchanged onnxruntime code on ep_core.

    python -m ep_core.shim script.py args...      # the script's `import onnxruntime` gets ep_core
    python -m ep_core.shim -m package.module args...

In-process: `ep_core.install_as_onnxruntime()` before the application imports onnxruntime.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import runpy
import sys
from types import ModuleType

_saved: dict[str, ModuleType] | None = None


def install() -> ModuleType:
    """Point `onnxruntime` and its submodules (`onnxruntime.capi._pybind_state`, ...) at
    ep_core.onnxruntime. Submodules of a real onnxruntime imported before are dropped, so nothing
    mixes the two."""
    global _saved
    import ep_core.onnxruntime as compat

    if _saved is None:
        _saved = {k: m for k, m in sys.modules.items() if k == "onnxruntime" or k.startswith("onnxruntime.")}
    for k in [k for k in sys.modules if k == "onnxruntime" or k.startswith("onnxruntime.")]:
        del sys.modules[k]
    sys.modules["onnxruntime"] = compat
    for info in pkgutil.walk_packages(compat.__path__, prefix=compat.__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith("_") and ".capi." not in info.name:
            continue  # private modules of the compat package itself
        sys.modules["onnxruntime" + info.name[len(compat.__name__):]] = importlib.import_module(info.name)
    return compat


def uninstall() -> None:
    """Undo install(): `onnxruntime` is again whatever it was before (the real one, or nothing)."""
    global _saved
    if _saved is None:
        return
    for k in [k for k in sys.modules if k == "onnxruntime" or k.startswith("onnxruntime.")]:
        del sys.modules[k]
    sys.modules.update(_saved)
    _saved = None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print("ep_core.shim: -m needs a module name", file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python script.py` does
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
