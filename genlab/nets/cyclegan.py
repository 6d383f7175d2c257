"""CycleGAN's networks (Zhu et al. 2017; Johnson et al. 2016 for the generator), sized to the data.

Generator: reflection-pad conv7 -> d down-sampling convs (stride 2, channels doubling) -> n_blocks
residual blocks -> d transposed convs -> reflection-pad conv7 -> tanh, instance norm throughout.
The paper uses d = 2 (256 -> 64 at the bottleneck); here d = min(2, halvings the size allows), so
28x28 MNIST also gets d = 2 (7x7 bottleneck) and odd sizes work with d = 0.

Discriminator: the "70x70" PatchGAN: C64(no norm)-C128-C256-C512 with 4x4 convs, strides
2, 2, 2, 1, then a 4x4 conv to one score per patch. `n_layers` strided layers give a receptive field
of 16, 34 or 70 pixels for 1, 2, 3. `n_layers=0` sizes it to the data: the published 70x70 patches
where the image is at least that large, else the fewest layers whose patch covers the whole image
(28x28 and 32x32 -> 2 layers, 34x34 patches, a 5x5 grid of scores). Measured on mnist-pair: with
16x16 patches the generators turn digits into locally plausible blobs (label preservation 20-30%
after 1000 steps); with whole-digit patches they keep the digit (94-99% after 500 steps).
Output: (n, h', w') patch scores.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import register
from .common import ConvTranspose2d, apply_spectral_norm, make_norm


def _halvings(n: int) -> int:
    k = 0
    while n % 2 == 0 and n > 1:
        n //= 2
        k += 1
    return k


def patch_receptive_field(n_layers: int) -> int:
    """Receptive field of a PatchGAN with `n_layers` stride-2 layers (1 -> 16, 2 -> 34, 3 -> 70)."""
    strides = [2] * n_layers + [1, 1]
    rf, jump = 1, 1
    for s in strides:
        rf += 3 * jump
        jump *= s
    return rf


class ResBlock(nn.Module):
    def __init__(self, ch: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), make_norm(norm, ch), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), make_norm(norm, ch))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


@register("net", "cyclegan-g", role="translator", data=("image",))
class CycleGANGenerator(nn.Module):
    """Image -> image of the same shape (C, H, W)."""

    def __init__(self, shape: tuple[int, int, int], width: int = 64, norm: str = "instance", n_blocks: int = 9):
        super().__init__()
        channels, h, w = shape
        d = min(2, _halvings(h), _halvings(w))
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, width, 7), make_norm(norm, width), nn.ReLU(True)]
        ch = width
        for _ in range(d):
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1), make_norm(norm, ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResBlock(ch, norm) for _ in range(n_blocks)]
        for _ in range(d):
            layers += [ConvTranspose2d(ch, ch // 2, 3, 2, 1, output_padding=1), make_norm(norm, ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register("net", "patchgan-d", role="discriminator", data=("image",), output="score")
class PatchGANDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int = 64, norm: str = "instance", n_layers: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        channels, h, w = shape
        if n_layers <= 0:
            n_layers = min(n for n in (1, 2, 3) if patch_receptive_field(n) >= min(h, w, 70))
        self.n_layers = n_layers
        layers = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1), make_norm(norm, out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
