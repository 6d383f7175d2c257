"""Reference features of real data, cached on disk and validated before every use.

    ref = get_reference(DataConfig(name="mnist"), "test", n=10000, extractor=ext)
    ref.features (n, d) float32, ref.probs (n, classes) float32, ref.mu / ref.sigma float64, ref.key

The cache lives in $GENLAB_CACHE/ref/ (default ~/.cache/genlab/ref/), one file per request
(dataset, image shape, split, n, subset seed, extractor name). Each file records its full key:
dataset, split, n, subset seed, preprocessing (shape, resolution, channels, binarisation, the
extractor's input path), the extractor fingerprint, and the sha256 of the exact uint8 images used.
A file whose key differs from the request (new weights, changed data, other preprocessing), or that
cannot be read, is reported and recomputed -- never silently used. Writes are atomic.

Why features and not only (mu, sigma): KID, precision/recall and density/coverage need the feature
vectors themselves; at 128-d (genlab-mnist) 60k rows are 30 MB, at 2048-d (inception) 10k are 80 MB.
The real subset is drawn by a seeded permutation, so n < split size is reproducible.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..checkpoint import save_atomic
from ..config import DataConfig
from ..errors import GenlabError
from ..paths import reference_dir
from .features import Extractor
from .metrics import RunningStats

FORMAT = "genlab-ref"
VERSION = 2  # 2: genlab extractors fold their batch norms (features move by ~3e-7): recompute
REF_BATCH = 500


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class Reference:
    features: Tensor  # (n, dim) float32
    probs: Tensor  # (n, num_classes) float32
    mu: Tensor  # (dim,) float64
    sigma: Tensor  # (dim, dim) float64
    key: dict
    path: Path | None = None
    status: str = "computed"  # "hit" | "computed" | "recomputed (reason)" | "uncached"
    radii: dict = dataclasses.field(default_factory=dict)  # k -> k-NN radii of the features (PR / DC)

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def knn_radii(self, ks) -> dict:
        """k-th nearest-neighbour radii of the real features for each k (precision/recall, density/
        coverage): they depend on the reference alone, so they are computed once and kept in its
        cache file, which saves one of the four k-NN passes of every later evaluation."""
        from .metrics import knn_radii

        missing = sorted({k for k in ks if k} - set(self.radii))
        if missing:
            self.radii.update(knn_radii(self.features, missing))
            if self.path is not None:
                save_atomic({"key": self.key, "features": self.features, "probs": self.probs, "mu": self.mu,
                             "sigma": self.sigma, "radii": self.radii}, self.path)
        return {k: self.radii[k] for k in ks if k}


def ref_dir() -> Path:
    return reference_dir()


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:80]


# How load_real binarizes (with its default seed 0): one Bernoulli(x / 255) draw per pixel.
BINARIZATION = "bernoulli(x/255), drawn once per pixel from a generator seeded 1 (subset seed + 1)"


def load_real(data_cfg: DataConfig, split: str, n: int | None, seed: int = 0) -> tuple[Tensor, "object"]:
    """The uint8 images of a seeded subset of `split` (all of it when n is None or >= its size)."""
    from ..data import load_dataset

    data = load_dataset(data_cfg, split)
    if data.info.kind != "image":
        raise GenlabError(f"{data_cfg.name} is {data.info.kind} data: FID/KID/IS/PR/DC are image metrics; "
                          f"use `genlab diagnose` for 2-D toy data")
    x = data.x
    if n is not None and n < len(x):
        if n < 2:
            raise GenlabError(f"reference n must be >= 2, got {n}")
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]
    if data.info.binarized:  # binarised-data models are compared with binarised real images
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + 1))
        x = (u * 255 < x.float()).to(torch.uint8) * 255
    return x, data.info


def reference_key(data_cfg: DataConfig, split: str, images: Tensor, extractor: Extractor, seed: int) -> dict:
    return {
        "format": FORMAT, "version": VERSION,
        "dataset": data_cfg.name, "split": split, "n": int(images.shape[0]), "subset_seed": seed,
        "preprocessing": {"shape": list(images.shape[1:]), "resolution": data_cfg.resolution,
                          "channels": data_cfg.channels, "binarize": data_cfg.binarize,
                          "extractor_input": extractor.preprocessing},
        "extractor": extractor.name, "fingerprint": extractor.fingerprint,
        "data_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(),
    }


def cache_path(key: dict) -> Path:
    shape = "x".join(map(str, key["preprocessing"]["shape"]))
    bin_ = "-bin" if key["preprocessing"]["binarize"] else ""
    seed = f"-s{key['subset_seed']}" if key["subset_seed"] else ""
    stem = f"{_safe(key['dataset'])}-{shape}{bin_}-{key['split']}-n{key['n']}{seed}-{_safe(key['extractor'])}"
    return ref_dir() / f"{stem}.pt"


def _mismatch(saved: dict, key: dict) -> str | None:
    """A readable reason why `saved` does not answer request `key` (None if it does)."""
    for k in key:
        if saved.get(k) != key[k]:
            label = {"fingerprint": "extractor fingerprint", "data_sha256": "image data (sha256)"}.get(k, k)
            old, new = saved.get(k), key[k]
            if isinstance(old, str) and len(old) > 16:
                old, new = old[:12], str(new)[:12]
            return f"{label} changed: {old} -> {new}"
    return None


def _load_cached(path: Path, key: dict, log) -> Reference | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        saved = obj["key"]
        feats, probs, mu, sigma = obj["features"], obj["probs"], obj["mu"], obj["sigma"]
        ok = (isinstance(saved, dict) and feats.ndim == 2 and feats.shape[0] == key["n"]
              and probs.shape[0] == key["n"] and mu.shape == (feats.shape[1],))
    except Exception as e:  # truncated, not a torch file, missing entries
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        log(f"reference cache {path} is corrupt ({reason}); recomputing")
        return None
    if not ok:
        log(f"reference cache {path} is malformed; recomputing")
        return None
    reason = _mismatch(saved, key)
    if reason:
        log(f"reference cache {path} is stale ({reason}); recomputing")
        return None
    radii = obj.get("radii") or {}
    if not all(isinstance(r, Tensor) and r.shape == (key["n"],) for r in radii.values()):
        radii = {}
    return Reference(feats, probs, mu, sigma, saved, path, "hit", dict(radii))


def compute_features(images: Tensor, extractor: Extractor, batch_size: int = REF_BATCH):
    """Stream uint8 images through the extractor -> (features, probs, mu, sigma)."""
    stats, feats, probs = RunningStats(), [], []
    for i in range(0, len(images), batch_size):
        f, p = extractor.features_and_probs(images[i:i + batch_size])
        stats.update(f)
        feats.append(f)
        probs.append(p)
    mu, sigma = stats.compute()
    return torch.cat(feats), torch.cat(probs), mu, sigma


def get_reference(data_cfg: DataConfig, split: str, n: int | None, extractor: Extractor, *,
                  seed: int = 0, batch_size: int = REF_BATCH, use_cache: bool = True,
                  log: Callable[[str], None] = _stderr) -> Reference:
    """Reference features of `split` (n images, or the whole split when n is None or larger).

    Served from the cache when a file with exactly the same key exists; otherwise computed (and cached
    when use_cache). Cache problems are reported through `log`, never silently ignored."""
    images, info = load_real(data_cfg, split, n, seed)
    extractor.check_shape(tuple(info.shape))
    key = reference_key(data_cfg, split, images, extractor, seed)
    path = cache_path(key)
    if use_cache:
        hit = _load_cached(path, key, log)
        if hit is not None:
            return hit
    stale = use_cache and path.is_file()
    feats, probs, mu, sigma = compute_features(images, extractor, batch_size)
    ref = Reference(feats, probs, mu, sigma, key, path if use_cache else None,
                    "recomputed" if stale else ("computed" if use_cache else "uncached"))
    if use_cache:
        save_atomic({"key": key, "features": feats, "probs": probs, "mu": mu, "sigma": sigma}, path)
    return ref


def describe(ref: Reference) -> dict:
    """The record fields a metric record needs about its reference."""
    return {"ref_dataset": ref.key["dataset"], "ref_split": ref.key["split"], "n_real": ref.n,
            "ref_subset_seed": ref.key["subset_seed"], "ref_data_sha256": ref.key["data_sha256"][:16]}


def data_config_for(run_cfg_data: DataConfig) -> DataConfig:
    """The parts of a run's data config that define its real images (streaming etc. dropped)."""
    return dataclasses.replace(run_cfg_data, streaming=False)
