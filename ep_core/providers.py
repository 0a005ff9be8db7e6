"""Provider registration: built-ins, explicit `register_provider`, and the `ep_core.providers`
entry-point group so an installed third-party package is found without changing this repo."""
from __future__ import annotations

import functools
import importlib
import threading
import warnings
from importlib import metadata
from typing import Callable

from .errors import IncompatiblePlugin, InvalidArgument
from .provider import ExecutionProvider

ProviderFactory = Callable[..., ExecutionProvider]

# name -> factory (a provider class, or a callable returning one; classes expose availability()).
_factories: dict[str, ProviderFactory] = {}
_aliases = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
_BUILTINS = {"cpu": "ep_cpu:CPUExecutionProvider", "cuda": "ep_cuda:CUDAExecutionProvider"}
_discovered = False   # set only once the registry is full (threads skip the lock after that)
_discovering = False  # re-entry guard: a plugin's import may ask for providers on the same thread
# Guards discovery and every change of the tables: sessions created at once from several threads
# must all see the whole registry, never a half-filled one.
_lock = threading.RLock()
_incompatible: dict[str, str] = {}  # plugin name -> why it was refused (raised when it is requested)
_from_entry_points: set[str] = set()


def register_provider(name: str, factory: ProviderFactory, aliases: tuple[str, ...] = ()) -> None:
    """Make `name` usable in `providers=[...]`. `factory(**options)` returns the provider.

    A provider class must subclass ExecutionProvider and declare a compatible `abi_version`
    (else IncompatiblePlugin naming it); a plain callable's provider is checked when created.
    """
    checked = _checked(name, factory)
    with _lock:
        _factories[name] = checked
        _incompatible.pop(name, None)
        _from_entry_points.discard(name)  # explicit registration wins over a later refresh()
        for a in aliases:
            _aliases[a] = name


def unregister_provider(name: str) -> None:
    """Forget a provider added with register_provider / register_provider_library (and its aliases)."""
    with _lock:
        _factories.pop(name, None)
        _incompatible.pop(name, None)
        for alias in [a for a, n in _aliases.items() if n == name]:
            del _aliases[alias]


def register_provider_library(name: str, path: str, aliases: tuple[str, ...] = ()) -> type:
    """Load a C plugin (a shared library implementing ep_core/include/ep_plugin.h) with ctypes
    and register it as provider `name`. Returns the adapter class; errors name the plugin."""
    from .c_plugin import load_provider_library
    cls = load_provider_library(name, path)
    register_provider(name, cls, aliases)
    return cls


def _checked(name: str, factory: ProviderFactory) -> ProviderFactory:
    from .plugin import check_abi_version, check_provider_class
    if isinstance(factory, type):
        check_provider_class(factory, name)
        return factory
    if not callable(factory):
        raise IncompatiblePlugin(f"provider plugin '{name}': {factory!r} is neither a provider "
                                 f"class nor a callable returning a provider")

    @functools.wraps(factory)
    def make(**options):  # the ABI version is only known once the callable returns a provider
        provider = factory(**options)
        if not isinstance(provider, ExecutionProvider):
            raise IncompatiblePlugin(f"provider plugin '{name}': its factory returned "
                                     f"{type(provider).__name__}, not an ExecutionProvider")
        check_abi_version(getattr(provider, "abi_version", None), name)
        return provider
    return make


def _load(spec: str) -> ProviderFactory:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _discover() -> None:
    global _discovered, _discovering
    if _discovered:
        return
    with _lock:
        if _discovered or _discovering:
            return
        _discovering = True
        try:
            _fill_registry()
        finally:
            _discovering = False
            _discovered = True


def _fill_registry() -> None:
    for name, spec in _BUILTINS.items():
        if name not in _factories:
            try:
                _factories[name] = _load(spec)
            except (ImportError, AttributeError) as e:  # e.g. ep_cuda not installed: listed, never available
                _factories[name] = _unavailable(name, f"cannot import {spec}: {e}")
    for ep in metadata.entry_points(group="ep_core.providers"):
        if ep.name in _factories or ep.name in _incompatible:
            continue
        try:
            factory = ep.load()
        except Exception as e:  # a broken plugin must not break sessions that do not use it
            warnings.warn(f"provider plugin '{ep.name}' ({ep.value}) failed to load: {e}")
            continue
        try:
            _factories[ep.name] = _checked(ep.name, factory)
        except IncompatiblePlugin as e:  # refused when requested, not for sessions that don't use it
            _incompatible[ep.name] = f"{e} (entry point {ep.value})"
            _factories[ep.name] = _unavailable(ep.name, str(e))
        _from_entry_points.add(ep.name)


def refresh() -> None:
    """Scan the `ep_core.providers` entry points again (after installing a plugin in-process)."""
    global _discovered
    with _lock:
        for name in _from_entry_points:
            _factories.pop(name, None)
            _incompatible.pop(name, None)
        _from_entry_points.clear()
        _discovered = False
        importlib.invalidate_caches()
        _discover()


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
    name = canonical_name(name)
    if name in _incompatible:
        raise IncompatiblePlugin(_incompatible[name])
    return _factories[name]


def availability(name: str) -> tuple[bool, str]:
    factory = provider_factory(name)
    check = getattr(factory, "availability", None)
    return check() if check is not None else (True, "")


def get_all_providers() -> list[str]:
    """Every provider this installation knows, whether or not it can run here."""
    _discover()
    with _lock:
        return list(_factories)


def get_available_providers() -> list[str]:
    """Providers that can really run on this machine, in default priority order (CPU last)."""
    names = [n for n in get_all_providers() if n not in _incompatible and availability(n)[0]]
    return sorted(names, key=lambda n: n == "cpu")


AUTO = "auto"


def parse_request(providers, provider_options=None) -> tuple[list | None, bool]:
    """(provider list for `resolve_providers`, choose by cost?) of a session's `providers`.

    `"auto"` (or `["auto"]`) means every available provider (`get_available_providers()`),
    chosen among by cost; "auto" beside other names, or with provider_options, is refused."""
    if isinstance(providers, str):
        providers = [providers]
    if providers is None:
        return None, False
    names = [e[0] if isinstance(e, (tuple, list)) else e for e in providers]
    if AUTO not in names:
        return list(providers), False
    if len(names) != 1:
        raise InvalidArgument(f"providers={list(names)}: 'auto' stands for every available provider; "
                              f"give it alone, or list the providers to choose among with "
                              f"SessionOptions.placement = 'cost'")
    if provider_options is not None or isinstance(providers[0], (tuple, list)):
        raise InvalidArgument("providers='auto' takes no provider options; list the providers "
                              "with their options and set SessionOptions.placement = 'cost'")
    return get_available_providers(), True


def get_registered_ops(provider_name: str) -> list[tuple[str, str, int, int]]:
    """(domain, op_type, since, end) of every kernel the provider registers; needs no hardware."""
    factory = provider_factory(provider_name)
    registry_of = getattr(factory, "kernel_registry", None)  # class-level: no device needed
    return (registry_of() if registry_of is not None else factory().get_kernel_registry()).ops()
