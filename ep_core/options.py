"""Session and run options with onnxruntime's names and meanings."""
from __future__ import annotations

import enum
import json
import os
from typing import Any

from .errors import InvalidArgument, NoSuchFile


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class _Fields:
    """Options objects refuse unknown attribute names (a typo is an error, as in onnxruntime)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self.__dict__ and hasattr(self, "_sealed"):
            known = sorted(k for k in self.__dict__ if not k.startswith("_"))
            raise AttributeError(f"'{type(self).__name__}' has no option '{name}'; known: {known}")
        object.__setattr__(self, name, value)


class SessionOptions(_Fields):
    """Knobs read when a session is built (same attribute names as onnxruntime).

    `enable_cpu_mem_arena` and `enable_mem_pattern` have no observable effect here: the CPU
    provider allocates through numpy (no arena: memory goes back to the system as values die) and
    every plan releases each value after its last reader. `use_deterministic_compute`: the CPU
    kernels always are (same inputs, same thread count -> same bits)."""

    def __init__(self) -> None:
        self.graph_optimization_level: GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.execution_mode: ExecutionMode = ExecutionMode.ORT_SEQUENTIAL
        self.intra_op_num_threads: int = 0
        self.inter_op_num_threads: int = 0
        self.enable_profiling: bool = False
        self.profile_file_prefix: str = "ep_core_profile"
        self.optimized_model_filepath: str = ""
        self.log_severity_level: int = 2
        self.log_verbosity_level: int = 0
        self.logid: str = ""
        self.enable_mem_pattern: bool = True
        self.enable_cpu_mem_arena: bool = True
        self.use_deterministic_compute: bool = False
        self.disabled_optimizers: list[str] = []
        # ep_core's own: the largest tensor one node may create (0: no limit); a server taking
        # untrusted models sets it so an allocation bomb is refused before anything is allocated.
        self.max_tensor_bytes: int = 0
        # ep_core's own: "priority" (onnxruntime's greedy rule: providers in the given order) or
        # "cost" (choose among the given providers by measured cost; docs/placement.md).
        self.placement: str = "priority"
        self._config: dict[str, str] = {}
        self._sealed = True

    def add_session_config_entry(self, key: str, value: str) -> None:
        self._config[key] = str(value)

    def get_session_config_entry(self, key: str) -> str:
        return self._config[key]

    @property
    def config(self) -> dict[str, str]:
        return dict(self._config)

    @classmethod
    def from_config(cls, path_or_config: Any) -> "SessionOptions":
        """Session options from a tuner configuration (a JSON file `ep_core.tune` wrote, or its
        dict). The configuration's providers are not session options: run all of it with
        `ep_core.InferenceSession(model, **load_config(path))` (`from ep_core.options import load_config`)."""
        return load_config(path_or_config, cls)["sess_options"]


class RunOptions(_Fields):
    """Per-run knobs (same attribute names as onnxruntime). `terminate` may be set from another
    thread while `run` is in progress: the run stops with RunTerminated."""

    def __init__(self) -> None:
        self.log_severity_level: int = 2
        self.log_verbosity_level: int = 0
        self.run_tag: str = ""
        self.terminate: bool = False
        self.only_execute_path_to_fetches: bool = False
        # ep_core's own: stop the run with RunTerminated after this many seconds (0: no deadline).
        self.timeout_s: float = 0.0
        self._config: dict[str, str] = {}
        self._sealed = True

    def add_run_config_entry(self, key: str, value: Any) -> None:
        self._config[key] = str(value)

    def get_run_config_entry(self, key: str) -> str:
        return self._config[key]


# ----------------------------------------------------------------- tuner configurations

def _enum(kind: type, name: str, value: Any):
    if isinstance(value, str):
        try:
            return kind[value]
        except KeyError:
            raise InvalidArgument(f"config session option {name}={value!r}: expected one of "
                                  f"{[m.name for m in kind]}") from None
    try:
        return kind(int(value))
    except (TypeError, ValueError):
        raise InvalidArgument(f"config session option {name}={value!r}: expected one of "
                              f"{[m.name for m in kind]}") from None


def options_from_dict(values: dict, cls: type | None = None) -> SessionOptions:
    """A `cls` (SessionOptions or a subclass) with `values` applied (enum fields by name or
    number); unknown names and wrong types are InvalidArgument."""
    opts = (cls or SessionOptions)()
    for k, v in values.items():
        if k.startswith("_") or not hasattr(opts, k):
            known = sorted(n for n in vars(opts) if not n.startswith("_"))
            raise InvalidArgument(f"config session option {k!r} is not a SessionOptions field; known: {known}")
        if k == "execution_mode":
            v = _enum(ExecutionMode, k, v)
        elif k == "graph_optimization_level":
            v = _enum(GraphOptimizationLevel, k, v)
        elif isinstance(getattr(opts, k), bool) != isinstance(v, bool) or \
                (isinstance(getattr(opts, k), int) and not isinstance(v, int)):
            raise InvalidArgument(f"config session option {k}={v!r}: expected "
                                  f"{type(getattr(opts, k)).__name__}")
        setattr(opts, k, v)
    return opts


def _read_config(path_or_config: Any) -> dict:
    if isinstance(path_or_config, dict):
        cfg = path_or_config
    elif not isinstance(path_or_config, (str, os.PathLike)):
        cfg = None
    else:
        try:
            with open(path_or_config) as f:
                cfg = json.load(f)
        except FileNotFoundError:
            raise NoSuchFile(f"tuner config not found: {path_or_config}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise InvalidArgument(f"tuner config {path_or_config}: not readable JSON ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("session_options", {}), dict):
        raise InvalidArgument(f"tuner config {path_or_config!r}: expected an object with "
                              f"'session_options', 'providers', 'provider_options'")
    return cfg


def load_config(path_or_config: Any, options_class: type | None = None) -> dict:
    """`{"sess_options", "providers", "provider_options"}` from a tuner config (path or dict):
    `ep_core.InferenceSession(model, **load_config(path))` runs the tuned configuration."""
    cfg = _read_config(path_or_config)
    providers = cfg.get("providers")
    provider_options = cfg.get("provider_options")
    if providers is not None and not isinstance(providers, (str, list)):
        raise InvalidArgument(f"tuner config providers={providers!r}: expected a list of names")
    if provider_options is not None and (not isinstance(providers, list) or
                                         len(provider_options) != len(providers)):
        raise InvalidArgument("tuner config provider_options must be a list with one dict per provider")
    return {"sess_options": options_from_dict(cfg.get("session_options", {}), options_class),
            "providers": providers, "provider_options": provider_options}
