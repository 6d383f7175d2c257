"""`genlab eval --fake PATH`: score samples from anywhere with the same extractors, reference cache,
metrics and record format as runs.

    record = evaluate_file("adm_samples.npz", ref="mnist", n=10000)
    save_imported(Path("runs/adm"), record, source)     # an eval-only run directory for compare

The file is read in the batches a run's own sample pass uses (eval/passes.source_features), so
samples exported with `genlab sample --format npz|folder` and scored here give exactly the figures
of `genlab eval RUN` at the same n, seed and batch size: the extractor sees the same uint8 images.
Only sample measures apply (a file has no likelihood, no reconstructions). The record is a run's
record with `kind: imported-samples` and `fake: {path, name, format, sha256, n_in_file, made_by}`.

An eval-only run directory holds config.yaml (`family: imported`, the file named), eval.json and a
grid of the file's first 64 images as samples/step-0.png, so `genlab compare` shows it beside
trained runs with no special case.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import yaml

from .. import __version__, records
from ..config import DataConfig
from ..errors import GenlabError
from ..samplefiles import open_samples
from .context import EvalContext, stderr
from .measures import select

IMPORTED_FAMILY = "imported"
SPLITS = ("train", "test")


def parse_ref(ref: str, source) -> tuple[str, str]:
    """--ref with --fake: DATASET, DATASET:SPLIT or a bare split; the dataset defaults to the one a
    genlab export names, else MNIST for 1x28x28 images."""
    dataset, _, split = ref.partition(":") if ref not in SPLITS else ("", "", ref)
    split = split or "test"
    if split not in SPLITS:
        raise GenlabError(f"--ref {ref!r}: the split must be train or test")
    if not dataset:
        dataset = source.meta.get("dataset") or ("mnist" if tuple(source.shape) == (1, 28, 28) else "")
    if not dataset:
        raise GenlabError(f"{source.path}: {'x'.join(map(str, source.shape))} samples; say which data they "
                          f"model with --ref DATASET (e.g. --ref cifar10)")
    return dataset, split


class ImportedRun:
    """What the evaluation measures need of a run, for samples read from a file."""

    def __init__(self, source, data_cfg: DataConfig, info, device):
        self.family = SimpleNamespace(capabilities=frozenset({"sample"}), device=device, eval_n_test=None)
        self.info, self.source = info, source
        self.cfg = SimpleNamespace(data=data_cfg, model=f"file:{source.path.name}", family=IMPORTED_FAMILY)
        self.step, self.checkpoint, self.run_dir = None, None, None

    def sampling(self):
        return contextlib.nullcontext()


def evaluate_file(path: str | Path, n: int | None = None, metrics="auto", features: str = "auto",
                  ref: str = "test", batch_size: int = 500, seed: int = 0, n_boot: int = 0,
                  device: str = "cpu", data_root: str = "", log: Callable[[str], None] = stderr) -> tuple[dict, object]:
    """Score the first n images of a sample file (all of them when n is None) -> (record, source)."""
    from .evaluate import parse_metrics
    from .reference import load_real

    source = open_samples(path)
    dataset, split = parse_ref(ref, source)
    data_cfg = DataConfig(name=dataset, root=data_root)
    _, info = load_real(data_cfg, split, 2)
    if tuple(source.shape) != tuple(info.shape):
        raise GenlabError(f"{source.path}: samples are {'x'.join(map(str, source.shape))}, {dataset} images "
                          f"{'x'.join(map(str, info.shape))}; pass --ref with the dataset they model")
    n = source.n if n is None else n
    run = ImportedRun(source, data_cfg, info, device)
    chosen = select("eval", info, run.family.capabilities, parse_metrics(metrics))
    if not chosen:
        raise GenlabError("nothing to measure: choose sample metrics with --metrics (e.g. fid,kid)")
    ctx = EvalContext(run, n, seed, batch_size, features, split, n_boot, None, log=log, source=source)
    ctx.sample_metric_names = tuple(m.name for m in chosen if m.selectable)
    ctx.want_probs = any(m.uses_probs for m in chosen)
    values: dict = {}
    for m in chosen:
        values.update(m.compute(ctx))
    record = {"kind": "imported-samples", "model": run.cfg.model, "family": IMPORTED_FAMILY, "dataset": dataset,
              "checkpoint": None, "step": None, "metrics": values, "fake": source.describe(), **ctx.record,
              "seed": seed, "batch_size": batch_size, "timestamp": records.now(), "genlab_version": __version__,
              "seconds": ctx.seconds}
    return record, source


def check_run_dir(run_dir: Path) -> bool:
    """Can `run_dir` keep imported-sample records? True if it already does, False if it is new;
    a one-line error for a trained run or a directory of other files (checked before evaluating)."""
    from ..rundir import check_name

    check_name(run_dir.name)
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            family = (yaml.safe_load(config.read_text()) or {}).get("family")
        except (yaml.YAMLError, AttributeError):
            family = "unknown"
        if family != IMPORTED_FAMILY:
            raise GenlabError(f"{run_dir} is a trained run ({family} family); give --run-dir a new directory "
                              f"for imported samples")
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise GenlabError(f"{run_dir} exists and is not an eval-only run directory; choose another --run-dir")
    if not run_dir.parent.is_dir():
        raise GenlabError(f"{run_dir.parent} does not exist; create it first")
    return False


def save_imported(run_dir: Path, record: dict, source) -> Path:
    """Append `record` to an eval-only run directory (created on first use) that compare reads."""
    from ..report.plots import save_samples
    from .evaluate import append_record
    from .reference import load_real

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not check_run_dir(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        fake = record["fake"]
        config.write_text(yaml.safe_dump({
            "model": record["model"], "family": IMPORTED_FAMILY, "data": {"name": record["dataset"]},
            "description": f"samples imported from {fake['path']} (sha256 {fake['sha256'][:16]})",
            "imported": {k: fake[k] for k in ("path", "format", "sha256", "n_in_file")}}, sort_keys=False))
        _, info = load_real(DataConfig(name=record["dataset"]), "test", 2)
        grid = source.read(0, min(64, source.n)).float() / 255
        save_samples(grid, info, run_dir / "samples" / "step-0.png", title=record["model"])
    return append_record(run_dir, record)
