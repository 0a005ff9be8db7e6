"""CPU execution provider (numpy)."""
from .provider import CPUExecutionProvider

__all__ = ["CPUExecutionProvider"]
