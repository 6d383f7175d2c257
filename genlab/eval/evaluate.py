"""One sampler -> one feature pass -> every metric, for any family (it needs only `sample`).

    record = evaluate(load_run(run_dir), n=10000, metrics=("fid", "kid", "is", "pr", "dc"))

Samples are drawn in batches, batch i from its own CPU generator seeded by (seed, i), pushed through
the extractor at once and dropped: only features (n x d float32) and class probabilities are kept,
so 50k samples cost 50k x 128 floats with genlab-mnist (25 MB), not 50k images. Every metric then
comes from `metrics.compute_all` on those features and the cached reference features of real data.

Under torchrun the batches are dealt out to the ranks (batch i to rank i mod world size) and the
features gathered in batch order; since every batch has its own seed, the samples -- and so every
metric at a given n, batch size and seed -- are the same on 1 or N ranks. Likelihood and
reconstruction passes are sharded the same way. Rank 0 computes the metrics; every rank returns
the record.

A record is self-describing (DESIGN.md): metrics, extractor name + fingerprint, reference dataset /
split / n_real, n_fake, seed, checkpoint, step, timestamp, genlab version. Families with
`log_likelihood(x)` (nats per example, x a uint8 batch as in training) also get NLL and bits/dim on
the reference split; families with `reconstruct(x)` (VAE, VQ-VAE) get its MSE per pixel there.
`RUN_DIR/eval.json` is a JSON list of records, newest last.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import __version__, parallel
from ..config import DataConfig
from ..errors import GenlabError
from ..families.base import bits_per_dim
from .features import Extractor, get_extractor, resolve_extractor
from .metrics import ALL_METRICS, compute_all
from .reference import BINARIZATION, Reference, _stderr, data_config_for, describe, get_reference, load_real

EVAL_FILE = "eval.json"


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """'fid,kid' or ['fid', 'kid'] -> ('fid', 'kid'), checked against the known metrics."""
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    items = [m for m in items if m]
    if items == ["all"]:
        return ALL_METRICS
    if items == ["none"]:  # likelihood / reconstruction only, no sampling
        return ()
    bad = [m for m in items if m not in ALL_METRICS]
    if bad or not items:
        raise GenlabError(f"unknown metric(s) {', '.join(bad) or '(none given)'}; choose from "
                          f"{', '.join(ALL_METRICS)} (comma-separated), all, or none")
    return tuple(dict.fromkeys(items))


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index` of a seeded pass: independent streams, so any rank can draw any batch."""
    digest = hashlib.blake2b(f"genlab:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sharded_map(fn: Callable[[int, int, int], object], n: int, batch_size: int, desc: str) -> list:
    """[fn(index, start, size) for every batch of n items], computed batch i on rank i mod world size
    and gathered in batch order on every rank (in one process: simply the list)."""
    w = parallel.world()
    starts = list(range(0, n, batch_size))
    mine = []
    for i in progress(starts[w.rank::w.size], n, batch_size * w.size, desc):
        index = i // batch_size
        mine.append((index, fn(index, i, min(batch_size, n - i))))
    gathered = [item for part in parallel.all_gather_objects(mine) for item in part]
    return [payload for _, payload in sorted(gathered, key=lambda item: item[0])]


def sample_features(sample: Callable[[int, torch.Generator], Tensor], n: int, extractor: Extractor,
                    batch_size: int, seed: int, shape: tuple, keep_probs: bool = True) -> tuple[Tensor, Tensor | None]:
    """Draw n samples in batches from `sample(k, generator)` and keep only their features / probs."""
    if n < 2:
        raise GenlabError(f"--n must be at least 2, got {n}")
    if batch_size < 1:
        raise GenlabError(f"--batch-size must be positive, got {batch_size}")

    def one(index: int, start: int, size: int):
        x = sample(size, torch.Generator().manual_seed(batch_seed(seed, index)))
        if tuple(x.shape[1:]) != tuple(shape):
            raise GenlabError(f"samples have shape {tuple(x.shape[1:])}, the data {tuple(shape)}")
        f, p = extractor.features_and_probs(x)
        return f.cpu(), (p.cpu() if keep_probs else None)

    parts = sharded_map(one, n, batch_size, "sampling")
    feats = torch.cat([f for f, _ in parts])
    return feats, (torch.cat([p for _, p in parts]) if keep_probs else None)


def progress(chunks, total: int, step: int, desc: str):
    """Iterate over chunk starts with a progress bar in images (on a terminal, on rank 0 only);
    `step` is how many images each chunk stands for (all ranks' batches together)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="img", disable=None if parallel.is_main() else True, leave=False) as bar:
        for i in chunks:
            yield i
            bar.update(min(step, total - i))


def scored_images(data_cfg: DataConfig, split: str, n: int) -> tuple[Tensor, dict]:
    """Real `split` images (uint8, as `train_step` gets them) for likelihood / reconstruction scores.

    For binarized data `load_real` already returns ONE fixed, seeded Bernoulli draw of the real images
    (the usual protocol for dynamically binarized MNIST), so every evaluation sees the same bits; the
    record names that draw."""
    images, info = load_real(data_cfg, split, n)
    return images, ({"nll_binarization": BINARIZATION} if info.binarized else {})


def likelihood(family, images: Tensor, batch_size: int, seed: int = 0) -> dict[str, float]:
    """NLL = -mean log p(x) (nats per image) and bits/dim = NLL / (D ln 2) on real uint8 images.

    `family.log_likelihood(x)` gets uint8 batches exactly as `train_step` does (the family applies its
    own dequantisation / binarisation) and returns log p(x) in nats, one value per image. Each batch
    runs with the global RNG seeded by (seed, batch), so stochastic estimates (IWAE) repeat exactly,
    on any number of ranks."""
    device = getattr(family, "device", "cpu")

    def one(index: int, start: int, size: int) -> Tensor:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(batch_seed(seed, index))
            logp = family.log_likelihood(images[start:start + size].to(device))
        return torch.as_tensor(logp).double().cpu().reshape(-1)

    logp = torch.cat(sharded_map(one, len(images), batch_size, "log-likelihood"))
    if logp.shape[0] != len(images) or not torch.isfinite(logp).all():
        raise GenlabError(f"log_likelihood returned {logp.shape[0]} values for {len(images)} images "
                          f"({(~torch.isfinite(logp)).sum().item()} non-finite)")
    nll = -logp.mean().item()
    dims = math.prod(images.shape[1:])
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, dims), "n_nll": len(images)}


def reconstruction(family, images: Tensor, batch_size: int) -> dict[str, float]:
    """Mean squared error per pixel, on the [0, 1] scale, of `family.reconstruct` on real images."""
    device = getattr(family, "device", "cpu")

    def one(index: int, start: int, size: int) -> float:
        x = images[start:start + size]
        with torch.no_grad():
            return (family.reconstruct(x.to(device)).float().cpu() - x.float() / 255).pow(2).double().sum().item()

    se = sum(sharded_map(one, len(images), batch_size, "reconstruction"))
    return {"recon_mse": se / images.numel(), "n_recon": len(images)}


def evaluate(run, n: int = 10000, metrics: str | Sequence[str] = ALL_METRICS, features: str = "auto",
             ref: str = "test", batch_size: int = 500, seed: int = 0, n_boot: int = 0,
             extractor: Extractor | None = None, reference: Reference | None = None,
             log: Callable[[str], None] = _stderr, n_test: int | None = None) -> dict:
    """Evaluate a LoadedRun (see genlab.runs.load_run) -> a self-describing record (a dict).

    n samples feed the sample metrics (`metrics`; "none" skips sampling); n_test real `ref` images
    (default n) feed NLL / reconstruction for families that have them -- separate, because drawing a
    PixelCNN sample costs thousands of forward passes and an IWAE estimate k of them per test image.

    Families that translate between two domains (CycleGAN) have no unconditional samples to compare
    with one reference; they get their own record (cycle / identity error, per-direction FID, label
    preservation) from `cyclegan_metrics`, on the same extractors."""
    if hasattr(run.family, "translate"):
        from .cyclegan_metrics import cyclegan_metrics

        # not sharded: rank 0 measures, the others get its record
        return parallel.on_main(cyclegan_metrics, run, n=n, seed=seed, extractor=extractor, features=features)
    metrics = parse_metrics(metrics)
    scores_test = hasattr(run.family, "log_likelihood") or hasattr(run.family, "reconstruct")
    if not metrics and not scores_test:
        raise GenlabError(f"--metrics none leaves nothing to measure: {run.cfg.model} has no likelihood "
                          f"or reconstruction")
    data_cfg = data_config_for(run.cfg.data)
    record = {"kind": "samples", "model": run.cfg.model, "dataset": run.info.name,
              "checkpoint": run.checkpoint, "step": run.step, "metrics": {}}
    seconds = {}
    if metrics:
        record.update(_sample_metrics(run, n, metrics, features, ref, batch_size, seed, n_boot, extractor,
                                      reference, data_cfg, log, seconds))
    if scores_test:
        t0 = time.perf_counter()
        images, protocol = scored_images(data_cfg, ref, n if n_test is None else n_test)
        if hasattr(run.family, "log_likelihood"):
            record["metrics"].update(likelihood(run.family, images, batch_size, seed))
        if hasattr(run.family, "reconstruct"):
            record["metrics"].update(reconstruction(run.family, images, batch_size))
        record.update(test_split=ref, **protocol)
        seconds["test_images"] = round(time.perf_counter() - t0, 2)
    return {**record, "seed": seed, "timestamp": _now(), "genlab_version": __version__, "seconds": seconds}


def _sample_metrics(run, n, metrics, features, ref, batch_size, seed, n_boot, extractor, reference,
                    data_cfg, log, seconds: dict) -> dict:
    """The sample-metric part of a record: one sampling + feature pass against cached real features."""
    name, picked = resolve_extractor(features, run.info)
    device = getattr(run.family, "device", "cpu")
    ext = extractor or get_extractor(name, device)
    ext.check_shape(tuple(run.info.shape))
    t0 = time.perf_counter()
    refs = reference or parallel.on_main(get_reference, data_cfg, ref, n, ext, batch_size=batch_size, log=log)
    t_ref = time.perf_counter()
    with run.sampling():
        fake, probs = sample_features(run.family.sample, n, ext, batch_size, seed, run.info.shape,
                                      keep_probs="is" in metrics)
    t_feat = time.perf_counter()
    values = parallel.on_main(lambda: compute_all(*_on(device, refs.features, fake, probs), metrics,
                                                   n_boot=n_boot, seed=seed))
    seconds.update(reference=round(t_ref - t0, 2), sample_and_features=round(t_feat - t_ref, 2),
                   metrics=round(time.perf_counter() - t_feat, 2))
    return {"metrics": values, "extractor": ext.name, "extractor_fingerprint": ext.fingerprint,
            "extractor_auto": picked, **describe(refs), "n_fake": int(fake.shape[0]), "n_boot": n_boot,
            "reference_cache": refs.status}


def real_vs_real(dataset: str, n: int = 10000, metrics: str | Sequence[str] = ALL_METRICS,
                 features: str = "auto", batch_size: int = 500, seed: int = 0, n_boot: int = 0,
                 data_root: str = "", device: str = "cpu", log: Callable[[str], None] = _stderr) -> dict:
    """The floor of every metric: a train subset (playing 'generated') against the test split, equal n.

    The two sets are disjoint real images, so FID/KID here is the value a perfect model would get at
    this n; read generated-sample numbers against it."""
    metrics = parse_metrics(metrics)
    data_cfg = DataConfig(name=dataset, root=data_root)
    _, info = load_real(data_cfg, "test", 2)
    name, picked = resolve_extractor(features, info)
    ext = get_extractor(name, device)
    t0 = time.perf_counter()
    test = get_reference(data_cfg, "test", n, ext, batch_size=batch_size, log=log)
    train = get_reference(data_cfg, "train", test.n, ext, seed=seed, batch_size=batch_size, log=log)
    t_feat = time.perf_counter()
    values = compute_all(*_on(device, test.features, train.features, train.probs), metrics, n_boot=n_boot,
                         seed=seed)
    return {
        "kind": "real-vs-real", "dataset": dataset, "metrics": values,
        "extractor": ext.name, "extractor_fingerprint": ext.fingerprint, "extractor_auto": picked,
        **describe(test), "fake": f"{dataset} train subset (seed {seed})", "n_fake": train.n,
        "seed": seed, "n_boot": n_boot, "timestamp": _now(), "genlab_version": __version__,
        "seconds": {"features": round(t_feat - t0, 2), "metrics": round(time.perf_counter() - t_feat, 2)},
        "reference_cache": f"test {test.status}, train {train.status}",
    }


# ----------------------------------------------------------------------------- records
def read_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GenlabError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); "
                          f"move it away to start afresh") from None
    if not isinstance(records, list):
        raise GenlabError(f"{path} should hold a JSON list of evaluation records")
    return records


def append_record(run_dir: str | Path, record: dict) -> Path:
    """Append `record` to RUN_DIR/eval.json (a list, newest last), atomically."""
    path = Path(run_dir) / EVAL_FILE
    records = read_records(run_dir) + [record]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2, default=json_default) + "\n")
    tmp.replace(path)
    return path


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


TRANSLATION_METRICS = ("cycle_l1_AtoB", "cycle_l1_BtoA", "identity_l1_A", "identity_l1_B", "fid_AtoB", "fid_BtoA",
                       "label_preservation_AtoB", "label_preservation_BtoA", "evaluator_acc_A", "evaluator_acc_B")


def format_table(record: dict) -> str:
    """The metrics of a record as an aligned two-column table (mean +- std where there is a std)."""
    m = record["metrics"]
    rows = []
    for key, label in (("fid", "FID"), ("kid_mean", "KID"), ("is_mean", "IS"), ("precision", "precision"),
                       ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
                       ("nll_nats", "NLL (nats)"), ("bits_per_dim", "bits/dim"), ("recon_mse", "recon MSE"),
                       *[(k, k.replace("_", " ")) for k in TRANSLATION_METRICS]):
        if key not in m:
            continue
        value = f"{m[key]:.5g}"
        std = {"kid_mean": "kid_std", "is_mean": "is_std"}.get(key)
        if std:
            value += f" ± {m[std]:.2g}"
        if key == "fid" and "fid_ci_low" in m:
            value += f"  (95% CI {m['fid_ci_low']:.5g} .. {m['fid_ci_high']:.5g})"
        rows.append((label, value))
    width = max(len(r[0]) for r in rows) if rows else 6
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _on(device, *tensors):
    """Metrics where the features can be fastest: on the GPU when the model is there."""
    dev = torch.device(device)
    return [t.to(dev) if t is not None and dev.type == "cuda" else t for t in tensors]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_default(o):
    """json.dumps default= for tensors and paths (records written by eval and diagnose)."""
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
