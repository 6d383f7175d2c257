"""`genlab eval`: the evaluation measures that apply to a run, from one shared context -> one record.

    record = evaluate(load_run(run_dir), n=10000)                 # every applicable measure
    record = evaluate(run, n=2000, metrics="fid,kid")             # chosen sample metrics (+ the automatic ones)

Which measures run is the registry's answer for the run's family capabilities and data
(eval/measures.py): the sample metrics (FID, KID, IS, PR, DC) for families that `sample`, chosen with
`metrics`; NLL / bits/dim for those with `log_likelihood`; reconstruction error for `reconstruct`;
the translation figures for `translate`. Sample metrics share ONE sampling + feature pass (samples
are dropped after feature extraction: 50k samples cost 50k x 128 floats with genlab-mnist, 25 MB),
computed against the cached reference features of real data (eval/context.py, eval/passes.py).
Under torchrun the passes are sharded over the ranks and every figure is the same on 1 or N ranks.

A record is self-describing (DESIGN.md): metrics, extractor name + fingerprint, reference dataset /
split / n_real, n_fake, seed, checkpoint, step, timestamp, genlab version. `RUN_DIR/eval.json` is a
JSON list of records, newest last, appended under a lock (genlab.records).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

from .. import __version__, records
from ..config import DataConfig
from ..errors import GenlabError
from .context import EvalContext, _on, stderr, without_probs
from .features import get_extractor, resolve_extractor
from .measures import ALL, elsewhere_hint, measures, select
from .metrics import compute_all
from .passes import batch_seed, likelihood, reconstruction, sample_features  # noqa: F401  (public API)
from .reference import describe, get_reference, load_real

EVAL_FILE = "eval.json"


def parse_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...] | str | None:
    """'fid,kid' -> ('fid', 'kid'); 'auto' -> None (every one that applies, optional ones aside);
    'all' -> measures.ALL (optional ones too, e.g. fid_inf, cmmd); 'none' -> ()."""
    if metrics is None:
        return None
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    items = [m for m in items if m]
    if not items:
        raise GenlabError("--metrics is empty; name some (e.g. fid,kid), or auto, all, none")
    if items == ["auto"]:
        return None
    if items == ["all"]:
        return ALL
    if items == ["none"]:  # likelihood / reconstruction only, no sampling
        return ()
    return tuple(dict.fromkeys(items))


def evaluate(run, n: int = 10000, metrics: str | Sequence[str] | None = "auto", features: str = "auto",
             ref: str = "test", batch_size: int = 500, seed: int = 0, n_boot: int = 0,
             extractor=None, reference=None, log: Callable[[str], None] = stderr,
             n_test: int | None = None, sample_options: dict | None = None) -> dict:
    """Evaluate a LoadedRun (see genlab.runs.load_run) -> a self-describing record (a dict).

    n samples feed the sample metrics; n_test real `ref` images (default n) feed NLL / reconstruction
    -- separate, because drawing a PixelCNN sample costs thousands of forward passes and an IWAE
    estimate k of them per test image. `sample_options` are the family's declared sampling options
    (e.g. {"temperature": 0.7})."""
    caps = run.family.capabilities
    chosen = select("eval", run.info, caps, parse_metrics(metrics))
    if not chosen:
        raise GenlabError(f"nothing to measure: {run.cfg.model} on {run.info.name} has no applicable measure "
                          f"for --metrics {metrics}{elsewhere_hint('eval', run.info, caps)}")
    ctx = EvalContext(run, n, seed, batch_size, features, ref, n_boot, n_test, extractor, reference, log,
                      sample_options=sample_options)
    ctx.sample_metric_names = tuple(m.name for m in chosen if m.selectable)
    ctx.want_probs = any(m.uses_probs for m in chosen)
    if n_boot and "fid" not in ctx.sample_metric_names:
        raise GenlabError("--bootstrap asks for a FID interval, but FID is not among the metrics")
    values: dict = {}
    for m in chosen:
        values.update(m.compute(ctx))
    kind = "translation" if any("translate" in m.needs for m in chosen) else "samples"
    head = {"kind": kind, "model": run.cfg.model, "family": run.cfg.family, "dataset": run.info.name,
            "checkpoint": run.checkpoint, "step": run.step, "metrics": values}
    if sample_options:
        head["sample_options"] = dict(sample_options)
    return {**head, **ctx.record, "seed": seed, "timestamp": records.now(), "genlab_version": __version__,
            "seconds": ctx.seconds}


def real_vs_real(dataset: str, n: int = 10000, metrics: str | Sequence[str] | None = "auto",
                 features: str = "auto", batch_size: int = 500, seed: int = 0, n_boot: int = 0,
                 data_root: str = "", device: str = "cpu", log: Callable[[str], None] = stderr) -> dict:
    """The floor of every metric: a train subset (playing 'generated') against the test split, equal n.

    The two sets are disjoint real images, so FID/KID here is the value a perfect model would get at
    this n; read generated-sample numbers against it."""
    requested = parse_metrics(metrics)
    names = tuple(m.name for m in measures("eval") if m.selectable and (
        requested == ALL or (requested is None and not m.optional) or (requested not in (None, ALL) and m.name in requested)))
    bad = set(requested if requested not in (None, ALL) else ()) - set(names)
    if bad or not names:
        raise GenlabError(f"unknown metric(s) {', '.join(sorted(bad)) or '(none given)'} for --real-vs-real; choose "
                          f"from {', '.join(m.name for m in measures('eval') if m.selectable)}")
    data_cfg = DataConfig(name=dataset, root=data_root)
    _, info = load_real(data_cfg, "test", 2)
    name, picked = resolve_extractor(features, info)
    ext = get_extractor(name, device)
    if not ext.num_classes:  # DINOv2, CLIP: no classifier, so no IS
        names = without_probs(names, ext, log)
    t0 = time.perf_counter()
    test = get_reference(data_cfg, "test", n, ext, batch_size=batch_size, log=log)
    train = get_reference(data_cfg, "train", test.n, ext, seed=seed, batch_size=batch_size, log=log)
    t_feat = time.perf_counter()
    values = compute_all(*_on(device, test.features, train.features, train.probs), names, n_boot=n_boot,
                         seed=seed)
    return {
        "kind": "real-vs-real", "dataset": dataset, "metrics": values,
        "extractor": ext.name, "extractor_fingerprint": ext.fingerprint, "extractor_auto": picked,
        **describe(test), "fake": f"{dataset} train subset (seed {seed})", "n_fake": train.n,
        "seed": seed, "n_boot": n_boot, "timestamp": records.now(), "genlab_version": __version__,
        "seconds": {"features": round(t_feat - t0, 2), "metrics": round(time.perf_counter() - t_feat, 2)},
        "reference_cache": f"test {test.status}, train {train.status}",
    }


# ----------------------------------------------------------------------------- records
def read_records(run_dir: str | Path) -> list[dict]:
    return records.read_records(Path(run_dir) / EVAL_FILE)


def append_record(run_dir: str | Path, record: dict) -> Path:
    """Append `record` to RUN_DIR/eval.json (a list, newest last), atomically and under a lock."""
    return records.append_record(Path(run_dir) / EVAL_FILE, record)


def log_tensorboard(run_dir: str | Path, record: dict) -> None:
    """Scalars under eval_n<N>/ in RUN_DIR/tb (one tag family per n: FID is only comparable at equal n)."""
    from torch.utils.tensorboard import SummaryWriter

    m = record["metrics"]
    n = record.get("n_fake") or m.get("n_nll") or m.get("n_recon", 0)
    writer = SummaryWriter(str(Path(run_dir) / "tb"))
    try:
        for k, v in m.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(f"eval_n{n}/{k}", v, record.get("step", 0))
    finally:
        writer.close()


def format_table(record: dict) -> str:
    """The metrics of a record as an aligned two-column table, one row per registered figure present."""
    rows = [row for m in measures("eval") for row in m.table_rows(record["metrics"])]
    width = max((len(r[0]) for r in rows), default=6)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)

