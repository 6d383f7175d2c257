"""Discriminator regularizers. Each is called as reg(D, real, fake, scale=None) and returns a weighted
term. `scale` (the fp16 loss scaler's `Update.scale`, or None) scales the output before the term's own
autograd.grad and is divided out again, so fp16 input gradients do not flush to zero.

Configs name them as a list: `regularizers: [{name: gradient_penalty, weight: 10}]`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..parallel import shared_rand
from ..registry import register


def input_gradient(output: Tensor, x: Tensor, scale: Callable[[Tensor], Tensor] | None) -> Tensor:
    """d output.sum() / d x with create_graph (for a penalty that is itself backpropagated)."""
    out = output.sum()
    if scale is None:
        return torch.autograd.grad(out, x, create_graph=True)[0]
    (grad,) = torch.autograd.grad(scale(out), x, create_graph=True)
    return grad / scale(torch.ones((), device=grad.device))


@register("regularizer", "gradient_penalty", accepts=("score",))
class GradientPenalty:
    """WGAN-GP (Gulrajani et al. 2017): weight * E[(||grad D(x_hat)||_2 - target)^2] with
    x_hat = eps * real + (1 - eps) * fake and eps ~ U[0, 1] drawn once PER SAMPLE (not per pixel).
    Works for any input shape: images of any channel count, or 2-D points."""

    name = "gp"

    def __init__(self, weight: float = 10.0, target: float = 1.0):
        self.weight, self.target = weight, target

    def __call__(self, D: nn.Module, real: Tensor, fake: Tensor, scale=None) -> Tensor:
        # eps for this rank's rows of the global batch: the same penalty at any world size
        eps = shared_rand(real.shape[0], (1,) * (real.dim() - 1), real.device)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad = input_gradient(D(x_hat), x_hat, scale)
        norms = grad.flatten(1).norm(2, dim=1)
        return self.weight * ((norms - self.target) ** 2).mean()


@register("regularizer", "r1", accepts=("score",))
class R1Penalty:
    """R1 (Mescheder et al. 2018): weight/2 * E||grad D(real)||^2 on real data only."""

    name = "r1"

    def __init__(self, weight: float = 10.0):
        self.weight = weight

    def __call__(self, D: nn.Module, real: Tensor, fake: Tensor, scale=None) -> Tensor:
        real = real.detach().requires_grad_(True)
        grad = input_gradient(D(real), real, scale)
        return 0.5 * self.weight * grad.flatten(1).pow(2).sum(1).mean()
