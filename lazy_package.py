"""Packages whose exported names load on first use (PEP 562).

``pipeline`` and ``memory`` export their public names from the package, but importing one torch-free module
of theirs (the scene-script parser and the transition vocabulary, which the batch client uses on machines
without torch) must not import every other module. ``install(__name__, EXPORTS)`` at the end of a package's
``__init__`` makes ``from .pipeline import X`` load ``X``'s module only when ``X`` is first asked for.
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    """Keeps an exported name bound to its object when a submodule of the same name is imported.

    Importing ``pipeline.rollout`` makes the import system set the package attribute ``rollout`` to the
    submodule; the package exports the function ``rollout`` under that name.
    """

    def __setattr__(self, name: str, value) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        if (isinstance(value, types.ModuleType) and exports.get(name) == name
                and value.__name__ == f"{self.__name__}.{name}" and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)


def install(package: str, exports: dict[str, str]) -> None:
    """Make package ``package`` resolve each name of ``exports`` (name -> submodule) on first use."""
    module = sys.modules[package]

    def __getattr__(name: str):
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *exports})

    module.__class__ = _LazyPackage
    module._lazy_exports = exports
    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
