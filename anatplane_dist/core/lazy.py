"""Package faces that hand names on lazily: ``from anatplane_dist.model import build_model`` imports
the home module (and torch) only when the name is used.

Why: a config (``model/config.py``, ``objectives/config.py``) must import on a login node with
no torch, but importing a submodule runs its package's ``__init__`` first; a face built here
keeps that ``__init__`` free of heavy imports while users keep the short import paths.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` -> ``getattr(package.homes[name], name)``."""
    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
    return __getattr__
