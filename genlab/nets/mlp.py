"""MLP generator and discriminator for 2-D toy data (ring8, grid25)."""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import register
from .common import apply_spectral_norm


def _mlp(n_in: int, n_out: int, width: int, depth: int, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width if depth else n_in, n_out))


@register("net", "mlp-g", role="generator", data=("points",))
class MLPGenerator(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int = 2, width: int = 256, depth: int = 3,
                 norm: str = "none"):
        super().__init__()
        self.net = _mlp(latent_dim, shape[0], width, depth, nn.ReLU)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@register("net", "mlp-d", role="discriminator", data=("points",), output="score")
class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int = 256, depth: int = 3, norm: str = "none",
                 spectral_norm: bool = False):
        super().__init__()
        self.net = _mlp(shape[0], 1, width, depth, nn.ReLU)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
