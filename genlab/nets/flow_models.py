"""Multi-scale flow models built from genlab.nets.flows, sized by data shape, levels, depth and width.

- `glow` (Kingma & Dhariwal 2018): per level, squeeze then `depth` steps of
  [ActNorm, invertible 1x1 conv (LU), affine coupling (channel split)], then a split
  with a learned conditional prior; a learned prior on the top latent. The sides must be divisible
  by 2^levels (28x28 MNIST: levels <= 2).
- `realnvp` (Dinh et al. 2017): per scale, `depth` checkerboard couplings, squeeze, `depth`
  channel couplings, split (standard normal prior, as in the paper); the last scale has depth + 1
  checkerboard couplings. tanh scales and residual coupling nets as in the paper; ActNorm after
  every coupling stands in for the paper's batch-norm layers (no train/eval difference, exact
  inverse). The sides must be divisible by 2^(levels - 1).

Both are `MultiScaleFlow`s: forward(x) -> (z, logdet) with z the (B, D) concatenation of every
factored-out latent, each standard normal under the model, so
    log p(x) = sum(N(z; 0, I)) + logdet     and sampling is inverse(T * randn(B, D)).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import register
from .flows import ActNorm, AffineCoupling, InvConv1x1, LearnedPrior, Split, Squeeze


class Level(nn.Module):
    """A sequence of invertible layers followed by an optional split."""

    def __init__(self, layers: list[nn.Module], split: Split | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.split = split


class MultiScaleFlow(nn.Module):
    def __init__(self, shape: tuple[int, int, int], levels: list[Level], top: nn.Module | None,
                 latent_shapes: list[tuple[int, int, int]]):
        super().__init__()
        self.shape = tuple(shape)
        self.levels = nn.ModuleList(levels)
        self.top = top
        self.latent_shapes = [tuple(s) for s in latent_shapes]  # factored-out parts, then the top
        self.dims = math.prod(shape)
        if sum(math.prod(s) for s in self.latent_shapes) != self.dims:
            raise AssertionError("latent shapes do not add up to the data dimension")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        parts = []
        for level in self.levels:
            for layer in level.layers:
                x, ld = layer(x)
                logdet = logdet + ld
            if level.split is not None:
                x, eps, ld = level.split(x)
                parts.append(eps.flatten(1))
                logdet = logdet + ld
        if self.top is not None:
            x, ld = self.top(x)
            logdet = logdet + ld
        parts.append(x.flatten(1))
        return torch.cat(parts, 1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, 1), self.latent_shapes)]
        x = parts.pop()
        if self.top is not None:
            x = self.top.inverse(x)
        for level in reversed(self.levels):
            if level.split is not None:
                x = level.split.inverse(x, parts.pop())
            for layer in reversed(level.layers):
                x = layer.inverse(x)
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """log density of x under the model, nats per example (B,)."""
        return flow_log_prob(self, x)


def flow_log_prob(flow: nn.Module, x: Tensor) -> Tensor:
    """log p(x) = log N(z; 0, I) + log|det dz/dx| through `flow`'s forward (a MultiScaleFlow, or its
    DDP / compiled training view, which only forwards `forward`)."""
    z, logdet = flow(x)
    return standard_normal_logpdf(z) + logdet


def standard_normal_logpdf(z: Tensor) -> Tensor:
    return -0.5 * (z.pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)


def _check_sides(shape, halvings: int, name: str, levels: int) -> None:
    c, h, w = shape
    k = 2 ** halvings
    if levels < 1 or h % k or w % k:
        raise ValueError(f"{name} with {levels} levels needs image sides divisible by {k}; "
                         f"got {h}x{w} (use fewer levels or another resolution)")


def _split_shapes(c: int, h: int, w: int) -> tuple[int, tuple[int, int, int]]:
    keep = c - c // 2
    return keep, (c - keep, h, w)


@register("net", "glow", role="flow", data=("image",))
def glow(shape: tuple[int, int, int], levels: int = 2, depth: int = 8, hidden: int = 128,
         res_blocks: int = 0, scale: str = "sigmoid") -> MultiScaleFlow:
    _check_sides(shape, levels, "glow", levels)
    c, h, w = shape
    built, latents = [], []
    for i in range(levels):
        c, h, w = 4 * c, h // 2, w // 2
        layers: list[nn.Module] = [Squeeze()]
        for _ in range(depth):
            layers += [ActNorm(c), InvConv1x1(c),
                       AffineCoupling(c, hidden, mask="channel", parity=0, scale=scale, res_blocks=res_blocks)]
        split = None
        if i < levels - 1:
            split = Split(c, learned=True)
            c, factored = _split_shapes(c, h, w)
            latents.append(factored)
        built.append(Level(layers, split))
    latents.append((c, h, w))
    return MultiScaleFlow(shape, built, LearnedPrior((c, h, w)), latents)


@register("net", "realnvp", role="flow", data=("image",))
def realnvp(shape: tuple[int, int, int], levels: int = 2, depth: int = 3, hidden: int = 64,
            res_blocks: int = 2, scale: str = "tanh") -> MultiScaleFlow:
    _check_sides(shape, levels - 1, "realnvp", levels)
    c, h, w = shape
    built, latents = [], []

    def coupling(ch: int, mask: str, parity: int) -> list[nn.Module]:
        return [AffineCoupling(ch, hidden, mask=mask, parity=parity, scale=scale, res_blocks=res_blocks),
                ActNorm(ch)]

    for i in range(levels):
        last = i == levels - 1
        layers: list[nn.Module] = []
        for k in range(depth + 1 if last else depth):
            layers += coupling(c, "checkerboard", k % 2)
        split = None
        if not last:
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for k in range(depth):
                layers += coupling(c, "channel", k % 2)
            split = Split(c, learned=False)
            c, factored = _split_shapes(c, h, w)
            latents.append(factored)
        built.append(Level(layers, split))
    latents.append((c, h, w))
    return MultiScaleFlow(shape, built, None, latents)
