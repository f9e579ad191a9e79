"""Lazy package exports (PEP 562): a package lists its public names and the modules that hold them, and each is
imported on first use, so importing one submodule never pays for the whole library.

An exported name may also name a submodule (``fusion.train`` the function, in the module ``fusion.train``;
``fusion.methods`` the function, beside the package ``fusion.methods``). Importing a submodule sets it as an attribute
of its package, which would hide the export; the package keeps the export instead. The submodule stays importable
by its full name (``from fusion.train import TrainConfig``, ``importlib.import_module("fusion.train")``), but
``import fusion.train as m`` binds the export."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps each public name to the module
    that defines it; a name once looked up is cached in the package's ``namespace``."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    class ExportingPackage(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in exports and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                return
            super().__setattr__(name, value)

    sys.modules[package].__class__ = ExportingPackage
    return getattr_, dir_
