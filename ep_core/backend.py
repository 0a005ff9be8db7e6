"""onnx.backend.base.Backend over InferenceSession, so onnx's own BackendTest can drive us."""
from __future__ import annotations

from typing import Any, Sequence

import onnx
from onnx.backend.base import Backend, BackendRep

from .options import SessionOptions
from .session import InferenceSession


class EPBackendRep(BackendRep):
    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        names = [i.name for i in self.session.get_inputs()]
        if isinstance(inputs, dict):
            feeds = inputs
        elif isinstance(inputs, (list, tuple)):
            feeds = dict(zip(names, inputs))
        else:
            feeds = {names[0]: inputs}
        return tuple(self.session.run(None, feeds))


class EPBackend(Backend):
    """Backend whose device string names the providers, e.g. 'CPU' or 'cuda,cpu'."""
    providers: Sequence[str] = ("cpu",)

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return True

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() in ("CPU", "CUDA")

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> EPBackendRep:
        opts = SessionOptions()
        for k, v in kwargs.items():
            if hasattr(opts, k):
                setattr(opts, k, v)
        return EPBackendRep(InferenceSession(model, opts, providers=list(cls.providers)))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        raise NotImplementedError("run_node is not supported; build a model instead")


def backend_for(providers: Sequence[str]) -> type[EPBackend]:
    """A Backend class bound to a provider list (used by the conformance tests)."""
    return type("EPBackend_" + "_".join(providers), (EPBackend,), {"providers": tuple(providers)})


prepare = EPBackend.prepare
run_model = EPBackend.run_model
supports_device = EPBackend.supports_device
