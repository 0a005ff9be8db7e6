"""onnxruntime's InferenceSession, SessionOptions and RunOptions as subclasses of ep_core's.

What they add is what onnxruntime's Python layer has and ep_core's native API spells differently:
provider names, fallback, OrtValue/IOBinding runs, run_async, and SessionOptions entries applied
to the model before it is loaded (free dimension overrides, user initializers).
"""
from __future__ import annotations

import copy
import enum
import re
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .. import options as _options
from .. import session as _native
from ..errors import InvalidArgument, NotImplemented
from ..iobinding import IOBinding
from ..ortvalue import OrtValue
from ..provider import HOST
from . import _providers
from ._errors import EPFail, ModelLoadCanceled


class ExecutionOrder(enum.IntEnum):
    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


class SessionOptions(_options.SessionOptions):
    """ep_core's SessionOptions plus onnxruntime's methods that change the model at load."""

    def __init__(self) -> None:
        # Set before ep_core's __init__, which seals the option names.
        self.enable_mem_reuse: bool = True
        self.use_per_session_threads: bool = True
        self.execution_order: ExecutionOrder = ExecutionOrder.DEFAULT
        self._free_dims_by_name: dict[str, int] = {}
        self._free_dims_by_denotation: dict[str, int] = {}
        self._initializers: dict[str, OrtValue] = {}
        self._providers: list[tuple[str, dict]] = []
        self._load_cancelled = False
        super().__init__()
        self.log_severity_level = -1   # onnxruntime's default: the default logger's severity

    def add_free_dimension_override_by_name(self, dim_name: str, dim_value: int) -> None:
        """Fix every dimension named `dim_name` (in the model's inputs, outputs and value infos)."""
        self._free_dims_by_name[str(dim_name)] = _dim(dim_name, dim_value)

    def add_free_dimension_override_by_denotation(self, dim_denotation: str, dim_value: int) -> None:
        """Fix every dimension whose denotation is `dim_denotation` (e.g. 'DATA_BATCH')."""
        self._free_dims_by_denotation[str(dim_denotation)] = _dim(dim_denotation, dim_value)

    def add_initializer(self, name: str, ortvalue: OrtValue) -> None:
        """Use this value instead of the model's initializer `name` (names the model lacks are
        ignored, as in onnxruntime)."""
        if not isinstance(ortvalue, OrtValue):
            raise InvalidArgument(f"add_initializer('{name}'): expected an OrtValue, got "
                                  f"{type(ortvalue).__name__}")
        if not ortvalue.device.is_host:
            raise InvalidArgument(f"add_initializer('{name}'): the value must be on the CPU, it is "
                                  f"on {ortvalue.device}")
        self._initializers[str(name)] = ortvalue

    def add_external_initializers(self, names: Sequence[str], ortvalues: Sequence[OrtValue]) -> None:
        if len(names) != len(ortvalues):
            raise InvalidArgument(f"add_external_initializers: {len(names)} names for "
                                  f"{len(ortvalues)} values")
        for n, v in zip(names, ortvalues):
            self.add_initializer(n, v)

    def register_custom_ops_library(self, library_path: str) -> None:
        raise NotImplemented(
            f"register_custom_ops_library('{library_path}'): onnxruntime custom-op libraries are "
            f"built against onnxruntime's C API, which ep_core does not implement; register the op "
            f"in Python with ep_core.register_custom_op, or as a provider plugin "
            f"(ep_core.register_provider_library)")

    def add_provider(self, provider_name: str, provider_options: dict[str, str]) -> None:
        """Providers a session uses when it is created without `providers`."""
        self._providers.append((str(provider_name), dict(provider_options or {})))

    def has_providers(self) -> bool:
        return bool(self._providers)

    def set_load_cancellation_flag(self, value: bool) -> None:
        self._load_cancelled = bool(value)

    def applies_to_model(self) -> bool:
        return bool(self._free_dims_by_name or self._free_dims_by_denotation or self._initializers)

    def apply_to_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `model` with the free dimension overrides and user initializers applied."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        g = out.graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.WhichOneof("value") != "tensor_type":
                continue
            for d in vi.type.tensor_type.shape.dim:
                fixed = (self._free_dims_by_name.get(d.dim_param) if d.HasField("dim_param") else None)
                if fixed is None and d.denotation:
                    fixed = self._free_dims_by_denotation.get(d.denotation)
                if fixed is not None:
                    d.dim_value = fixed  # clears dim_param (one of the two)
        for k, init in enumerate(g.initializer):
            value = self._initializers.get(init.name)
            if value is not None:
                g.initializer[k].CopyFrom(numpy_helper.from_array(np.asarray(value.numpy()), init.name))
        return out


class RunOptions(_options.RunOptions):
    """ep_core's RunOptions; `logid` is onnxruntime's name for the run tag."""

    def __init__(self) -> None:
        super().__init__()
        self.log_severity_level = -1   # onnxruntime's default: the session's level

    @property
    def logid(self) -> str:
        return self.run_tag

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "logid":
            name, value = "run_tag", str(value)
        super().__setattr__(name, value)

    def add_active_adapter(self, adapter: Any) -> None:
        raise NotImplemented("RunOptions.add_active_adapter: LoRA adapters are not supported by ep_core")


class InferenceSession(_native.InferenceSession):
    """ep_core's InferenceSession with onnxruntime's provider names, fallback and OrtValue runs."""

    def __init__(self, path_or_bytes: Any, sess_options: Any = None,
                 providers: Sequence | None = None, provider_options: Sequence[dict] | None = None,
                 **kwargs: Any) -> None:
        self._enable_fallback = int(kwargs.pop("enable_fallback", 1)) == 1
        disabled = kwargs.pop("disabled_optimizers", None)
        if disabled:
            sess_options = copy.copy(sess_options or SessionOptions())
            sess_options.disabled_optimizers = list(sess_options.disabled_optimizers) + list(disabled)
        self._model_source = path_or_bytes
        self._sess_options_given = sess_options
        self._kwargs = kwargs
        try:
            self._create(providers, provider_options)
        except (EPFail, RuntimeError, ValueError) as e:
            if not self._enable_fallback or not self._uses_non_cpu(providers):
                raise
            warnings.warn(f"EP Error {e} when using {providers}; falling back to "
                          f"['CPUExecutionProvider'] and retrying.", RuntimeWarning, stacklevel=2)
            self._create(["CPUExecutionProvider"], None)
            self.disable_fallback()

    def _create(self, providers: Sequence | None, provider_options: Sequence[dict] | None) -> None:
        so = self._sess_options_given
        if not providers and so is not None and getattr(so, "_providers", None):
            providers = list(so._providers)
        native = _providers.normalize(providers, provider_options)
        if so is not None and getattr(so, "_load_cancelled", False):
            raise ModelLoadCanceled("model loading was canceled (SessionOptions.set_load_cancellation_flag)")
        model = self._model_source
        if so is not None and getattr(so, "applies_to_model", lambda: False)():
            model = so.apply_to_model(_native.load_model(model))
        self._created_ns = time.monotonic_ns()
        super().__init__(model, so, native, None, **self._kwargs)

    @staticmethod
    def _uses_non_cpu(providers: Sequence | None) -> bool:
        names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
        return any(_providers.native_name(n) not in (None, "cpu") for n in names)

    # ---- providers ----------------------------------------------------------------------------
    def get_providers(self) -> list[str]:
        return [_providers.ort_name(n) for n in super().get_providers()]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return _providers.provider_options_map(super().get_provider_options())

    def set_providers(self, providers: Sequence | None = None,
                      provider_options: Sequence[dict] | None = None) -> None:
        """Re-create the session on other providers (as onnxruntime does)."""
        self._create(providers, provider_options)

    def enable_fallback(self) -> None:
        self._enable_fallback = True

    def disable_fallback(self) -> None:
        self._enable_fallback = False

    def get_profiling_start_time_ns(self) -> int:
        return self._created_ns if self._options.enable_profiling else 0

    # ---- introspection: shapes as onnxruntime reports them -------------------------------------
    def get_inputs(self) -> list:
        return [_reported(a) for a in super().get_inputs()]

    def get_outputs(self) -> list:
        return [_reported(a) for a in super().get_outputs()]

    def get_overridable_initializers(self) -> list:
        return [_reported(a) for a in super().get_overridable_initializers()]

    # ---- runs ---------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: Any = None) -> list[Any]:
        """As ep_core's run; OrtValue feeds are taken where they live (device values in place)."""
        self._check_required(input_feed)
        if isinstance(input_feed, dict) and any(isinstance(v, OrtValue) for v in input_feed.values()):
            outs = self._run_values(output_names, input_feed, [HOST], run_options)
            return [v for v, _ in outs]
        return self._with_fallback(super().run, output_names, input_feed, run_options)

    def run_with_ort_values(self, output_names: Sequence[str] | None,
                            input_dict_ort_values: dict[str, OrtValue], run_options: Any = None
                            ) -> list[OrtValue]:
        """Feeds are OrtValues (on any device); outputs are OrtValues on the CPU, as in onnxruntime."""
        for name, v in input_dict_ort_values.items():
            if not isinstance(v, OrtValue):
                raise InvalidArgument(f"run_with_ort_values: feed '{name}' is a {type(v).__name__}, "
                                      f"not an OrtValue")
        outs = self._run_values(output_names, input_dict_ort_values, [HOST], run_options)
        return [OrtValue(v, d) for v, d in outs]

    def _check_required(self, input_feed: Any) -> None:
        if isinstance(input_feed, dict):
            missing = [a.name for a in super().get_inputs() if a.name not in input_feed]
            if missing:
                raise MissingFeed(f"Required inputs ({missing}) are missing from input feed "
                                  f"({list(input_feed)}).")

    def _run_values(self, output_names, feeds: dict[str, Any], where: list, run_options) -> list:
        self._check_required(feeds)
        values = {n: (v.value if isinstance(v, OrtValue) else v) for n, v in feeds.items()}
        devices = {n: v.device for n, v in feeds.items() if isinstance(v, OrtValue)}
        names = list(output_names) if output_names else [a.name for a in super().get_outputs()]
        return self._with_fallback(self.run_bound, values, devices, names, where * len(names),
                                   run_options)

    def run_async(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
                  callback: Callable[[list, Any, str], None], user_data: Any,
                  run_options: Any = None) -> None:
        """Run on another thread; `callback(results, user_data, error_message)` gets the outputs
        (error_message "" on success; results [] on failure)."""
        def work() -> None:
            try:
                results = self.run(output_names, input_feed, run_options)
            except Exception as e:  # noqa: BLE001 - reported to the callback, as onnxruntime does
                callback([], user_data, f"{type(e).__name__}: {e}")
                return
            callback(results, user_data, "")
        threading.Thread(target=work, name="ep_core.run_async", daemon=True).start()

    def io_binding(self) -> IOBinding:
        return IOBinding(self)

    def run_with_iobinding(self, iobinding: IOBinding, run_options: Any = None) -> None:
        self._with_fallback(iobinding.run, run_options)

    def create_ortvalue_from_shape_and_type(self, shape: Sequence[int], element_type: Any,
                                            device_type: str, device_id: int = 0,
                                            vendor_id: int = -1) -> OrtValue:
        return OrtValue.ortvalue_from_shape_and_type(shape, element_type, device_type, device_id)

    def _with_fallback(self, fn: Callable, *args: Any) -> Any:
        """onnxruntime retries a run that failed inside an execution provider (EPFail) once on the
        CPU when fallback is on."""
        try:
            return fn(*args)
        except EPFail as e:
            if not self._enable_fallback:
                raise
            warnings.warn(f"EP Error: {e} using {self.get_providers()}; falling back to "
                          f"['CPUExecutionProvider'] and retrying.", RuntimeWarning, stacklevel=3)
            self.set_providers(["CPUExecutionProvider"])
            self.disable_fallback()
            return fn(*args)  # re-created in place: the same bound method now runs on the CPU


class MissingFeed(InvalidArgument, ValueError):
    """A required input is not fed (onnxruntime's Python layer raises ValueError here)."""


_GENERATED_DIM = re.compile(r"unk__\d+$")


def _reported(arg: Any) -> Any:
    """A NodeArg as onnxruntime reports it: dims onnx's shape inference named 'unk__N' (it names
    dims it knows nothing of) are unknown (None)."""
    if arg.shape is None:
        return arg
    shape = [None if isinstance(d, str) and _GENERATED_DIM.match(d) else d for d in arg.shape]
    return type(arg)(arg.name, arg.type, shape)


def _dim(name: str, value: Any) -> int:
    v = int(value)
    if v <= 0:
        raise InvalidArgument(f"free dimension override '{name}': the size must be positive, got {value}")
    return v
