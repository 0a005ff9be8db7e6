"""onnxruntime.capi.onnxruntime_inference_collection: the Python-level classes."""
from .. import InferenceSession, IOBinding, OrtDevice, OrtValue  # noqa: F401
from .._providers import ORT_PROVIDER_NAMES  # noqa: F401

Session = InferenceSession
