"""EBGAN's auto-encoder discriminator (Zhao, Mathieu & LeCun 2017), sized from the data shape.

The discriminator is an energy function: D(x) = per-sample mean squared reconstruction error of an
auto-encoder, low on real data and pushed above a margin on generated data (see the `energy` loss).
It returns an `Energy` named tuple, (energy, code), so that the loss can also read the encoder's
codes for the pulling-away term; the GAN family logs the first field (the energy) as its score.

Encoder: k strided 4x4 convs (DCGAN layout, no norm on the first) down to the b x b base grid;
the flattened feature map is the code. Decoder: the mirror image with transposed convs and a
tanh output (images live in [-1, 1]). EBGAN's MNIST model is 64-128-256 channels; here the
first layer has `width` channels and each halving doubles them. For 2-D toy points (shape (2,))
the encoder and decoder are small MLPs, so EBGAN also runs on ring8 / grid25.

Caveat: the paper defines the energy as the (unsquared) L2 norm of the reconstruction error; we use
the per-pixel mean of its square (as most reimplementations do), so the margin is on that scale.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..registry import register
from .common import ConvTranspose2d, apply_spectral_norm, make_norm, num_halvings


class Energy(NamedTuple):
    energy: Tensor  # (n,) reconstruction MSE per sample
    code: Tensor  # (n, d) flattened encoder output


@register("net", "autoencoder-d", role="discriminator", data=("image", "points"), output="energy")
class AutoencoderDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int = 32, norm: str = "batch",
                 spectral_norm: bool = False):
        super().__init__()
        if len(shape) == 1:  # 2-D toy points: an MLP auto-encoder with a `width`-d code
            d = shape[0]
            self.encoder = nn.Sequential(nn.Linear(d, width), nn.LeakyReLU(0.2, True), nn.Linear(width, width))
            self.decoder = nn.Sequential(nn.LeakyReLU(0.2, True), nn.Linear(width, width), nn.LeakyReLU(0.2, True),
                                         nn.Linear(width, d))
            if spectral_norm:
                apply_spectral_norm(self)
            return
        channels, size, _ = shape
        k, _ = num_halvings(size)
        enc = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for _ in range(k - 1):
            enc += [nn.Conv2d(ch, ch * 2, 4, 2, 1), make_norm(norm, ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        dec: list[nn.Module] = []
        for _ in range(k - 1):
            dec += [ConvTranspose2d(ch, ch // 2, 4, 2, 1), make_norm(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        dec += [ConvTranspose2d(ch, channels, 4, 2, 1), nn.Tanh()]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Energy:
        code = self.encoder(x)
        recon = self.decoder(code)
        return Energy((recon - x).pow(2).flatten(1).mean(1), code.flatten(1))
