"""Unpaired two-domain data for image-to-image translation (CycleGAN).

Two datasets are registered:
    pair:DIR     DIR/trainA, DIR/trainB, DIR/testA, DIR/testB (any image files; unlabelled), the
                 layout of the CycleGAN repository's datasets (horse2zebra, ...). data.channels
                 (default 3) and data.resolution (default 64) are applied to each domain.
    mnist-pair   a bundled, offline demo from MNIST: domain A = plain digits from one half of the
                 images, domain B = inverted, thickened digits (3x3 max-pool dilation) from the
                 other, disjoint half. The halves come from a permutation seeded by data.seed.
                 Labels are kept, so label preservation can be measured (genlab.eval.cyclegan_metrics).

How two domains fit the one trainer and BatchSampler: every row of the Dataset is an image of shape
(C, H, 2W) holding an A image in its left half and an independently drawn B image in its right
half. The pairing is a seeded random matching made once (the shorter domain is repeated to the
length of the longer), so it carries no correspondence; the CycleGAN family splits each batch at
W and never uses A and B of the same row together. Grids of this layout show "A | B" side by side.
The paired view has no labels (y = -1); `load_domains` returns both domains with their labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..registry import register
from .base import DataError, DataInfo, Dataset, resize_images, split_name
from .folder import DEFAULT_RESOLUTION, load_image_dir

DOMAINS = ("A", "B")
TWO_DOMAIN = ("pair", "mnist-pair")  # dataset names whose rows are [A | B]


@dataclass
class Domains:
    """The two domains of one split: uint8 images (N, C, H, W) and int64 labels (-1 if unknown)."""

    name: str
    a: torch.Tensor
    ya: torch.Tensor
    b: torch.Tensor
    yb: torch.Tensor

    def images(self, domain: str) -> torch.Tensor:
        return {"A": self.a, "B": self.b}[_check_domain(domain)]

    def labels(self, domain: str) -> torch.Tensor:
        return {"A": self.ya, "B": self.yb}[_check_domain(domain)]


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise DataError(f"unknown domain {domain!r} (A or B)")
    return domain


def mnist_b_style(x: torch.Tensor) -> torch.Tensor:
    """Plain MNIST digits (uint8) -> domain B of mnist-pair: thickened by a 3x3 dilation, inverted."""
    thick = F.max_pool2d(x.float(), kernel_size=3, stride=1, padding=1)
    return (255 - thick).to(torch.uint8)


def plain_view(dataset: str, domain: str, x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images of `domain` as a classifier trained on plain digits should see them.

    For mnist-pair, domain B is inverted back (white digits on black, still thick); everything else
    is returned unchanged. Used by label preservation and by the per-direction FID."""
    if split_name(dataset)[0] == "mnist-pair" and _check_domain(domain) == "B":
        return 1.0 - x
    return x


def load_domains(cfg: DataConfig, split: str) -> Domains:
    """Both domains of split "train" or "test" of a pair dataset (pair:DIR or mnist-pair)."""
    base, arg = split_name(cfg.name)
    if base == "mnist-pair":
        return _mnist_domains(cfg, split, arg)
    if base == "pair":
        return _dir_domains(cfg, split, arg)
    raise DataError(f"{cfg.name!r} is not a two-domain dataset (use pair:DIR or mnist-pair)")


def _mnist_domains(cfg: DataConfig, split: str, arg: str) -> Domains:
    from .mnist import mnist

    if arg:
        raise DataError(f"dataset 'mnist-pair' takes no argument (got mnist-pair:{arg})")
    src = mnist(DataConfig(name="mnist"), split, "")
    perm = torch.randperm(len(src), generator=torch.Generator().manual_seed(cfg.seed))
    ia, ib = perm[: len(perm) // 2].sort().values, perm[len(perm) // 2:].sort().values
    a, b = src.x[ia], mnist_b_style(src.x[ib])
    if cfg.resolution and cfg.resolution != a.shape[-1]:
        a, b = resize_images(a, cfg.resolution), resize_images(b, cfg.resolution)
    return Domains("mnist-pair", a, src.y[ia], b, src.y[ib])


def _dir_domains(cfg: DataConfig, split: str, arg: str) -> Domains:
    if not arg:
        raise DataError("pair: needs a directory holding trainA/ trainB/ testA/ testB/, e.g. --dataset pair:~/horse2zebra")
    root = Path(arg).expanduser()
    channels, resolution = cfg.channels or 3, cfg.resolution or DEFAULT_RESOLUTION
    out = {}
    for d in DOMAINS:
        folder = root / f"{split}{d}"
        if not folder.is_dir():
            raise DataError(f"pair:{arg}: missing folder {folder} (expected trainA/ trainB/ testA/ testB/)")
        out[d] = load_image_dir(folder, channels, resolution)
    unlabeled = lambda x: torch.full((len(x),), -1, dtype=torch.int64)  # noqa: E731
    return Domains(f"pair:{arg}", out["A"], unlabeled(out["A"]), out["B"], unlabeled(out["B"]))


def side_by_side(domains: Domains, seed: int) -> Dataset:
    """Rows (C, H, 2W) = [A image | independently drawn B image]; length = the longer domain."""
    a, b = domains.a, domains.b
    if a.shape[1:] != b.shape[1:]:
        raise DataError(f"{domains.name}: domains A {tuple(a.shape[1:])} and B {tuple(b.shape[1:])} differ in shape")
    if len(a) == 0 or len(b) == 0:
        raise DataError(f"{domains.name}: a domain has no images (A: {len(a)}, B: {len(b)})")
    n = max(len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    # Each domain is walked in a random order, cycled if it is the shorter one.
    ia = torch.cat([torch.randperm(len(a), generator=g) for _ in range(-(-n // len(a)))])[:n]
    ib = torch.cat([torch.randperm(len(b), generator=g) for _ in range(-(-n // len(b)))])[:n]
    x = torch.cat([a[ia], b[ib]], dim=-1).contiguous()
    info = DataInfo(domains.name, "image", tuple(x.shape[1:]))
    return Dataset(x, torch.full((n,), -1, dtype=torch.int64), info)


@register("dataset", "pair")
def pair(cfg: DataConfig, split: str, arg: str) -> Dataset:
    return side_by_side(_dir_domains(cfg, split, arg), cfg.seed)


@register("dataset", "mnist-pair")
def mnist_pair(cfg: DataConfig, split: str, arg: str) -> Dataset:
    return side_by_side(_mnist_domains(cfg, split, arg), cfg.seed)
