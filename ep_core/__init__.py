"""ep_core: an ONNX runtime with pluggable execution providers (onnxruntime-compatible API)."""
from . import errors
from .options import ExecutionMode, GraphOptimizationLevel, RunOptions, SessionOptions
from .providers import (get_all_providers, get_available_providers, get_registered_ops,
                        register_provider, register_provider_library)
from .custom_ops import register_custom_op
from .optimizer import register_transformer
from .session import InferenceSession, ModelMetadata, NodeArg
from .tune import tune


def install_as_onnxruntime():
    """Make `import onnxruntime` (and `onnxruntime.capi...`) give `ep_core.onnxruntime`, so
    unchanged onnxruntime code runs on ep_core; returns that module. `ep_core.shim.uninstall()`
    undoes it."""
    from .shim import install
    return install()


__all__ = ["InferenceSession", "SessionOptions", "RunOptions", "GraphOptimizationLevel",
           "ExecutionMode", "NodeArg", "ModelMetadata", "errors", "register_provider",
           "get_all_providers", "get_available_providers", "get_registered_ops",
           "register_provider_library", "register_custom_op", "register_transformer",
           "install_as_onnxruntime", "tune"]
