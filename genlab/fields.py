"""Config fields that declare what they accept -- one declaration per field, checked where a config
is built (genlab.config), so no check is scattered through the code that uses the value.

    steps: int = option(5000, ge=1)
    ema_decay: float = option(0.0, ge=0, lt=1)
    betas: tuple[float, float] = option((0.5, 0.999), ge=0, lt=1)      # checked element-wise
    amp: str = option("off", choices=("off", "bf16", "fp16"), aliases=((False, "off"), (True, "bf16")))

An out-of-range value is a one-line ConfigError naming the key, the value and the allowed range.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from .errors import ConfigError


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple | None = None, aliases: tuple = (), zero: str = "") -> Any:
    """A dataclass field with its declared range (ge / gt / le / lt, on each element of a tuple),
    allowed `choices`, `aliases` ((given, meaning) pairs, e.g. YAML's `off` -> False -> "off";
    matched by type and value, so True never stands for 1) and what 0 means when it is special
    (`zero="off"`: shown in the error's range)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "aliases": tuple(aliases), "zero": zero}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def apply_aliases(f: dataclasses.Field, value: Any) -> Any:
    """A field's declared meaning of `value` (before type checking)."""
    for given, meaning in f.metadata.get("aliases", ()):
        if type(value) is type(given) and value == given:
            return meaning
    return value


def describe_range(meta) -> str:
    parts = []
    lo = (">=", meta["ge"]) if meta.get("ge") is not None else (">", meta["gt"]) if meta.get("gt") is not None else None
    hi = ("<=", meta["le"]) if meta.get("le") is not None else ("<", meta["lt"]) if meta.get("lt") is not None else None
    for bound in (lo, hi):
        if bound is not None:
            v = bound[1]
            parts.append(f"{bound[0]} {v}" if isinstance(v, int) else f"{bound[0]} {v:g}")
    text = " and ".join(parts)
    return text + (f"; 0 = {meta['zero']}" if meta.get("zero") else "")


def _in_range(x, meta) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return True
    return not ((meta["ge"] is not None and x < meta["ge"]) or (meta["gt"] is not None and x <= meta["gt"])
                or (meta["le"] is not None and x > meta["le"]) or (meta["lt"] is not None and x >= meta["lt"])
                or x != x)  # NaN is never in range


def check(f: dataclasses.Field, value: Any, path: str) -> None:
    """ConfigError unless `value` (already type-checked) is what field `f` declares it accepts."""
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path} = {value!r} is not allowed (choose from: {', '.join(map(str, choices))})")
    if not any(meta.get(k) is not None for k in ("ge", "gt", "le", "lt")):
        return
    for x in (value if isinstance(value, (tuple, list)) else (value,)):
        if not _in_range(x, meta):
            raise ConfigError(f"{path} = {value!r} is out of range (allowed: {describe_range(meta)})")


def validate(obj: Any, path: str = "") -> Any:
    """Run every declared check of a dataclass instance built in code (not through genlab.config)."""
    for f in dataclasses.fields(obj):
        value, sub = getattr(obj, f.name), f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            validate(value, sub)
        else:
            check(f, value, sub)
    return obj
