"""MLP generator and discriminator for 2-D toy data (ring8, grid25).

`depth` hidden layers of `width` units with activation `act`: relu | tanh | leaky_relu (the unrolled
GAN's reference code uses tanh) | maxout (`pieces` linear pieces per unit, Goodfellow et al. 2013:
PacGAN's toy discriminator is 3 layers of 200 maxout units with 5 pieces). `batch_norm: true` puts
BatchNorm1d before each hidden activation (PacGAN's toy generator: 4 layers of 400, BN, ReLU).
The discriminator takes the input width it is given, so a PacGAN discriminator of m packed 2-D
points is built with shape (2m,). `minibatch_std=G` appends ProGAN's minibatch-std feature
(groups of G) to the last hidden layer, before the output layer.
`norm` (the family's g_norm / d_norm, whose defaults are meant for the DCGAN nets) is accepted for a
uniform constructor and ignored, so toy configs keep their meaning; use batch_norm instead."""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import register
from .common import MinibatchStd, apply_spectral_norm

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


class Maxout(nn.Module):
    """max over `pieces` consecutive features: (n, width * pieces) -> (n, width)."""

    def __init__(self, pieces: int):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (-1, self.pieces)).amax(2)


def _hidden(n_in: int, width: int, act: str, pieces: int, batch_norm: bool) -> list[nn.Module]:
    """One hidden layer: Linear [+ BatchNorm1d] + activation (maxout: a Linear to width * pieces)."""
    if act == "maxout":
        if pieces < 1:
            raise ValueError(f"maxout needs pieces >= 1, got {pieces}")
        out, activation = width * pieces, Maxout(pieces)
    elif act in ACTIVATIONS:
        out, activation = width, ACTIVATIONS[act]()
    else:
        raise ValueError(f"unknown activation {act!r} (choose from: {', '.join([*ACTIVATIONS, 'maxout'])})")
    return [nn.Linear(n_in, out), *([nn.BatchNorm1d(out)] if batch_norm else []), activation]


def _mlp(n_in: int, n_out: int, width: int, depth: int, act: str = "relu", pieces: int = 5,
         batch_norm: bool = False, minibatch_std: int = 0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += _hidden(n_in if i == 0 else width, width, act, pieces, batch_norm)
    last = width if depth else n_in
    if minibatch_std:  # one extra feature before the output layer, in the last activation's slot so
        if not depth:  # the Linear layers keep their state_dict keys (the layer has no parameters)
            raise ValueError("minibatch_std needs at least one hidden layer (depth >= 1)")
        layers[-1] = nn.Sequential(layers[-1], MinibatchStd(minibatch_std))
    return nn.Sequential(*layers, nn.Linear(last + (1 if minibatch_std else 0), n_out))


@register("net", "mlp-g", role="generator", data=("points",))
class MLPGenerator(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int = 2, width: int = 256, depth: int = 3,
                 norm: str = "none", act: str = "relu", pieces: int = 5, batch_norm: bool = False):
        super().__init__()
        self.net = _mlp(latent_dim, shape[0], width, depth, act, pieces, batch_norm)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


@register("net", "mlp-d", role="discriminator", data=("points",), output="score", options=("minibatch_std",))
class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int = 256, depth: int = 3, norm: str = "none",
                 spectral_norm: bool = False, act: str = "relu", pieces: int = 5, batch_norm: bool = False,
                 minibatch_std: int = 0):
        super().__init__()
        self.net = _mlp(shape[0], 1, width, depth, act, pieces, batch_norm, minibatch_std)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
