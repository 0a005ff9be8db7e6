"""Shared by the `com.microsoft` contrib-op kernels (contrib_*.py)."""
from __future__ import annotations

from typing import Any

from ep_core.errors import InvalidGraph
from ep_core.kernel import Kernel

MS = "com.microsoft"   # onnxruntime's contrib-op domain


def required(k: Kernel, name: str) -> Any:
    """A required attribute's value (onnx has no schema for contrib ops to enforce it)."""
    value = k.node.attrs.get(name)
    if value is None:
        raise InvalidGraph(f"{k.node.describe()}: required attribute '{name}' is missing")
    return value
