"""IOBinding as onnxruntime has it: inputs bound to values already on a device (by OrtValue, by
raw buffer pointer, or a host array), outputs bound to a device (left there after the run) or to
a preallocated buffer that the run writes into.

The run goes through `InferenceSession.run_bound`, which hands device-resident feeds straight to
the nodes that read them on that device and leaves fetches where they were produced: a value bound
on a device never passes through the host.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidArgument
from .ortvalue import OrtValue, assign_into, copy_value, parse_device
from .provider import HOST, Device


class IOBinding:
    """Inputs and outputs of one session bound to devices; reuse it across runs."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._inputs: dict[str, OrtValue] = {}
        self._outputs: dict[str, Device | OrtValue] = {}  # a device, or a preallocated OrtValue
        self._results: list[OrtValue] = []

    # ---- inputs -------------------------------------------------------------------------------
    def bind_cpu_input(self, name: str, arr_on_cpu: Any) -> None:
        """Bind a host array (held, not copied)."""
        arr = arr_on_cpu if isinstance(arr_on_cpu, np.ndarray) else np.asarray(arr_on_cpu)
        self._inputs[name] = OrtValue(arr, HOST, arr_on_cpu)

    def bind_input(self, name: str, device_type: str, device_id: int, element_type: Any,
                   shape: Any, buffer_ptr: int) -> None:
        """Bind memory at `buffer_ptr` on a device (owned by the caller, read in place)."""
        device = parse_device(device_type, device_id)
        self._inputs[name] = OrtValue.from_pointer(buffer_ptr, shape, element_type, device)

    def bind_ortvalue_input(self, name: str, ortvalue: OrtValue) -> None:
        self._inputs[name] = _as_ortvalue(ortvalue, "bind_ortvalue_input")

    def synchronize_inputs(self) -> None:
        """Wait until work the providers queued on the bound inputs' devices is done."""
        self._sync({v.device for v in self._inputs.values()})

    # ---- outputs ------------------------------------------------------------------------------
    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0,
                    element_type: Any = None, shape: Any = None, buffer_ptr: int | None = None) -> None:
        """Leave output `name` on a device after the run, or write it into `buffer_ptr`."""
        device = parse_device(device_type, device_id)
        if buffer_ptr is None:
            self._outputs[name] = device
            return
        if element_type is None or shape is None:
            raise InvalidArgument(f"bind_output('{name}'): element_type and shape are needed with a "
                                  f"buffer_ptr")
        self._outputs[name] = OrtValue.from_pointer(buffer_ptr, shape, element_type, device)

    def bind_ortvalue_output(self, name: str, ortvalue: OrtValue) -> None:
        """The run writes output `name` into this (preallocated) value's buffer."""
        self._outputs[name] = _as_ortvalue(ortvalue, "bind_ortvalue_output")

    def synchronize_outputs(self) -> None:
        self._sync({r.device for r in self._results})

    def get_outputs(self) -> list[OrtValue]:
        """The outputs of the last run, in binding order, on their bound devices."""
        return list(self._results)

    def get_outputs_as_ortvaluevector(self) -> list[OrtValue]:
        return list(self._results)

    def copy_outputs_to_cpu(self) -> list[Any]:
        return [r.numpy() if r.is_tensor() else r.value for r in self._results]

    def clear_binding_inputs(self) -> None:
        self._inputs.clear()

    def clear_binding_outputs(self) -> None:
        self._outputs.clear()
        self._results = []

    # ---- the run ------------------------------------------------------------------------------
    def run(self, run_options: Any = None) -> None:
        """Run the session on the bound values (InferenceSession.run_with_iobinding calls this)."""
        if not self._outputs:
            raise InvalidArgument("run_with_iobinding: no output is bound; bind at least one with "
                                  "bind_output or bind_ortvalue_output")
        feeds, devices = {}, {}
        served = self._served_devices()
        for name, ov in self._inputs.items():
            value, device = ov.value, ov.device
            if not device.is_host and device not in served:
                # No provider of the session reads this device: one copy to the host.
                value, device = copy_value(value, device, HOST), HOST
            feeds[name], devices[name] = value, device
        names = list(self._outputs)
        wants = [b if isinstance(b, Device) else b.device for b in self._outputs.values()]
        wants = [w if w.is_host or w in served else HOST for w in wants]
        produced = self._session.run_bound(feeds, devices, names, wants, run_options)
        results = []
        for name, (value, device) in zip(names, produced):
            bound = self._outputs[name]
            if isinstance(bound, OrtValue):
                _write_into(name, bound, value, device)
                results.append(bound)
            else:
                if device != bound:
                    value, device = copy_value(value, device, bound), bound
                results.append(OrtValue(value, device))
        self._results = results

    def _served_devices(self) -> set[Device]:
        return {p.device for p in getattr(self._session, "_providers", ()) if not p.device.is_host}

    def _sync(self, devices: set[Device]) -> None:
        for p in getattr(self._session, "_providers", ()):
            if p.device in devices:
                p.sync()


def _as_ortvalue(v: Any, what: str) -> OrtValue:
    if not isinstance(v, OrtValue):
        raise InvalidArgument(f"{what} takes an OrtValue, got {type(v).__name__}")
    return v


def _write_into(name: str, bound: OrtValue, value: Any, device: Device) -> None:
    dst = bound.value
    if tuple(dst.shape) != tuple(value.shape) or np.dtype(dst.dtype) != np.dtype(value.dtype):
        raise InvalidArgument(f"output '{name}' is {value.dtype}{list(value.shape)} but the bound "
                              f"buffer is {dst.dtype}{list(dst.shape)}")
    assign_into(dst, copy_value(value, device, bound.device), bound.device)
