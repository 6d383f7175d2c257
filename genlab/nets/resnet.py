"""ResNet generator and discriminator of SN-GAN (Miyato et al. 2018, appendix B.4), as reproduced
by mimicry (Lee & Town 2020), sized from the data shape like the DCGAN nets.

Generator: z -> linear -> b x b grid (b in 4..7) -> k up-sampling residual blocks
(norm-ReLU-up-conv3-norm-ReLU-conv3, shortcut up-conv1) -> norm-ReLU-conv3-tanh.
Discriminator: an "optimized" first block (conv3-ReLU-conv3-avgpool, shortcut avgpool-conv1), then
down-sampling residual blocks until the b x b grid, one more block at that size, ReLU, global SUM
pooling and a linear head. `num_halvings` picks (k, b): 28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4).

Caveats: every block keeps `width` channels (no per-resolution channel schedule). The paper's
CIFAR-10 nets use 256 channels in G and 128 in D (set gan.g_width / gan.d_width to match) and only
two down-samplings in D (32 -> 8); here D always goes down to the generator's base grid, as
mimicry's 48 and 64 pixel models do, so one class serves every resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .common import apply_spectral_norm, make_norm, num_halvings


class GBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution (nearest up-sampling)."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.n1, self.c1 = make_norm(norm, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.n2, self.c2 = make_norm(norm, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.n1(x)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DBlock(nn.Module):
    """ReLU-conv3-ReLU-conv3 (+ average pooling) with a 1x1 shortcut where the shape changes.

    `first=True` is SN-GAN's "optimized" block: no activation before the first conv (the input is
    the image) and the shortcut pools before its 1x1 conv."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool = False, norm: str = "none"):
        super().__init__()
        self.down, self.first = down, first
        self.c1, self.c2 = nn.Conv2d(cin, cout, 3, 1, 1), nn.Conv2d(cout, cout, 3, 1, 1)
        self.n1, self.n2 = make_norm(norm, cout), make_norm(norm, cout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (down or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.n2(self.c2(F.relu(self.n1(self.c1(h)))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:
            s = self.shortcut(F.avg_pool2d(s, 2))
        elif self.shortcut is not None:
            s = self.shortcut(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


@register("net", "resnet-g", role="generator", data=("image",))
class ResNetGenerator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 128, width: int = 256,
                 norm: str = "batch"):
        super().__init__()
        channels, size, _ = shape
        k, base = num_halvings(size)
        self.base, self.width = base, width
        self.project = nn.Linear(latent_dim, width * base * base)
        self.blocks = nn.Sequential(*[GBlock(width, width, norm) for _ in range(k)])
        self.out = nn.Sequential(make_norm(norm, width), nn.ReLU(True), nn.Conv2d(width, channels, 3, 1, 1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], self.width, self.base, self.base)
        return torch.tanh(self.out(self.blocks(h)))


@register("net", "resnet-d", role="discriminator", data=("image",), output="score")
class ResNetDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int = 128, norm: str = "none",
                 spectral_norm: bool = False):
        super().__init__()
        channels, size, _ = shape
        k, _ = num_halvings(size)
        blocks = [DBlock(channels, width, down=True, first=True, norm=norm)]
        blocks += [DBlock(width, width, down=True, norm=norm) for _ in range(k - 1)]
        blocks += [DBlock(width, width, down=False, norm=norm)]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 1)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling, as in SN-GAN
        return self.head(h).squeeze(1)
