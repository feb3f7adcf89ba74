"""The one lazy-import scheme: a subpackage names what its heavy submodules export, and those
names are imported on first use (so ``import labsupport.pipeline`` does not start the executor's
torch imports, and ``import labsupport.deepspeed_pipe`` works where DeepSpeed is not installed)."""
from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, modules: dict[str, tuple[str, ...]]):
    """``(__getattr__, __dir__, names)`` for ``package``'s ``__init__``.

    ``modules`` maps a submodule (``"run"``) to the names it exports; the first access to one of
    them imports the submodule and caches the name in the package. ``names`` lists them all,
    for the package's ``__all__``.
    """
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, list(where)
