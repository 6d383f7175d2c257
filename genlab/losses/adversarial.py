"""GAN objectives. Each is a tiny class; variants never branch on names inside the family."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..registry import register


@register("loss", "non_saturating", accepts=("score",))
class NonSaturating:
    """Goodfellow et al. 2014: D minimises BCE; G maximises log D(G(z)) (non-saturating)."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return F.softplus(-d_fake).mean()


@register("loss", "wasserstein", accepts=("score",))
class Wasserstein:
    """Arjovsky et al. 2017 critic objective; pair with gradient_penalty for WGAN-GP."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return d_fake.mean() - d_real.mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


@register("loss", "hinge", accepts=("score",))
class Hinge:
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018 for SN-GAN)."""

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return -d_fake.mean()


@register("loss", "least_squares", accepts=("score",))
class LeastSquares:
    """LSGAN (Mao et al. 2017): targets a for fake, b for real, c for what G wants fakes to be."""

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 1.0):
        self.a, self.b, self.c = a, b, c

    def d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        return 0.5 * ((d_real - self.b) ** 2).mean() + 0.5 * ((d_fake - self.a) ** 2).mean()

    def g_loss(self, d_fake: Tensor) -> Tensor:
        return 0.5 * ((d_fake - self.c) ** 2).mean()


def pulling_away(codes: Tensor) -> Tensor:
    """EBGAN's pulling-away term: mean over pairs i != j of cos^2(s_i, s_j) for codes (n, ...).

    It is 0 when the codes of a batch are mutually orthogonal and 1 when they are all parallel, so
    adding it to the generator loss discourages mode collapse. Needs n >= 2."""
    n = codes.shape[0]
    if n < 2:
        raise ValueError("the pulling-away term needs at least 2 codes")
    s = F.normalize(codes.flatten(1), dim=1)
    cos2 = (s @ s.t()).pow(2)
    return (cos2.sum() - cos2.diagonal().sum()) / (n * (n - 1))


@register("loss", "energy", accepts=("energy",))
class EnergyLoss:
    """EBGAN (Zhao et al. 2017). D returns an `Energy` (energy, code) per sample, energy >= 0.

        d_loss = E[energy(real)] + E[relu(margin - energy(fake))]
        g_loss = E[energy(fake)] + pt_weight * pulling_away(code(fake))

    `margin` is on the scale of the discriminator's energy (per-pixel MSE for autoencoder-d, images
    in [-1, 1]); the paper's margins were for its own (unsquared, summed) energy."""

    def __init__(self, margin: float = 1.0, pt_weight: float = 0.1):
        self.margin, self.pt_weight = margin, pt_weight

    def d_loss(self, d_real, d_fake) -> Tensor:
        return d_real.energy.mean() + F.relu(self.margin - d_fake.energy).mean()

    def g_loss(self, d_fake) -> Tensor:
        loss = d_fake.energy.mean()
        if self.pt_weight:
            loss = loss + self.pt_weight * pulling_away(d_fake.code)
        return loss
