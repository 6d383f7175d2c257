"""Stacked MNIST: three independent MNIST digits as the R, G, B channels -> 1,000 modes.

The mode-collapse benchmark of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018),
also used by GDPP: each example stacks three digits drawn independently and uniformly (with
replacement) from MNIST, so the label 100 d_R + 10 d_G + d_B takes 1,000 roughly equally likely
values. A generator's coverage is measured by labelling each channel with an MNIST classifier
(genlab.eval.diagnostics; protocol of Srivastava et al. 2017, VEEGAN, Sec. 5.2, and Lin et al.
2018, PacGAN, Sec. 5: 26,000 samples, modes hit of 1,000 and KL to uniform).

Built on the fly from the bundled MNIST, deterministically from `data.seed`: the train split draws
60,000 triples from the 60,000 MNIST training digits, the test split 10,000 triples from the 10,000
test digits (a different seed stream, so no test image reuses a training digit). The pool sizes are
fixed (data.n_points sizes the toy 2-D mixtures, not this). Caveat: papers differ in pool size
(e.g. 25,600 or 128,000 triples) and in whether the digits are resized; this keeps 28x28.
"""
from __future__ import annotations

import torch

from ..config import DataConfig
from ..registry import register
from .base import DataError, DataInfo, Dataset
from .mnist import mnist

POOL = {"train": 60_000, "test": 10_000}
_TEST_SEED_OFFSET = 1_000_003


def stack_digits(x: torch.Tensor, y: torch.Tensor, n: int, generator: torch.Generator,
                 channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """n stacked images uint8 (n, channels, H, W) from single-channel digits x (N, 1, H, W), with
    labels sum_c y_c * 10^(channels-1-c) (R is the most significant digit)."""
    idx = torch.randint(len(x), (n, channels), generator=generator)
    images = x[idx.reshape(-1), 0].reshape(n, channels, *x.shape[2:])
    weights = 10 ** torch.arange(channels - 1, -1, -1)
    return images.contiguous(), (y[idx] * weights).sum(1)


@register("dataset", "stacked-mnist", traits=("stacked-digits",))
def stacked_mnist(cfg: DataConfig, split: str, arg: str) -> Dataset:
    """Three independent MNIST digits as RGB channels; 1,000 modes; deterministic from data.seed."""
    if arg:
        raise DataError(f"dataset 'stacked-mnist' takes no argument (got stacked-mnist:{arg})")
    digits = mnist(cfg, split, "")
    seed = cfg.seed + (_TEST_SEED_OFFSET if split == "test" else 0)
    x, y = stack_digits(digits.x, digits.y, POOL[split], torch.Generator().manual_seed(seed))
    return Dataset(x, y, DataInfo("stacked-mnist", "image", tuple(x.shape[1:]), num_classes=1000))
