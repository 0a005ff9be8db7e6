"""An example third-party execution provider for ep_core, installed as its own package.

ep_core finds it through the `ep_core.providers` entry point declared in this package's
pyproject.toml; use it with `InferenceSession(model, providers=["example_python", "cpu"])`.
"""
from .memory import DEVICE, DeviceBuffer, ExampleTransfer
from .provider import ExamplePythonProvider

__all__ = ["ExamplePythonProvider", "DeviceBuffer", "ExampleTransfer", "DEVICE"]
