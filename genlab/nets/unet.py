"""Denoising nets for diffusion and flow matching: net(x_t, t, y) -> a tensor shaped like x_t.

- `unet` (Ho et al. 2020's layout, scaled down): a sinusoidal embedding of the continuous time
  t in [0, 1] (diffusion passes t / T) through an MLP; residual blocks of GroupNorm -> SiLU -> conv
  with the time (and class) embedding added in between; `levels` resolutions, each halving the
  size and multiplying the width by `mults[i]`; optional self-attention at the lowest resolution;
  skip connections from every down block to its up block. Sized from the data shape: any size
  whose halvings stay integral, any channel count -- one class for every resolution. `patch` p > 1
  first folds p x p pixel blocks into channels (pixel_unshuffle) and unfolds them at the end, so
  the net works at 1/p the resolution (28x28 MNIST at 14x14: a quarter of the cost per level).
- `mlp-denoiser`: the same time embedding for 2-D points (ring8, grid25): an MLP on [x, emb(t)].
Class conditioning (optional): an embedding of num_classes + 1 entries, the last one "no label",
which classifier-free guidance trains with label dropout and samples with (Ho & Salimans 2021).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .common import GroupNorm, in_float32


def time_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) of t in [0, 1] (scaled by 1000, as integer steps were)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class Conditioning(nn.Module):
    """Time (and class) -> one embedding vector per sample."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, 4 * dim))
        self.classes = nn.Embedding(num_classes + 1, 4 * dim) if num_classes else None
        self.null = num_classes  # the "no label" index

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        emb = self.mlp(time_embedding(t, self.dim))
        if self.classes is not None:
            labels = torch.full((t.shape[0],), self.null, device=t.device) if y is None else y
            emb = emb + self.classes(labels)
        return emb


def _norm(ch: int) -> nn.GroupNorm:
    return GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.emb(F.silu(emb))[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Attention(nn.Module):
    """Single-head self-attention over the positions of a (small) feature map."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.out = _norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(att.transpose(1, 2).reshape(b, c, h, w))


@register("net", "unet", role="denoiser", data=("image",))
class UNet(nn.Module):
    def __init__(self, shape: tuple[int, int, int], width: int = 32, mults: tuple[int, ...] = (1, 2, 2),
                 blocks: int = 1, attention: bool = False, num_classes: int = 0, patch: int = 1):
        super().__init__()
        c, h, w = shape
        if h % patch or w % patch:
            raise ValueError(f"patch {patch} does not divide the {h}x{w} images")
        self.patch = patch
        c, h, w = c * patch * patch, h // patch, w // patch
        if h % 2 ** (len(mults) - 1) or w % 2 ** (len(mults) - 1):
            raise ValueError(f"a {len(mults)}-level UNet halves {h}x{w} {len(mults) - 1} times: the sides "
                             f"must be divisible by {2 ** (len(mults) - 1)}")
        emb = 4 * width
        self.cond = Conditioning(width, num_classes)
        self.inp = nn.Conv2d(c, width, 3, padding=1)
        chans, ch = [width], width
        self.down = nn.ModuleList()
        for i, m in enumerate(mults):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(ResBlock(ch, width * m, emb))
                ch = width * m
                chans.append(ch)
            self.down.append(level)
            if i < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                chans.append(ch)
        self.mid1, self.mid2 = ResBlock(ch, ch, emb), ResBlock(ch, ch, emb)
        self.attn = Attention(ch) if attention else nn.Identity()
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(ResBlock(ch + chans.pop(), width * m, emb))
                ch = width * m
            self.up.append(level)
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)]))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, c, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start as the zero prediction: a calm first step
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.cond(t, y)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        # The input conv reads x_t in float32 under any autocast: at small t, eps is read from noise
        # that bf16's 8-bit mantissa rounds away. A float32-trained ddpm's test bound rose 0.019
        # bits/dim with the whole net in bf16, 0.003 with this conv in float32 and its output in bf16,
        # 0.002 keeping that output float32 too (10% slower steps; README "Performance").
        h = in_float32(self.inp, x)
        if torch.is_autocast_enabled(x.device.type):
            h = h.to(torch.get_autocast_dtype(x.device.type))
        skips = [h]
        for level in self.down:
            for layer in level:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
                skips.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for level in self.up:
            if isinstance(level[0], ResBlock):
                for block in level:
                    h = block(torch.cat([h, skips.pop()], 1), emb)
            else:
                h = level[1](level[0](h))
        out = self.out(h)
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


@register("net", "mlp-denoiser", role="denoiser", data=("points",))
class MLPDenoiser(nn.Module):
    """2-D points: an MLP on [x, optional sinusoidal features of x, time (and class) embedding];
    zero-initialised output. `coord_features` > 0 adds the time embedding's sinusoids of 25 x per
    coordinate (as in tanelp/tiny-diffusion): they let a small MLP resolve modes far narrower than
    the data's range (ring8's std is 0.01), where on raw coordinates its eps error at small t stayed
    near that of predicting 0. Off by default: on one broad Gaussian the features only add noise."""

    COORD_SCALE = 25.0

    def __init__(self, shape: tuple[int, ...], width: int = 128, depth: int = 3, num_classes: int = 0,
                 coord_features: int = 0, **_):
        super().__init__()
        self.cond = Conditioning(32, num_classes)
        self.coord_features = coord_features
        layers, d = [], shape[0] * (1 + coord_features) + 128
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, shape[0]))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        parts = [x]
        if self.coord_features:
            # time_embedding scales its input by 1000 (integer steps); undo that for coordinates
            parts += [time_embedding(x[:, i] * (self.COORD_SCALE / 1000.0), self.coord_features)
                      for i in range(x.shape[1])]
        return self.net(torch.cat([*parts, self.cond(t, y)], 1))
