"""Toy 2-D Gaussian mixtures for mode-collapse experiments, as specified in PacGAN.

PacGAN (Lin et al., 2018), following VEEGAN (Srivastava et al., 2017):
  ring8   8 Gaussians with means (cos(2*pi*k/8), sin(2*pi*k/8)), variance 1e-4 (std 0.01)
  grid25  25 Gaussians with means {-4,-2,0,2,4}^2, variance 0.0025 (std 0.05)
Caveat: VEEGAN's own ring used radius 2 and std 0.02; numbers quoted from the two papers are
therefore not directly comparable, and we follow PacGAN.

The data is a fixed pool of `cfg.n_points` points drawn once from a generator seeded by `cfg.seed`
(each mode equally likely); the test split uses a different seed so it is an independent sample.
Labels are mode indices, and DataInfo carries the centres and std so diagnostics (eval/modes.py)
can count covered modes and high-quality samples without re-deriving the spec.
"""
from __future__ import annotations

import math

import torch

from ..config import DataConfig
from ..registry import register
from .base import DataError, DataInfo, Dataset

MIXTURE_STD = {"ring8": 0.01, "grid25": 0.05}
_TEST_SEED_OFFSET = 1_000_003  # a test pool independent of the training pool for the same cfg.seed


def mixture_centres(name: str) -> torch.Tensor:
    """(K, 2) float32 mode centres of a named mixture."""
    if name == "ring8":
        a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        return torch.stack([a.cos(), a.sin()], 1).float()
    if name == "grid25":
        v = torch.arange(-4.0, 5.0, 2.0)
        gx, gy = torch.meshgrid(v, v, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).float()
    raise DataError(f"unknown mixture {name!r} (available: {', '.join(MIXTURE_STD)})")


def sample_mixture(name: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points (float32 (n,2)) and their mode indices (int64 (n,)) from the named mixture."""
    centres, std = mixture_centres(name), MIXTURE_STD[name]
    k = torch.randint(len(centres), (n,), generator=generator)
    x = centres[k] + std * torch.randn(n, 2, generator=generator)
    return x, k


def _loader(name: str):
    def load(cfg: DataConfig, split: str, arg: str) -> Dataset:
        if arg:
            raise DataError(f"dataset {name!r} takes no argument (got {name}:{arg})")
        if cfg.n_points <= 0:
            raise DataError(f"data.n_points must be positive, got {cfg.n_points}")
        seed = cfg.seed + (_TEST_SEED_OFFSET if split == "test" else 0)
        x, y = sample_mixture(name, cfg.n_points, torch.Generator().manual_seed(seed))
        centres = mixture_centres(name)
        info = DataInfo(name, "points", (2,), num_classes=len(centres), modes=centres,
                        mode_std=MIXTURE_STD[name])
        return Dataset(x, y, info)

    load.__name__ = load.__qualname__ = name
    load.__doc__ = f"The {name} mixture: {len(mixture_centres(name))} modes, std {MIXTURE_STD[name]}."
    return load


for _name in MIXTURE_STD:
    register("dataset", _name, _loader(_name), traits=("mode-centres",))
