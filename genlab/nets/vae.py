"""Convolutional encoders/decoders for the latent-variable families, sized from the data shape,
and the VAE's observation models p(x | z).

- `vae-encoder` / `vae-decoder` (Kingma & Welling 2014, with conv nets): k stride-2 4x4 convs take
  the image down to its b x b base grid (`num_halvings`: 28 -> 7, 32 -> 4, 64 -> 4), each followed
  by a 3x3 conv at that resolution; a linear layer gives the Gaussian posterior's mean and
  log-variance. The decoder is the mirror image and ends in `params` output maps per channel.
- `vq-encoder` / `vq-decoder` (van den Oord et al. 2017): `downsample` stride-2 convs (default 2:
  28 -> 7, 32 -> 8), residual blocks (ReLU, 3x3, ReLU, 1x1), a 1x1 projection to the code dim; the
  decoder mirrors it with transposed convs.

Observation models take the decoder output and uint8 images and return log p(x | z) in nats per
image (summed over pixels and channels), so every likelihood in genlab is on the same scale:
    bernoulli   binarized data ({0, 255}); one logit per pixel
    logistic    discretised logistic over the 256 grey levels (PixelCNN++'s edge handling)
    gaussian    discretised Gaussian over the 256 grey levels (same bins, normal CDF)
The last two are exact probabilities of the discrete pixel value (no dequantisation slack).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .common import ConvTranspose2d, Flatten, num_halvings, to_layout_of


def _halvings(size: int, asked: int | None) -> int:
    k, _ = num_halvings(size)
    if asked is None:
        return k
    if not 1 <= asked <= k:
        raise ValueError(f"cannot halve a {size}-pixel image {asked} times (1..{k} fit)")
    return asked


# ----------------------------------------------------------------------------- VAE nets
@register("net", "vae-encoder", role="gaussian-encoder", data=("image",))
class VAEEncoder(nn.Module):
    """x in [-1, 1] (B, C, H, W) -> (mean, log-variance), each (B, latent_dim)."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 32, width: int = 32):
        super().__init__()
        channels, size, _ = shape
        k, base = num_halvings(size)
        layers: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(k):
            # ELU in place after a conv (whose backward does not need its output): its backward then
            # reads its result, grad * (y + 1), instead of taking exp again (conv + ELU on a
            # 64x16x28x28 bf16 map, forward + backward: 2.31 -> 1.78 ms)
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.ELU(inplace=True), nn.Conv2d(ch, ch, 3, 1, 1),
                       nn.ELU(inplace=True)]
            ch_in, ch = ch, ch * 2
        self.features = nn.Sequential(*layers, Flatten())
        self.head = nn.Linear(ch_in * base * base, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.head(self.features(x)).chunk(2, dim=1)
        return mean, logvar


@register("net", "vae-decoder", role="decoder", data=("image",))
class VAEDecoder(nn.Module):
    """z (B, latent_dim) -> (B, C * params, H, W): `params` output maps per image channel."""

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 32, width: int = 32, params: int = 1):
        super().__init__()
        channels, size, _ = shape
        k, base = num_halvings(size)
        top = width * 2 ** (k - 1)
        self.project = nn.Sequential(nn.Linear(latent_dim, top * base * base), nn.Unflatten(1, (top, base, base)),
                                     nn.ELU())
        layers: list[nn.Module] = []
        ch = top
        for i in range(k):
            out = ch // 2 if i < k - 1 else width
            layers += [nn.Conv2d(ch, ch, 3, 1, 1), nn.ELU(inplace=True), ConvTranspose2d(ch, out, 4, 2, 1),
                       nn.ELU(inplace=True)]  # in place: as in the encoder
            ch = out
        self.blocks = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, channels * params, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.blocks(to_layout_of(self.project(z), self.blocks)))


# ----------------------------------------------------------------------------- VQ-VAE nets
class ResBlock(nn.Module):
    def __init__(self, ch: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, hidden, 3, 1, 1), nn.ReLU(), nn.Conv2d(hidden, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


@register("net", "vq-encoder", role="map-encoder", data=("image",))
class VQEncoder(nn.Module):
    """x in [-1, 1] -> z_e (B, code_dim, H / 2^downsample, W / 2^downsample)."""

    def __init__(self, shape: tuple[int, int, int], code_dim: int = 16, width: int = 64,
                 res_blocks: int = 2, downsample: int | None = 2):
        super().__init__()
        channels, size, _ = shape
        k = _halvings(size, downsample)
        layers: list[nn.Module] = []
        ch_in = channels
        for i in range(k):
            ch = width if i == k - 1 else max(width // 2, 8)
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.ReLU()]
            ch_in = ch
        layers += [nn.Conv2d(width, width, 3, 1, 1)]
        layers += [ResBlock(width, width // 2) for _ in range(res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(width, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register("net", "vq-decoder", role="map-decoder", data=("image",))
class VQDecoder(nn.Module):
    """z_q (B, code_dim, h, w) -> (B, C * params, H, W)."""

    def __init__(self, shape: tuple[int, int, int], code_dim: int = 16, width: int = 64,
                 res_blocks: int = 2, downsample: int | None = 2, params: int = 1):
        super().__init__()
        channels, size, _ = shape
        k = _halvings(size, downsample)
        layers: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, 1, 1)]
        layers += [ResBlock(width, width // 2) for _ in range(res_blocks)]
        layers += [nn.ReLU()]
        ch_in = width
        for i in range(k):
            last = i == k - 1
            ch = channels * params if last else max(width // 2, 8)
            layers += [ConvTranspose2d(ch_in, ch, 4, 2, 1)] + ([] if last else [nn.ReLU()])
            ch_in = ch
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


# ----------------------------------------------------------------------------- observation models
class Bernoulli:
    """p(x | z) = prod Bernoulli(pixel; sigmoid(logit)). x must be binarized ({0, 255})."""
    params = 1
    needs_binary = True

    @staticmethod
    def log_prob(out: Tensor, x_uint8: Tensor) -> Tensor:
        target = (x_uint8 > 127).to(out.dtype)
        return -F.binary_cross_entropy_with_logits(out, target, reduction="none").flatten(1).sum(1)

    @staticmethod
    def mean(out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    @staticmethod
    def sample(out: Tensor, generator: torch.Generator | None) -> Tensor:
        p = torch.sigmoid(out).float().cpu()
        return torch.bernoulli(p, generator=generator).to(out.device)


class _Discretised:
    """A continuous distribution over x in [-1, 1] integrated over the 256 bins of width 2/255
    (the two edge bins extend to -inf / +inf). Output maps: (mean, log-scale) per channel."""
    params = 2
    needs_binary = False
    MIN_LOG_SCALE = -7.0

    @classmethod
    def split(cls, out: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = out.chunk(2, dim=1)
        return torch.tanh(mean), log_scale.clamp(min=cls.MIN_LOG_SCALE)

    @classmethod
    def log_prob(cls, out: Tensor, x_uint8: Tensor) -> Tensor:
        mean, log_scale = cls.split(out)
        x = x_uint8.to(out.dtype) / 127.5 - 1
        inv = torch.exp(-log_scale)
        upper, lower = inv * (x - mean + 1 / 255), inv * (x - mean - 1 / 255)
        log_cdf_up, log_sf_low = cls.log_cdf(upper), cls.log_cdf(-lower)  # log F(upper), log(1 - F(lower))
        # log(F(upper) - F(lower)) computed stably: F(u) - F(l) = F(u) * (1 - exp(log F(l) - log F(u)))
        log_mid = log_cdf_up + torch.log((-torch.expm1(cls.log_cdf(lower) - log_cdf_up)).clamp_min(1e-30))
        # far in a tail the difference underflows (clamped, no NaN gradients): density * bin width there
        log_pdf = cls.log_pdf(inv * (x - mean)) - log_scale + math.log(2 / 255)
        log_mid = torch.where(torch.isfinite(log_mid) & (log_mid > -30), log_mid, log_pdf)
        logp = torch.where(x_uint8 == 0, log_cdf_up, torch.where(x_uint8 == 255, log_sf_low, log_mid))
        return logp.flatten(1).sum(1)

    @classmethod
    def mean(cls, out: Tensor) -> Tensor:
        return (cls.split(out)[0] + 1) / 2

    @classmethod
    def sample(cls, out: Tensor, generator: torch.Generator | None) -> Tensor:
        mean, log_scale = cls.split(out)
        u = torch.rand(mean.shape, generator=generator).clamp(1e-5, 1 - 1e-5).to(out.device)
        x = mean + torch.exp(log_scale) * cls.quantile(u)
        return ((x.clamp(-1, 1) + 1) * 127.5).round() / 255


class DiscretisedLogistic(_Discretised):
    @staticmethod
    def log_cdf(t: Tensor) -> Tensor:
        return F.logsigmoid(t)

    @staticmethod
    def log_pdf(t: Tensor) -> Tensor:
        return t - 2 * F.softplus(t)

    @staticmethod
    def quantile(u: Tensor) -> Tensor:
        return torch.log(u) - torch.log1p(-u)


class DiscretisedGaussian(_Discretised):
    @staticmethod
    def log_cdf(t: Tensor) -> Tensor:
        return torch.special.log_ndtr(t)

    @staticmethod
    def log_pdf(t: Tensor) -> Tensor:
        return -0.5 * t * t - 0.5 * math.log(2 * math.pi)

    @staticmethod
    def quantile(u: Tensor) -> Tensor:
        return torch.special.ndtri(u)


OBSERVATION_MODELS = {"bernoulli": Bernoulli, "logistic": DiscretisedLogistic, "gaussian": DiscretisedGaussian}
