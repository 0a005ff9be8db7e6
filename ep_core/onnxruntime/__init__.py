"""onnxruntime's Python module over ep_core: the same names, provider spellings
('CUDAExecutionProvider'), return types, exception classes and `capi` submodules.

    import ep_core.onnxruntime as ort          # or: ep_core.install_as_onnxruntime(); import onnxruntime
    sess = ort.InferenceSession("model.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])

What differs from onnxruntime, and which of its names are absent and why: docs/compatibility.md.
"""
from __future__ import annotations as _annotations

import logging as _logging
from typing import Any as _Any, Callable as _Callable, Sequence as _Sequence

from .. import providers as _registry
from ..iobinding import IOBinding
from ..options import ExecutionMode, GraphOptimizationLevel
from ..ortvalue import OrtValue
from ..session import ModelMetadata, NodeArg
from . import _providers
from ._devices import OrtAllocatorType, OrtDevice, OrtMemType
from ._errors import InvalidArgument as _InvalidArgument
from ._session import ExecutionOrder, InferenceSession, RunOptions, SessionOptions

# The onnxruntime API version this module mirrors (its surface is compared against onnxruntime 1.32
# in tests; the lower number keeps applications that gate on newer features on their safe path).
__version__ = version = "1.20.0"
package_name = "ep-runtime"
cuda_version = ""
import_capi_exception = None

_state: dict[str, _Any] = {"severity": 2, "verbosity": 0, "seed": None, "telemetry": False}


def get_device() -> str:
    """'GPU' when the CUDA provider can run here, else 'CPU' (onnxruntime's spelling)."""
    return "GPU" if "cuda" in _registry.get_available_providers() else "CPU"


def get_available_providers() -> list[str]:
    return _providers.available_providers()


def get_all_providers() -> list[str]:
    return _providers.all_providers()


def get_version_string() -> str:
    return __version__


def get_build_info() -> str:
    try:
        from importlib.metadata import version as dist_version
        ours = dist_version("ep-runtime")
    except Exception:  # noqa: BLE001 - running from a source tree
        ours = "source"
    return f"ep_core {ours} (onnxruntime {__version__} API), providers: {get_available_providers()}"


def set_default_logger_severity(severity: int) -> None:
    """0 verbose, 1 info, 2 warning, 3 error, 4 fatal: the level of the 'ep_core' logger."""
    from ..profiling import configure_logging
    if int(severity) not in range(5):
        raise _InvalidArgument(f"logger severity must be 0..4, got {severity}")
    _state["severity"] = int(severity)
    configure_logging(_state["severity"], _state["verbosity"])


def set_default_logger_verbosity(verbosity: int) -> None:
    """Verbose logging (severity 0) with verbosity > 0 logs everything ep_core logs."""
    from ..profiling import configure_logging
    _state["verbosity"] = int(verbosity)
    configure_logging(_state["severity"], _state["verbosity"])


def set_default_logger_callback(callback: _Callable[[int, str, str, str, str], None]) -> None:
    """Route ep_core's log records to `callback(severity, category, logid, code_location, message)`."""
    logger = _logging.getLogger("ep_core")
    for h in [h for h in logger.handlers if isinstance(h, _CallbackHandler)]:
        logger.removeHandler(h)
    if callback is not None:
        logger.addHandler(_CallbackHandler(callback))


class _CallbackHandler(_logging.Handler):
    _SEVERITY = {_logging.DEBUG: 0, _logging.INFO: 1, _logging.WARNING: 2, _logging.ERROR: 3, _logging.CRITICAL: 4}

    def __init__(self, callback: _Callable) -> None:
        super().__init__()
        self.callback = callback

    def emit(self, record: _logging.LogRecord) -> None:
        self.callback(self._SEVERITY.get(record.levelno, 0), record.name, "",
                      f"{record.pathname}:{record.lineno}", record.getMessage())


def disable_telemetry_events() -> None:
    """ep_core sends no telemetry: nothing to disable."""
    _state["telemetry"] = False


def enable_telemetry_events() -> None:
    """ep_core sends no telemetry: enabling it records the wish and sends nothing."""
    _state["telemetry"] = True


def set_seed(seed: int) -> None:
    """Recorded, and numpy's global generator is seeded; ep_core's random operators take their
    `seed` attribute, or OS entropy without one (docs/compatibility.md)."""
    import numpy as np
    _state["seed"] = int(seed)
    np.random.seed(int(seed) % 2**32)


def has_collective_ops() -> bool:
    return False


def preload_dlls(cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory: _Any = None) -> None:
    """onnxruntime loads CUDA/cuDNN DLLs here; ep_core's CUDA provider loads CuPy when used."""


def print_debug_info() -> None:
    print(get_build_info())


def register_execution_provider_library(registration_name: str, library_path: str) -> None:
    """Load a provider plugin built against ep_core's C plugin ABI (ep_core/include/ep_plugin.h);
    a library built for onnxruntime's plugin EP API is refused with IncompatiblePlugin."""
    _registry.register_provider_library(registration_name, library_path)


def unregister_execution_provider_library(registration_name: str) -> None:
    _registry.unregister_provider(registration_name)


def copy_tensors(src: _Sequence[OrtValue], dst: _Sequence[OrtValue], stream: _Any = None) -> None:
    """Copy each source value into the matching destination's buffer (across devices too)."""
    if len(src) != len(dst):
        raise _InvalidArgument(f"copy_tensors: {len(src)} sources for {len(dst)} destinations")
    for s, d in zip(src, dst):
        d.update_inplace(s)


from . import capi  # noqa: E402 - after the names capi's modules re-export
