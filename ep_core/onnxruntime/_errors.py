"""onnxruntime's exception classes over ep_core's errors.

Where onnxruntime and ep_core have the same error (InvalidArgument, Fail, ...), the name here IS
ep_core's class, so `except onnxruntime...InvalidArgument` and `except ep_core.errors.InvalidArgument`
catch the same errors. onnxruntime's other status codes are subclasses of ep_core's nearest error.
onnxruntime's RUNTIME_EXCEPTION (a kernel failing at run time) is ep_core's Fail.
"""
from ..errors import (EPError, Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile,
                       NotImplemented)

RuntimeException = Fail


class EPFail(Fail):
    """An execution provider failed as a whole (onnxruntime retries such a run on the CPU)."""


class EngineError(Fail):
    """onnxruntime's ENGINE_ERROR."""


class NoModel(InvalidArgument):
    """onnxruntime's NO_MODEL: a session was used before a model was loaded."""


class ModelLoaded(InvalidArgument):
    """onnxruntime's MODEL_LOADED: a model was loaded twice into one session."""


class NotFound(InvalidArgument):
    """onnxruntime's NOT_FOUND."""


class ModelLoadCanceled(EPError):
    """Loading was canceled with SessionOptions.set_load_cancellation_flag(True)."""


class ModelRequiresCompilation(NotImplemented):
    """onnxruntime's MODEL_REQUIRES_COMPILATION (EPContext models); ep_core compiles no EPContext."""


class DeviceReset(Fail):
    """onnxruntime's DEVICE_RESET."""


__all__ = ["EPError", "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
           "NotImplemented", "RuntimeException", "EPFail", "EngineError", "NoModel", "ModelLoaded",
           "NotFound", "ModelLoadCanceled", "ModelRequiresCompilation", "DeviceReset"]
