"""Provider names as onnxruntime spells them ('CUDAExecutionProvider') over ep_core's short ones."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

from .. import providers as registry
from ..errors import InvalidArgument

# Every provider name onnxruntime knows in some build: asking for one we do not have is a warning
# and the session goes on without it, as in an onnxruntime build that lacks it.
ORT_PROVIDER_NAMES = (
    "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider", "CUDAExecutionProvider",
    "MIGraphXExecutionProvider", "ROCMExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "VitisAIExecutionProvider", "QNNExecutionProvider",
    "NnapiExecutionProvider", "VSINPUExecutionProvider", "JsExecutionProvider",
    "CoreMLExecutionProvider", "ArmNNExecutionProvider", "ACLExecutionProvider",
    "DmlExecutionProvider", "RknpuExecutionProvider", "WebNNExecutionProvider",
    "WebGpuExecutionProvider", "XnnpackExecutionProvider", "CANNExecutionProvider",
    "AzureExecutionProvider", "CPUExecutionProvider",
)


def ort_name(native: str) -> str:
    """'cuda' -> 'CUDAExecutionProvider'; a plugin's name -> its '...ExecutionProvider' alias, if any."""
    aliases = [a for a, n in getattr(registry, "_aliases", {}).items() if n == native]
    spelled = [a for a in aliases if a.endswith("ExecutionProvider")]
    return spelled[0] if spelled else native


def native_name(name: str) -> str | None:
    """The registered ep_core provider an onnxruntime (or native) name means; None if none is."""
    try:
        return registry.canonical_name(name)
    except InvalidArgument:
        return None


def normalize(providers: Sequence | None, provider_options: Sequence[dict] | None
              ) -> list[tuple[str, dict]] | None:
    """onnxruntime's (providers, provider_options) -> ep_core's [(name, options)], keeping only
    providers that can run here (the others warn, as onnxruntime does)."""
    if providers is None or len(providers) == 0:
        if provider_options:
            raise ValueError("'provider_options' given without 'providers'")
        return None
    if isinstance(providers, (str, bytes)) or not isinstance(providers, Sequence):
        raise ValueError("'providers' should be a sequence.")
    if provider_options is not None:
        if len(provider_options) != len(providers):
            raise ValueError("'providers' and 'provider_options' should be the same length if both are given.")
        if not all(isinstance(p, str) for p in providers):
            raise ValueError("Only string values for 'providers' are supported if 'provider_options' is given.")
        pairs = list(zip(providers, provider_options))
    else:
        pairs = []
        for p in providers:
            if isinstance(p, str):
                pairs.append((p, {}))
            elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict):
                pairs.append(p)
            else:
                raise ValueError("'providers' values must be either strings or (string, dict) tuples.")
    available = set(registry.get_available_providers())
    out: list[tuple[str, dict]] = []
    for name, options in pairs:
        native = native_name(name)
        if native is None or native not in available:
            shown = ", ".join(ort_name(n) for n in registry.get_available_providers())
            warnings.warn(f"Specified provider '{name}' is not in available provider names."
                          f"Available providers: '{shown}'", UserWarning, stacklevel=4)
            continue
        if any(n == native for n, _ in out):
            warnings.warn(f"Duplicate provider '{name}' encountered, ignoring.", UserWarning, stacklevel=4)
            continue
        out.append((native, dict(options or {})))
    return out or [("cpu", {})]


def available_providers() -> list[str]:
    return [ort_name(n) for n in registry.get_available_providers()]


def all_providers() -> list[str]:
    return [ort_name(n) for n in registry.get_all_providers()]


def provider_options_map(options: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {ort_name(k): {str(a): str(b) for a, b in v.items()} for k, v in options.items()}
