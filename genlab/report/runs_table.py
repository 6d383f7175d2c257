"""Run directories -> one comparison table (the data model behind `genlab compare`).

Readers are tolerant on purpose: eval.json / diagnostics.json may hold one record (a dict) or a
list of records (the newest wins), metrics may be nested (``{"kid": {"mean": ..}}`` reads as
``kid_mean``), and anything missing is a blank, never an error. A directory that is not a run is
skipped with a warning.

Trust rule (DESIGN.md): FID and friends are only comparable on the same features, reference and
sample counts. Rows are therefore partitioned into *comparability groups* keyed by (dataset,
extractor, fingerprint, reference, n_real, n_fake); best values are chosen and sorting happens
within a group, and a group that differs from the first one says in what.
"""
from __future__ import annotations

import glob
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..eval.measures import figures, find_figure
from ..logger import read_metrics

# Containers whose name adds nothing to a metric's name: {"metrics": {"fid": 1}} -> "fid".
_CONTAINERS = {"metrics", "results", "values", "scores", "summary"}
# Where genlab's records keep what describes them (see eval/evaluate.py): record field -> column.
_INFO_FIELDS = {"extractor": "extractor", "fingerprint": "extractor_fingerprint", "ref": "ref_split",
                "ref_dataset": "ref_dataset", "n_real": "n_real", "n_fake": "n_fake", "checkpoint": "checkpoint",
                "eval_step": "step"}


# ------------------------------------------------------------------------------ data model
@dataclass
class Column:
    key: str
    label: str
    kind: str = "float"  # text | int | float | duration
    better: str | None = None  # lower | higher | target | None (not ranked)
    section: str = "run"  # run | eval | diag
    figure: Any = None  # the registered Figure behind a metric column (eval/measures.py)


@dataclass
class Run:
    name: str
    path: Path
    config: dict
    values: dict[str, Any] = field(default_factory=dict)  # column key -> value
    history: list[dict] = field(default_factory=list)
    sample: Path | None = None
    sample_step: int | None = None
    plots: list[Path] = field(default_factory=list)
    fid_inf_fit: tuple | None = None  # ([[n, FID(n)], ...], FID_inf, slope) from --metrics fid_inf


@dataclass
class Group:
    id: str
    key: tuple
    label: str
    rows: list[int]
    differs: list[str] = field(default_factory=list)  # fields that differ from group A
    best: dict[int, set[str]] = field(default_factory=dict)  # row -> column keys that are best


@dataclass
class Table:
    columns: list[Column]
    runs: list[Run]
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)

    def value(self, row: int, key: str):
        return self.runs[row].values.get(key)

    def is_best(self, row: int, key: str) -> bool:
        return any(key in g.best.get(row, ()) for g in self.groups)

    def group_of(self, row: int) -> Group:
        return next(g for g in self.groups if row in g.rows)


# ------------------------------------------------------------------------------ finding runs
def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def find_runs(patterns: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand globs; a directory without config.yaml is searched one level down for runs."""
    found: list[Path] = []
    warnings: list[str] = []
    for pattern in map(str, patterns):
        matches = [Path(pattern)] if Path(pattern).exists() or not glob.has_magic(pattern) else \
            [Path(p) for p in sorted(glob.glob(pattern))]
        if not matches or not matches[0].exists():
            warnings.append(f"skipped {pattern}: no such file or directory")
            continue
        for path in matches:
            if is_run_dir(path):
                found.append(path)
            elif path.is_dir():
                children = sorted(c for c in path.iterdir() if c.is_dir())
                runs = [c for c in children if is_run_dir(c)]
                if not runs:
                    warnings.append(f"skipped {path}: not a genlab run directory (no config.yaml, no runs inside)")
                    continue
                found.extend(runs)
                warnings += [f"skipped {c}: not a genlab run directory (no config.yaml)"
                             for c in children if not is_run_dir(c) and not c.name.startswith(".")]
            elif len(matches) == 1:  # a glob's stray files are noise; a file named explicitly is not
                warnings.append(f"skipped {path}: not a directory")
    unique, seen = [], set()
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique, warnings


# ------------------------------------------------------------------------------ tolerant readers
def read_json(path: Path, warnings: list[str] | None = None) -> Any:
    if not path.is_file():
        return None
    if not inside(path.parent, path):
        if warnings is not None:
            warnings.append(f"ignored {path}: a link to outside the run directory")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        if warnings is not None:
            warnings.append(f"ignored {path}: unreadable JSON ({str(e).splitlines()[0][:100]})")
        return None


def newest_record(obj: Any) -> dict:
    """A dict record, a list of records (newest wins), or {"records": [...]} -> one dict."""
    if isinstance(obj, dict) and isinstance(obj.get("records"), list):
        obj = obj["records"]
    if isinstance(obj, list):  # a run's real-vs-real floor (if one was stored there) is not its result
        records = [r for r in obj if isinstance(r, dict) and r.get("kind") != "real-vs-real"]
        if not records:
            return {}
        stamp = next((k for k in ("timestamp", "time", "created") if all(k in r for r in records)), None)
        if stamp is not None:
            try:
                return max(enumerate(records), key=lambda ir: (ir[1][stamp], ir[0]))[1]
            except TypeError:  # mixed stamp types: fall back to file order
                pass
        return records[-1]
    return obj if isinstance(obj, dict) else {}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": leaf}; leaves are numbers, strings, bools or None. Lists are dropped
    (histograms, per-split values), except lists of strings (e.g. plot paths), kept as lists."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        if obj and all(isinstance(v, str) for v in obj):
            out[prefix[:-1]] = list(obj)
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def _norm(key: str) -> str:
    parts = [p for p in key.lower().split(".") if p not in _CONTAINERS] or [key.lower()]
    return re.sub(r"[^a-z0-9.]+", "_", ".".join(parts)).strip("_")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_eval(run_dir: Path, warnings: list[str] | None = None) -> tuple[dict, dict]:
    """RUN_DIR/eval.json -> (metrics {figure key: number}, info {extractor, n_fake, ...}).

    Values are the registered evaluation figures (eval/measures.py), found by key or declared alias
    wherever the record keeps them (genlab's `metrics` mapping, or a flat / nested layout)."""
    from ..eval.measures import find_figure

    record = newest_record(read_json(run_dir / "eval.json", warnings))
    info = {name: record.get(field) for name, field in _INFO_FIELDS.items() if record.get(field) is not None}
    if isinstance(record.get("precision"), str):  # what genlab sampled in; a number is a flat layout's metric
        info["sampled_in"] = record["precision"]
    fit = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    if isinstance(fit.get("fid_inf_points"), list) and _is_number(fit.get("fid_inf")):
        try:
            points = [[float(n), float(v)] for n, v in fit["fid_inf_points"]]
            info["fid_inf_fit"] = (points, float(fit["fid_inf"]), float(fit.get("fid_inf_slope") or 0.0))
        except (TypeError, ValueError):
            pass  # a foreign layout: the number still shows, the plot does not
    metrics = {}
    for key, v in flatten(record).items():
        k = _norm(key)
        fig = (find_figure(k, "eval") or find_figure(k.replace(".", "_"), "eval")) if _is_number(v) else None
        if fig is not None and not (key in _INFO_FIELDS.values()):
            metrics.setdefault(fig.key, v)
    return metrics, info


def read_diagnostics(run_dir: Path, warnings: list[str] | None = None) -> tuple[dict, dict, list[Path]]:
    """RUN_DIR/diagnostics.json -> ({"<section>.<field>": number} of registered diagnostic figures,
    info {n}, plot paths). Keys keep the record's own section name (an older "class_coverage" stays
    one); the figure, found by key or alias, gives its label and direction."""
    from ..eval.measures import find_figure

    record = newest_record(read_json(run_dir / "diagnostics.json", warnings))
    values, plots = {}, []
    for key, v in flatten(record).items():
        key = _norm(key.removeprefix("diagnostics."))
        if isinstance(v, (str, list)):
            plots += [run_dir / p for p in ([v] if isinstance(v, str) else v) if str(p).lower().endswith(".png")]
        elif _is_number(v) and "." in key and find_figure(key, "diagnose") is not None:
            values[key] = v
    # genlab writes the sample count at the top; older records kept it in each section
    ns = [v for k, v in flatten(record).items() if k.rsplit(".", 1)[-1] == "n" and _is_number(v)]
    info = {"n": record["n"] if _is_number(record.get("n")) else ns[0]} if ns else {}
    return values, info, plots


def logged_diagnostics(history: list[dict]) -> tuple[dict, dict]:
    """The newest `diagnose/*` figures the training hook logged (a run never passed to `genlab
    diagnose` -- e.g. every 2-D run, which is diagnosed at its last step) -> (values, {"step": s})."""
    from ..eval.measures import find_figure

    for rec in reversed(history):
        values = {}
        for k, v in rec.items():
            fig = find_figure(k.removeprefix("diagnose/"), "diagnose") if k.startswith("diagnose/") else None
            if fig is not None and "." in fig.key and _is_number(v):
                values[fig.key] = v
        if values:
            return values, {"logged_step": rec.get("step")}
    return {}, {}


def direction(key: str) -> str | None:
    """How a column's figure improves: "lower" | "higher" | "target" -- from the measure registry
    (None: not a registered figure, or one shown but never ranked)."""
    from ..eval.measures import find_figure

    fig = find_figure(_norm(key))
    return None if fig is None or fig.direction == "info" else fig.direction


# ------------------------------------------------------------------------------ one run
def read_run(run_dir: Path, warnings: list[str] | None = None) -> Run:
    from .. import checkpoint
    from ..errors import GenlabError

    warnings = [] if warnings is None else warnings
    try:
        if not inside(run_dir, run_dir / "config.yaml"):
            raise OSError("a link to outside the run directory")
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        warnings.append(f"{run_dir}: unreadable config.yaml ({str(e).splitlines()[0][:100]})")
        config = {}
    config = config if isinstance(config, dict) else {}
    history = read_metrics(run_dir) if inside(run_dir, run_dir / "metrics.jsonl") else []
    step, wall = None, None
    if (run_dir / "checkpoints" / "last.pt").is_file():
        try:
            ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
            step, wall = ckpt.get("step"), ckpt.get("wall_time")
        except GenlabError as e:
            warnings.append(f"{run_dir}: {e}")
    logged = [r["step"] for r in history if _is_number(r.get("step"))]
    if logged and (step is None or max(logged) > step):
        step = max(logged)
    data, train, resolved = config.get("data") or {}, config.get("train") or {}, config.get("resolved")
    values: dict[str, Any] = {
        "run": run_dir.name, "model": config.get("model") or None, "family": config.get("family") or None,
        "dataset": _dataset_label(data), "steps": step,
        "planned_steps": train.get("steps") if isinstance(train, dict) else None,
        "wall_time_s": float(wall) if _is_number(wall) else None,
        # what it trained in (config.yaml's resolved:): bf16 and float32 runs of one model differ a little
        "trained_in": resolved.get("precision") if isinstance(resolved, dict) else None}
    metrics, info = read_eval(run_dir, warnings)
    values.update({"extractor": info.get("extractor"), "fingerprint": info.get("fingerprint"),
                   "ref": _ref_label(info), "n_fake": info.get("n_fake"), "n_real": info.get("n_real"),
                   "eval_checkpoint": info.get("checkpoint"), "eval_step": info.get("eval_step"),
                   "sampled_in": info.get("sampled_in")})
    values.update(metrics)
    diag, dinfo, plots = read_diagnostics(run_dir, warnings)
    if not diag:
        diag, dinfo = logged_diagnostics(history)
    values["diag_n"] = dinfo.get("n")
    values.update({f"diag.{k}": v for k, v in diag.items()})
    sample, sample_step = latest_sample(run_dir)
    plots += sorted(run_dir.glob("*.png")) + sorted((run_dir / "diagnostics").glob("*.png"))
    # never embed files from outside the run (diagnostics.json names them; a symlink may point away)
    plots = list(dict.fromkeys(p for p in plots if inside(run_dir, p)))
    return Run(run_dir.name, run_dir, config, values, history, sample, sample_step, plots, info.get("fid_inf_fit"))


def _dataset_label(data) -> str | None:
    """The data a run modelled: binarized MNIST is another dataset for every metric (FID against
    binarized references, NLL in a different space), so it must not share a comparability group."""
    if not isinstance(data, dict) or data.get("name") is None:
        return None
    return f"{data['name']} (binarized)" if data.get("binarize") else str(data["name"])


def _ref_label(info: dict) -> str | None:
    ref, ds = info.get("ref"), info.get("ref_dataset")
    if ref is not None and ds is not None and str(ds) not in str(ref):
        return f"{ds}/{ref}"
    return None if ref is None and ds is None else str(ref if ref is not None else ds)


def inside(run_dir: Path, path: Path) -> bool:
    """`path` is a real file whose resolved location is inside the run (no symlink out of it)."""
    try:
        return path.is_file() and path.resolve().is_relative_to(run_dir.resolve())
    except OSError:
        return False


def latest_sample(run_dir: Path) -> tuple[Path | None, int | None]:
    """The newest samples/step-N.png of the run, never a file a symlink leads outside the run to."""
    best = None
    for p in (run_dir / "samples").glob("step-*.png"):
        m = re.fullmatch(r"step-(\d+)\.png", p.name)
        if m and inside(run_dir, p) and (best is None or int(m.group(1)) > best[1]):
            best = (p, int(m.group(1)))
    return best if best else (None, None)


# ------------------------------------------------------------------------------ the table
# What a run is, then (after the metrics) how it was evaluated: extractor and n lead, details trail.
LEAD_COLUMNS = [Column("run", "run", "text"), Column("model", "model", "text"), Column("family", "family", "text"),
                Column("dataset", "dataset", "text"), Column("steps", "steps", "int"),
                Column("wall_time_s", "wall time", "duration"), Column("trained_in", "trained in", "text"),
                Column("extractor", "extractor", "text"),
                Column("n_fake", "n fake", "int"), Column("n_real", "n real", "int")]
TRAIL_COLUMNS = [Column("ref", "ref", "text"), Column("fingerprint", "fingerprint", "text"),
                 Column("eval_checkpoint", "eval ckpt", "text"), Column("eval_step", "eval step", "int"),
                 Column("sampled_in", "sampled in", "text")]
RUN_COLUMNS = LEAD_COLUMNS + TRAIL_COLUMNS
_GROUP_FIELDS = ("dataset", "extractor", "fingerprint", "ref", "n_real", "n_fake")


def build_table(run_dirs: Iterable[Path], sort: str | None = None, warnings: list[str] | None = None) -> Table:
    warnings = [] if warnings is None else warnings
    runs = [read_run(Path(d), warnings) for d in run_dirs]
    _unique_names(runs)
    present = {k for r in runs for k, v in r.values.items() if v is not None}
    columns = [c for c in LEAD_COLUMNS if c.key in present or c.key in ("run", "steps", "wall_time_s")]
    # every registered evaluation figure present, in the registry's order, with its label and direction
    columns += [_metric_column(f.key, f, f.label, "eval") for f in figures("eval") if f.key in present]
    if "diag_n" in present:
        columns.append(Column("diag_n", "diag n", "int", None, "diag"))
    diag = [k for k in dict.fromkeys(k for r in runs for k in r.values if k.startswith("diag.")) if k in present]
    for k in diag:
        fig = find_figure(k[len("diag."):], "diagnose")
        columns.append(_metric_column(k, fig, f"{k.split('.')[1]}: {fig.label}", "diag"))
    columns += [c for c in TRAIL_COLUMNS if c.key in present]
    table = Table(columns, runs, _groups(runs), warnings)
    for g in table.groups:
        g.best = _best(table, g)
    if sort:
        sort_rows(table, sort)
    return table


def _metric_column(key: str, fig, label: str, section: str) -> Column:
    better = None if fig.direction == "info" else fig.direction
    return Column(key, label, "float", better, section, fig)


def _unique_names(runs: list[Run]) -> None:
    """Two runs called `x` in different parents are shown as `a/x` and `b/x`."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"
            r.values["run"] = r.name


def _groups(runs: list[Run]) -> list[Group]:
    by_key: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        by_key.setdefault(tuple(r.values.get(f) for f in _GROUP_FIELDS), []).append(i)
    # Largest group first (ties: first seen); runs without an eval record after those with one.
    order = sorted(by_key.items(), key=lambda kv: (kv[0][1] is None and kv[0][5] is None, -len(kv[1])))
    groups = []
    for n, (key, rows) in enumerate(order):
        gid = chr(ord("A") + n) if n < 26 else f"G{n + 1}"
        fields = dict(zip(_GROUP_FIELDS, key))
        evaluated = fields["extractor"] is not None or fields["n_fake"] is not None
        differs = [f for f in _GROUP_FIELDS if n and fields[f] != order[0][0][_GROUP_FIELDS.index(f)]
                   and (evaluated or f == "dataset")]  # without eval.json only the data can differ
        groups.append(Group(gid, key, _group_label(fields), rows, differs))
    return groups


def _group_label(f: dict) -> str:
    parts = [f"dataset {f['dataset']}" if f["dataset"] is not None else "dataset ?"]
    if f["extractor"] is None and f["n_fake"] is None:
        return ", ".join(parts + ["no sample-metric evaluation (FID etc. blank)"])
    fp = f" (fingerprint {str(f['fingerprint'])[:12]})" if f["fingerprint"] else ""
    parts += [f"extractor {f['extractor'] or '?'}{fp}", f"ref {f['ref'] or '?'}",
              f"n_fake {_fmt_int(f['n_fake'])}", f"n_real {_fmt_int(f['n_real'])}"]
    return ", ".join(parts)


def _fmt_int(v) -> str:
    return "?" if v is None else f"{int(v):,}" if _is_number(v) and float(v).is_integer() else str(v)


def _best(table: Table, group: Group) -> dict[int, set[str]]:
    """Per row, the metric columns where it is best within its group (by the figure's direction)."""
    best: dict[int, set[str]] = {}
    for col in table.columns:
        if col.better is None:
            continue
        vals = [(i, table.value(i, col.key)) for i in group.rows]
        vals = [(i, float(v)) for i, v in vals if _is_number(v) and not math.isnan(v)]  # inf KL: the worst
        if len(vals) < 2 or len({v for _, v in vals}) < 2:  # one value or all equal: nothing to single out
            continue
        top = vals[0][1]
        for _, v in vals[1:]:
            top = v if col.figure.better(v, top) else top
        for i, v in vals:
            if not col.figure.better(top, v):  # ties with the best are best too
                best.setdefault(i, set()).add(col.key)
    return best


def resolve_column(table: Table, name: str) -> Column:
    """`--sort` accepts a column key or label (any case), a diagnostics leaf (reverse_kl), or an
    unambiguous prefix (kid -> kid_mean)."""
    from ..errors import GenlabError

    want = name.strip().lower()
    keys = [(c, c.key.lower(), c.label.lower()) for c in table.columns]
    for match in (lambda k, lab: want in (k, lab, _norm(k)),
                  lambda k, lab: k.endswith("." + want),
                  lambda k, lab: k.startswith(want) or lab.startswith(want)):
        found = [c for c, k, lab in keys if match(k, lab)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise GenlabError(f"--sort {name!r} is ambiguous: {', '.join(c.key for c in found)}")
    raise GenlabError(f"cannot sort by {name!r}: no such column (choose from: "
                      f"{', '.join(c.key for c in table.columns)})")


def sort_rows(table: Table, name: str) -> Column:
    """Sort rows within each comparability group: best first for metrics, blanks last."""
    col = resolve_column(table, name)
    descending = col.better == "higher"

    def key(i: int):
        v = table.value(i, col.key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0, "")
        if _is_number(v):
            if col.better == "target":
                return (0, abs(v - col.figure.target), "")
            return (0, -v if descending else v, "")
        return (0, 0, str(v).lower())

    for g in table.groups:
        g.rows.sort(key=key)
    return col


def row_order(table: Table) -> list[int]:
    return [i for g in table.groups for i in g.rows]
