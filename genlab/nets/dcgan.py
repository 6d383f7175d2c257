"""DCGAN-style generator and discriminator (Radford et al. 2016), sized from the data shape.

The generator maps z to a base grid of b x b (b in 4..7), then doubles resolution k times with
transposed convolutions, halving channels each time; the discriminator mirrors it. 28x28 gives
b=7, k=2; 32x32 gives b=4, k=3; 64x64 gives b=4, k=4 — one class for every resolution."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import register
from .common import Flatten, MinibatchStd, apply_spectral_norm, make_norm, num_halvings, to_layout_of


@register("net", "dcgan-g", role="generator", data=("image",))
class DCGANGenerator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 100, width: int = 32,
                 norm: str = "batch"):
        super().__init__()
        channels, size, _ = shape
        k, base = num_halvings(size)
        top = width * 2**k
        self.base, self.top = base, top
        self.project = nn.Sequential(nn.Linear(latent_dim, top * base * base), nn.Unflatten(1, (top, base, base)),
                                     make_norm(norm, top), nn.ReLU(True))
        blocks = []
        ch = top
        for _ in range(k):
            blocks += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), make_norm(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(ch, channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(self.to_image(self.blocks(to_layout_of(self.project(z), self.blocks))))


@register("net", "dcgan-d", role="discriminator", data=("image",), output="score", options=("minibatch_std",))
class DCGANDiscriminator(nn.Module):
    """The input may have any channel count (a PacGAN discriminator of m packed RGB images has 3m).
    `minibatch_std=G` appends ProGAN's minibatch-std map (groups of G) to the last feature map, as
    ProGAN does at its 4x4 stage, so the linear head sees it beside the features."""

    def __init__(self, shape: tuple[int, int, int], width: int = 32, norm: str = "batch",
                 spectral_norm: bool = False, minibatch_std: int = 0):
        super().__init__()
        channels, size, _ = shape
        k, base = num_halvings(size)
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(k - 1):  # no norm on the first layer, as in DCGAN
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), make_norm(norm, ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        if minibatch_std:  # no parameters: the state_dict keys are those of the plain net
            layers.append(MinibatchStd(minibatch_std))
        self.features = nn.Sequential(*layers, Flatten())
        self.head = nn.Linear((ch + (1 if minibatch_std else 0)) * base * base, 1)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)
