"""A tiny registry: `register(kind, name)` decorates a class or function, `get(kind, name)`
finds it again (with a "did you mean" on typos), `available(kind)` lists names.

Kinds used in genlab: family, net, loss, regularizer, dataset, features, model.
Models are the YAML files in configs/ (one per registered model name); they are registered
lazily on first lookup so the list always matches the files.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

_REGISTRY: dict[str, dict[str, Any]] = {}
_LOADERS: dict[str, Callable[[], None]] = {}


class RegistryError(KeyError):  # also caught by the CLI as a user error
    """Unknown kind or name; str() is a one-line message suitable for a user."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(kind: str, name: str, obj: Any = None):
    """Register `obj` under (kind, name); usable as a decorator when obj is omitted."""

    def _do(o: Any) -> Any:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not o:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = o
        return o

    return _do if obj is None else _do(obj)


def register_loader(kind: str, loader: Callable[[], None]) -> None:
    """A function run once before the first lookup of `kind` (imports that register)."""
    _LOADERS[kind] = loader


def _ensure_loaded(kind: str) -> None:
    loader = _LOADERS.pop(kind, None)
    if loader is not None:
        loader()


def available(kind: str) -> list[str]:
    _ensure_loaded(kind)
    return sorted(_REGISTRY.get(kind, {}))


def get(kind: str, name: str) -> Any:
    _ensure_loaded(kind)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    valid = ", ".join(sorted(table)) or "(none registered)"
    raise RegistryError(f"unknown {kind} {name!r}{hint} (available: {valid})")


def kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LOADERS))
