"""Target backends: one package per runtime family, each implementing `base.Backend`, found here by name.

Each backend package registers itself (`register(sys.modules[__name__])` at its end); `backend`,
`names` and `all_backends` import every package under `backends/` once, which is cheap: backends
import their runtimes only inside the functions that use them. The protocol, its quantization
modes and `Conversion` live in `base.py`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from xcit_edge.backends.base import REQUIRED, Backend, Conversion, QuantMode
from xcit_edge.errors import SpecError, did_you_mean

__all__ = ["Backend", "Conversion", "QuantMode", "all_backends", "backend", "names", "register"]

_REGISTRY: dict[str, Backend] = {}


def register(module: ModuleType) -> ModuleType:
    """Add a backend package (a module implementing `Backend`) to the registry; returns it.

    Raises:
        SpecError: a required name of the protocol is missing, or the name is taken.
    """
    missing = [n for n in REQUIRED if not hasattr(module, n)]
    if missing:
        raise SpecError(f"backend {module.__name__} lacks {', '.join(missing)}")
    if _REGISTRY.get(module.NAME, module) is not module:
        raise SpecError(f"two backends are named {module.NAME!r}")
    _REGISTRY[module.NAME] = module
    return module


@cache
def _discover() -> None:
    """Import every backend package once (each registers itself)."""
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def all_backends() -> dict[str, Backend]:
    """Every registered backend by name, in name order."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def names() -> tuple[str, ...]:
    return tuple(all_backends())


def backend(name: str) -> Backend:
    """The backend called `name`.

    Raises:
        SpecError: no backend has that name (a target spec names an unknown backend).
    """
    known = all_backends()
    if name not in known:
        raise SpecError(f"unknown backend {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})")
    return known[name]

