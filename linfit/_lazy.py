"""Lazy package attributes, so that ``import linfit`` and the command line's ``--help`` do not pay for importing
JAX until a JAX-backed name is first used."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


def install(package: str, names: Mapping[str, str]) -> None:
    """Make ``names`` (attribute -> defining module) attributes of ``package`` that import on first access.

    Any other missing attribute is tried as a sub-module ``package.<name>``. A function named like its own
    module (``linfit.linearize``) stays the function when the sub-module is imported later, as it would with an
    eager ``from linfit.linearize import linearize``.
    """

    class LazyPackage(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            if name in names:
                value = getattr(importlib.import_module(names[name]), name)
                super().__setattr__(name, value)
                return value
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

        def __setattr__(self, name: str, value: object) -> None:
            if name in names and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}":
                value = getattr(value, name)  # the import system binding a sub-module that a name shadows
            super().__setattr__(name, value)

        def __dir__(self) -> list:
            return sorted(set(names) | set(self.__dict__))

    sys.modules[package].__class__ = LazyPackage
