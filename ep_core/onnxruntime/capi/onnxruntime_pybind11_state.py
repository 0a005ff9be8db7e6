"""onnxruntime.capi.onnxruntime_pybind11_state: exception classes, enums and module functions.

onnxruntime's C-level classes (C.InferenceSession, C.OrtValue, C.SessionIOBinding) take other
arguments than the Python-level ones; they are not provided (docs/compatibility.md).
"""
from .._errors import *  # noqa: F401,F403
from .. import (ExecutionMode, ExecutionOrder, GraphOptimizationLevel, ModelMetadata,  # noqa: F401
                NodeArg, OrtAllocatorType, OrtDevice, OrtMemType, RunOptions, SessionOptions,
                disable_telemetry_events, enable_telemetry_events, get_all_providers,
                get_available_providers, get_build_info, get_device, get_version_string,
                has_collective_ops, register_execution_provider_library,
                set_default_logger_callback, set_default_logger_severity,
                set_default_logger_verbosity, set_seed, unregister_execution_provider_library)


def get_default_session_options() -> SessionOptions:
    return SessionOptions()
