"""GAN objectives. Each is a tiny class; variants never branch on names inside the family."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..registry import register


@register("loss", "non_saturating")
class NonSaturating:
    """Goodfellow et al. 2014: D minimises BCE; G maximises log D(G(z)) (non-saturating)."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean()


@register("loss", "wasserstein")
class Wasserstein:
    """Arjovsky et al. 2017 critic objective; pair with gradient_penalty for WGAN-GP."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


@register("loss", "hinge")
class Hinge:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018 for SN-GAN)."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


@register("loss", "least_squares")
class LeastSquares:
    """LSGAN (Mao et al. 2017): targets a for fake, b for real, c for what G wants fakes to be."""

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 1.0):
        self.a, self.b, self.c = a, b, c

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return 0.5 * ((d_real - self.b) ** 2).mean() + 0.5 * ((d_fake - self.a) ** 2).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return 0.5 * ((d_fake - self.c) ** 2).mean()
