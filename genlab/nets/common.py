"""Small building blocks shared by the nets."""
from __future__ import annotations

from torch import nn


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """'batch' | 'instance' | 'layer' | 'none' -> a normalisation layer for conv features.

    'layer' normalises over (C, H, W) per sample (GroupNorm with one group), which is what
    WGAN-GP recommends for the critic since batch norm breaks the per-sample gradient penalty."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch, instance, layer, none)")


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (torch parametrizations) on every conv and linear layer."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


def num_halvings(size: int) -> tuple[int, int]:
    """How many stride-2 stages take `size` down to a base of 4..7 pixels: 28 -> (2, 7),
    32 -> (3, 4), 64 -> (4, 4). Any size whose halvings end in 4..7 works."""
    k = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        k += 1
    if k == 0:
        raise ValueError(f"resolution {size} is too small or odd for a strided conv net")
    return k, size
