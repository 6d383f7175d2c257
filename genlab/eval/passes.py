"""The sharded passes of an evaluation: samples -> features, real images -> log-likelihood or
reconstruction error. Batch i of a pass has its own seed (`batch_seed`), so under torchrun the
batches are dealt out to the ranks (batch i to rank i mod world size) and gathered in batch order,
and every figure is the same on 1 or N ranks."""
from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch
from torch import Tensor

from .. import parallel
from ..errors import GenlabError
from ..families.base import bits_per_dim
from .features import Extractor


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
        with torch.inference_mode():
            x = sample(size, torch.Generator().manual_seed(batch_seed(seed, index)))
        if tuple(x.shape[1:]) != tuple(shape):
            raise GenlabError(f"samples have shape {tuple(x.shape[1:])}, the data {tuple(shape)}")
        f, p = extractor.features_and_probs(x)
        return f.cpu(), (p.cpu() if keep_probs else None)

    parts = sharded_map(one, n, batch_size, "sampling")
    feats = torch.cat([f for f, _ in parts])
    return feats, (torch.cat([p for _, p in parts]) if keep_probs else None)


def source_features(source, n: int, extractor: Extractor, batch_size: int,
                    keep_probs: bool = True) -> tuple[Tensor, Tensor | None]:
    """Features / probs of the first n images of a sample file (genlab.samplefiles.SampleSource), in
    the same batches as a run's sample pass, so the same uint8 images give the same features."""
    if n > source.n:
        raise GenlabError(f"{source.path} holds {source.n} samples; -n {n} asks for more")

    def one(index: int, start: int, size: int):
        f, p = extractor.features_and_probs(source.read(start, size))
        return f.cpu(), (p.cpu() if keep_probs else None)

    parts = sharded_map(one, n, batch_size, "features")
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


def likelihood(family, images: Tensor, batch_size: int, seed: int = 0) -> dict[str, float]:
    """NLL = -mean log p(x) (nats per image) and bits/dim = NLL / (D ln 2) on real uint8 images.

    `family.log_likelihood(x)` gets uint8 batches exactly as `train_step` does (the family applies its
    own dequantisation / binarisation) and returns log p(x) in nats, one value per image. Each batch
    runs with the global RNG seeded by (seed, batch), so stochastic estimates (IWAE) repeat exactly,
    on any number of ranks."""
    device = getattr(family, "device", "cpu")

    def one(index: int, start: int, size: int) -> Tensor:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(batch_seed(seed, index))
            logp = family.log_likelihood(images[start:start + size].to(device))
        return torch.as_tensor(logp).double().cpu().reshape(-1)

    logp = torch.cat(sharded_map(one, len(images), batch_size, "log-likelihood"))
    if logp.shape[0] != len(images) or not torch.isfinite(logp).all():
        raise GenlabError(f"log_likelihood returned {logp.shape[0]} values for {len(images)} images "
                          f"({(~torch.isfinite(logp)).sum().item()} non-finite)")
    nll = -logp.mean().item()
    # the standard error over test images; for stochastic estimates (IWAE, flow matching's Hutchinson
    # divergence) it covers their noise too, since each image gets its own independent draw
    se = logp.std().item() / math.sqrt(len(logp)) if len(logp) > 1 else float("nan")
    dims = math.prod(images.shape[1:])
    return {"nll_nats": nll, "nll_se": se, "bits_per_dim": bits_per_dim(nll, dims),
            "bits_per_dim_se": bits_per_dim(se, dims), "n_nll": len(images)}


def reconstruction(family, images: Tensor, batch_size: int) -> dict[str, float]:
    """Mean squared error per pixel, on the [0, 1] scale, of `family.reconstruct` on real images."""
    device = getattr(family, "device", "cpu")

    def one(index: int, start: int, size: int) -> float:
        x = images[start:start + size]
        with torch.inference_mode():
            return (family.reconstruct(x.to(device)).float().cpu() - x.float() / 255).pow(2).double().sum().item()

    se = sum(sharded_map(one, len(images), batch_size, "reconstruction"))
    return {"recon_mse": se / images.numel(), "n_recon": len(images)}
