"""CUDA launch wrappers grouped by op category; importing this package registers all of them
(and declares every kernel instantiation they launch in the loader's manifest)."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
