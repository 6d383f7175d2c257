"""The measure registry: every metric and diagnostic genlab reports, declared once.

A `Measure` is one computation (FID, KID, the 2-D mixture diagnostic, ...) registered under kind
"measure". It declares
    section      "eval" (genlab eval, periodic eval) or "diagnose" (genlab diagnose, diagnose hook)
    figures      what it reports: key, label, unit, direction (lower / higher / target / info)
    needs        family capabilities it uses (sample, log_likelihood, reconstruct, translate, codebook)
    data/traits  the data kinds it applies to, and data traits it needs or excludes (declared by the
                 dataset: mode-centres for ring8 / grid25, stacked-digits for stacked-mnist)
    available    an optional runtime check (e.g. a classifier for this dataset exists)
    selectable   chosen with `--metrics` (sample metrics), else run whenever it applies
    optional     selectable, but left out of `--metrics auto` (extra cost, or a figure few need):
                 run when named, or with `--metrics all`
    cheap        fit for training hooks; `coverage` names the figure a hook watches for collapse
    compute      ctx -> {figure key: value, ...}; `ctx` (eval.context) computes the shared pieces --
                 one sampling + feature pass, the reference features, the test images -- once
`genlab eval`, `genlab diagnose`, the training hooks and `genlab compare` all iterate this registry,
so a new metric is one registration and a new family needs no edit here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .. import registry
from ..errors import GenlabError

DIRECTIONS = ("lower", "higher", "target", "info")
SECTIONS = ("eval", "diagnose")


@dataclass(frozen=True)
class Figure:
    key: str  # eval: the key in record["metrics"]; diagnose: "<measure>.<field>" of record["diagnostics"]
    label: str
    direction: str  # lower | higher | target (best = closest to `target`) | info (shown, never ranked)
    unit: str = ""
    target: float | None = None
    spread: str | None = None  # key of the figure shown as "± spread" beside this one
    aliases: tuple[str, ...] = ()  # spellings in older or foreign records that mean this figure
    fmt: Callable[[Any, dict], str] | None = None  # table text from (value, the record's section)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"figure {self.key!r}: direction must be one of {DIRECTIONS}")
        if self.direction == "target" and self.target is None:
            raise ValueError(f"figure {self.key!r}: direction 'target' needs a target value")

    @property
    def leaf(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def better(self, a: float, b: float) -> bool:
        """a strictly better than b (NaN is never better; +inf is the worst for 'lower')."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        if self.direction == "lower":
            return a < b
        if self.direction == "higher":
            return a > b
        if self.direction == "target":
            return abs(a - self.target) < abs(b - self.target)
        return False

    def text(self, value: Any, section: dict | None = None) -> str:
        if self.fmt is not None:
            return self.fmt(value, section or {})
        return f"{value:.5g}" if isinstance(value, float) else str(value)


@dataclass
class Measure:
    name: str
    section: str
    figures: tuple[Figure, ...]
    compute: Callable[[Any], dict]
    needs: frozenset[str] = frozenset()
    data: tuple[str, ...] = ("image",)
    traits: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    available: Callable[[Any], bool] | None = None
    selectable: bool = False
    optional: bool = False
    cheap: bool = False
    coverage: str | None = None
    uses_probs: bool = False  # needs the extractor's class probabilities of the samples (IS)
    default_n: int | None = None  # the published protocol's sample count (diagnostics)
    rows: Callable[[dict], list] | None = None  # table rows (label, text) from its section; else generic
    doc: str = ""

    def __post_init__(self):
        if self.section not in SECTIONS:
            raise ValueError(f"measure {self.name!r}: section must be one of {SECTIONS}")
        self.needs = frozenset(self.needs)

    def applies(self, info, capabilities: Iterable[str]) -> bool:
        """Declared fit: the family's capabilities, the data kind and traits, then `available`."""
        traits = set(getattr(info, "traits", ()) or ())
        if not self.needs <= set(capabilities) or info.kind not in self.data:
            return False
        if not set(self.traits) <= traits or traits & set(self.excludes):
            return False
        return self.available is None or bool(self.available(info))

    def table_rows(self, values: dict, section: dict | None = None) -> list[tuple[str, str]]:
        """(label, text) rows for the figures present in `values` (a record's metrics or its section)."""
        if self.rows is not None:
            return self.rows(values)
        out = []
        for f in self.figures:
            v = values.get(f.key.rsplit(".", 1)[-1] if self.section == "diagnose" else f.key)
            if v is None or f.direction == "info" or any(f.key == g.spread for g in self.figures):
                continue
            out.append((f.label, f.text(v, values)))
        return out

    def why_not(self, info, capabilities: Iterable[str]) -> str:
        """One line: why this measure does not apply (for errors)."""
        missing = sorted(self.needs - set(capabilities))
        if missing:
            return f"{self.name} needs a model that can {', '.join(missing)}"
        if info.kind not in self.data:
            return f"{self.name} applies to {' / '.join(self.data)} data, not {info.kind} data ({info.name})"
        return f"{self.name} does not apply to {info.name} data"


_ORDER: list[str] = []  # registration order = display order (modules register in a fixed import order)


def register_measure(m: Measure) -> Measure:
    keys = [f.key for f in m.figures]
    if len(set(keys)) != len(keys):
        raise ValueError(f"measure {m.name!r} declares a figure twice")
    registry.register("measure", m.name, m)
    _ORDER.append(m.name)
    return m


def measures(section: str | None = None) -> list[Measure]:
    """Registered measures (of one section), in registration order."""
    registry.available("measure")  # runs the loader on first use
    found = [registry.get("measure", n) for n in _ORDER]
    return [m for m in found if section is None or m.section == section]


def get_measure(name: str) -> Measure:
    return registry.get("measure", name)


def figures(section: str | None = None) -> list[Figure]:
    return [f for m in measures(section) for f in m.figures]


def find_figure(key: str, section: str | None = None) -> Figure | None:
    """The registered figure a record key stands for: its own key, a declared alias, or (for keys
    from other layouts) a figure whose leaf name is the key's leaf, when that leaf is unambiguous."""
    k = key.lower()
    pool = figures(section)
    for f in pool:
        if k == f.key.lower() or k in (a.lower() for a in f.aliases):
            return f
    leaf = k.rsplit(".", 1)[-1]
    by_leaf = [f for f in pool if leaf == f.leaf.lower() or leaf in (a.lower().rsplit(".", 1)[-1] for a in f.aliases)]
    directions = {f.direction for f in by_leaf}
    return by_leaf[0] if by_leaf and len(directions) == 1 else None


ALL = "all"


def select(section: str, info, capabilities, requested: Iterable[str] | str | None = None) -> list[Measure]:
    """The measures to run: every applicable non-selectable one, plus the `requested` selectable ones
    (each must apply; None: every applicable selectable one that is not optional; ALL: every
    applicable selectable one)."""
    pool = measures(section)
    if requested is None or requested == ALL:
        return [m for m in pool if m.applies(info, capabilities)
                and not (m.selectable and m.optional and requested is None)]
    out = []
    requested = list(requested)
    known = {m.name for m in pool if m.selectable}
    if requested is not None:
        bad = [r for r in requested if r not in known]
        if bad:
            raise GenlabError(f"unknown metric(s) {', '.join(bad)}; choose from {', '.join(sorted(known))} "
                              f"(comma-separated), all, or none")
    for m in pool:
        if m.selectable and m.name not in requested:
            continue
        if m.applies(info, capabilities):
            out.append(m)
        elif m.selectable:
            raise GenlabError(f"--metrics {m.name}: {m.why_not(info, capabilities)}{elsewhere_hint(section, info, capabilities)}")
    return out


def elsewhere_hint(section: str, info, capabilities) -> str:
    """'; for this run, `genlab diagnose` measures: mixture' when the other command has measures."""
    other = [m.name for s in SECTIONS if s != section for m in measures(s) if m.applies(info, capabilities)]
    command = {"eval": "genlab diagnose", "diagnose": "genlab eval"}[section]
    return f"; for this run `{command} RUN_DIR` measures: {', '.join(other)}" if other else ""

