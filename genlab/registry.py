"""A tiny registry: `register(kind, name)` decorates a class or function, `get(kind, name)`
finds it again (with a "did you mean" on typos), `available(kind)` lists names.

Kinds used in genlab: family, net, loss, regularizer, dataset, features, measure, model.
Models are the YAML files in configs/ (one per registered model name); they are registered
lazily on first lookup so the list always matches the files.

Parts declare their contracts as attributes set at registration (`register(..., role=...)`): a
net's `role` (generator, discriminator, ...), the `data` kinds it handles and the `output` it
returns; a loss's or regularizer's `accepts` (the discriminator outputs it can use). Families check
a combination with `require(...)` when they are built, so an incompatible pair is a one-line
ConfigError naming both parts and what would fit, never a traceback in the middle of a step.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from .errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}
_LOADERS: dict[str, Callable[[], None]] = {}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class RegistryError(ConfigError):
    """Unknown kind or name (a config mistake); str() is a one-line message suitable for a user."""


def register(kind: str, name: str, obj: Any = None, **contract: Any):
    """Register `obj` under (kind, name); usable as a decorator when obj is omitted. Keyword
    arguments are the part's declared contract, stored on it as attributes (role="generator")."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"invalid {kind} name {name!r}: letters, digits and _ . + - only "
                         f"(no whitespace, path separators or '..')")

    def _do(o: Any) -> Any:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not o:
            raise ValueError(f"{kind} {name!r} is registered twice")
        for key, value in contract.items():
            setattr(o, key, value)
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


def available(kind: str, **contract: Any) -> list[str]:
    """Registered names of `kind`, optionally only those whose declared contract matches
    (`available("net", role="generator")`; a tuple/set-valued attribute matches if it contains it)."""
    _ensure_loaded(kind)
    return sorted(n for n, o in _REGISTRY.get(kind, {}).items() if _matches(o, contract))


def _matches(obj: Any, contract: dict) -> bool:
    for key, want in contract.items():
        have = getattr(obj, key, None)
        if not (have == want or (isinstance(have, (tuple, set, frozenset, list)) and want in have)):
            return False
    return True


def get(kind: str, name: str) -> Any:
    _ensure_loaded(kind)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    valid = ", ".join(sorted(table)) or "(none registered)"
    raise RegistryError(f"unknown {kind} {name!r}{hint} (available: {valid})")


def require(kind: str, name: str, what: str, **contract: Any) -> Any:
    """get(kind, name), checked against a contract: `require("net", o.generator, "gan.generator",
    role="generator", data="image")` -> the class, or a ConfigError naming what fits instead."""
    obj = get(kind, name)
    if not _matches(obj, contract):
        declared = ", ".join(f"{k} {getattr(obj, k, None)!r}" for k in contract)
        fits = ", ".join(available(kind, **contract)) or "none"
        wants = ", ".join(f"{k} {v!r}" for k, v in contract.items())
        raise ConfigError(f"{what}: {kind} {name!r} has {declared}, but here it needs {wants} "
                          f"(that fits: {fits})")
    return obj


def kinds() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LOADERS))
