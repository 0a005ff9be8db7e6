"""Tuner configurations: one `Trial` (providers, provider options, session options) and the JSON
file `ep_core.tune` writes. `InferenceSession(model, **load_config(path))` runs all of it;
`SessionOptions.from_config(path)` gives its session options alone.

The file:
    {"format": "ep_core-tune-config/1",
     "providers": ["cpu"] | null (the session default) | "auto",
     "provider_options": [{...} per provider] | null,
     "session_options": {"intra_op_num_threads": 2, "inter_op_num_threads": 0,
                         "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL"},
     "name": ..., "measured": {...}, "key": {...}}     (the last three informative)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import InvalidArgument, NoSuchFile
from .options import ExecutionMode, GraphOptimizationLevel, SessionOptions

CONFIG_FORMAT = "ep_core-tune-config/1"


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolved_default_providers() -> list[str]:
    """What `providers=None` means to a session: the available built-in providers."""
    from . import providers as registry
    return [n for n in ("cuda", "cpu") if registry.availability(n)[0]]


@dataclass(frozen=True)
class Trial:
    """One configuration: providers (None: the session default; "auto": cost placement),
    per-provider options aligned with `providers`, and session option values."""
    name: str
    providers: Any = None
    provider_options: tuple | None = None
    session_options: tuple = ()       # sorted (field, value) pairs; values are JSON types

    @classmethod
    def make(cls, name: str, providers: Any = None, provider_options: Sequence[dict] | None = None,
             session_options: dict | None = None) -> "Trial":
        opts = _json_session_options(session_options or {})
        po = None if provider_options is None else tuple(
            tuple(sorted((k, v) for k, v in (d or {}).items())) for d in provider_options)
        provs = providers if providers is None or isinstance(providers, str) else tuple(providers)
        return cls(name, provs, po, tuple(sorted(opts.items())))

    @classmethod
    def from_config(cls, config: dict, name: str = "") -> "Trial":
        return cls.make(name or config.get("name", "config"), config.get("providers"),
                        config.get("provider_options"), config.get("session_options"))

    def config(self) -> dict:
        """The JSON form `load_config` reads."""
        return {"format": CONFIG_FORMAT,
                "providers": self.providers if self.providers is None or isinstance(self.providers, str)
                else list(self.providers),
                "provider_options": None if self.provider_options is None
                else [dict(p) for p in self.provider_options],
                "session_options": dict(self.session_options)}

    def with_(self, **changes: Any) -> "Trial":
        """This trial with some session options (or `providers`/`provider_options`) changed, named
        by how it differs from the defaults."""
        cfg = self.config()
        for k in ("providers", "provider_options"):
            if k in changes:
                cfg[k] = changes.pop(k)
        cfg["session_options"].update(changes)
        return Trial.from_config(cfg, describe(cfg))

    def identity(self) -> str:
        """What the trial means (its name aside): equal identities run the same configuration."""
        cfg = self.config()
        cfg["providers"] = resolved_default_providers() if cfg["providers"] is None else cfg["providers"]
        so = dict(_json_session_options({}))
        so.update(cfg["session_options"])
        n_cores = cores()
        if so["intra_op_num_threads"] in (0, n_cores):       # 0 means every core
            so["intra_op_num_threads"] = 0
        if so["execution_mode"] == "ORT_SEQUENTIAL":       # inter-op threads unused then
            so["inter_op_num_threads"] = 0
        elif so["inter_op_num_threads"] in (0, n_cores):
            so["inter_op_num_threads"] = 0
        cfg["session_options"] = so
        if cfg["provider_options"] is not None and not any(cfg["provider_options"]):
            cfg["provider_options"] = None
        return json.dumps(cfg, sort_keys=True)

    def session_kwargs(self) -> dict:
        """Keyword arguments of `InferenceSession` for this trial (all but the model)."""
        return load_config(self.config())



def describe(config: dict) -> str:
    """A short name of a configuration: what differs from the defaults ("defaults" if nothing)."""
    parts = []
    provs = config.get("providers")
    if provs is not None:
        parts.append("providers=" + (provs if isinstance(provs, str) else ",".join(provs)))
    so, base = _json_session_options(config.get("session_options") or {}), _json_session_options({})
    if so["intra_op_num_threads"] != base["intra_op_num_threads"]:
        parts.append(f"intra_op_threads={so['intra_op_num_threads']}")
    if so["execution_mode"] == "ORT_PARALLEL":
        parts.append(f"parallel inter_op_threads={so['inter_op_num_threads'] or 'all'}")
    if so["graph_optimization_level"] != base["graph_optimization_level"]:
        parts.append(f"opt_level={so['graph_optimization_level']}")
    parts += [f"{k}={v}" for k, v in sorted(so.items()) if k not in base and v != base.get(k)]
    for name, opts in zip(provs if isinstance(provs, list) else [], config.get("provider_options") or []):
        parts += [f"{name} {k}={v}" for k, v in sorted((opts or {}).items())]
    return ", ".join(parts) or "defaults"


def _json_session_options(values: dict) -> dict:
    """Session option values as JSON types (enums by name), with the tuner's four fields filled."""
    base = SessionOptions()
    out = {"intra_op_num_threads": base.intra_op_num_threads,
           "inter_op_num_threads": base.inter_op_num_threads,
           "execution_mode": base.execution_mode.name,
           "graph_optimization_level": base.graph_optimization_level.name}
    for k, v in values.items():
        if isinstance(v, (ExecutionMode, GraphOptimizationLevel)):
            v = v.name
        out[k] = v
    return out


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


def options_from_dict(values: dict, cls: type = SessionOptions) -> SessionOptions:
    """A `cls` (SessionOptions or a subclass) with `values` applied (enum fields by name or
    number); unknown names and wrong types are InvalidArgument."""
    opts = cls()
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


def load_config(path_or_config: Any, options_class: type = SessionOptions) -> dict:
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


DEFAULTS = Trial.make("defaults")
