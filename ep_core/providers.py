"""Provider registration: built-ins, explicit `register_provider`, and the `ep_core.providers`
entry-point group so an installed third-party package is found without changing this repo."""
from __future__ import annotations

import importlib
import warnings
from importlib import metadata
from typing import Callable

from .errors import InvalidArgument
from .provider import ExecutionProvider

ProviderFactory = Callable[..., ExecutionProvider]

# name -> factory (a provider class, or a callable returning one; classes expose availability()).
_factories: dict[str, ProviderFactory] = {}
_aliases = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
_BUILTINS = {"cpu": "ep_cpu:CPUExecutionProvider", "cuda": "ep_cuda:CUDAExecutionProvider"}
_discovered = False


def register_provider(name: str, factory: ProviderFactory, aliases: tuple[str, ...] = ()) -> None:
    """Make `name` usable in `providers=[...]`. `factory(**options)` returns the provider."""
    _factories[name] = factory
    for a in aliases:
        _aliases[a] = name


def _load(spec: str) -> ProviderFactory:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name, spec in _BUILTINS.items():
        if name not in _factories:
            try:
                _factories[name] = _load(spec)
            except (ImportError, AttributeError) as e:  # e.g. ep_cuda not installed: listed, never available
                _factories[name] = _unavailable(name, f"cannot import {spec}: {e}")
    for ep in metadata.entry_points(group="ep_core.providers"):
        if ep.name in _factories:
            continue
        try:
            _factories[ep.name] = ep.load()
        except Exception as e:  # a broken plugin must not break sessions that do not use it
            warnings.warn(f"provider plugin '{ep.name}' ({ep.value}) failed to load: {e}")


def _unavailable(name: str, reason: str) -> ProviderFactory:
    class Unavailable(ExecutionProvider):
        type = name

        @classmethod
        def availability(cls) -> tuple[bool, str]:
            return False, reason
    return Unavailable


def canonical_name(name: str) -> str:
    _discover()
    name = _aliases.get(name, name)
    if name not in _factories:
        raise InvalidArgument(f"unknown provider '{name}'; known providers: {sorted(_factories)}")
    return name


def provider_factory(name: str) -> ProviderFactory:
    return _factories[canonical_name(name)]


def availability(name: str) -> tuple[bool, str]:
    factory = provider_factory(name)
    check = getattr(factory, "availability", None)
    return check() if check is not None else (True, "")


def get_all_providers() -> list[str]:
    """Every provider this installation knows, whether or not it can run here."""
    _discover()
    return list(_factories)


def get_available_providers() -> list[str]:
    """Providers that can really run on this machine, in default priority order (CPU last)."""
    names = [n for n in get_all_providers() if availability(n)[0]]
    return sorted(names, key=lambda n: n == "cpu")


def get_registered_ops(provider_name: str) -> list[tuple[str, str, int, int]]:
    """(domain, op_type, since, end) of every kernel the provider registers; needs no hardware."""
    factory = provider_factory(provider_name)
    registry_of = getattr(factory, "kernel_registry", None)  # class-level: no device needed
    return (registry_of() if registry_of is not None else factory().get_kernel_registry()).ops()
