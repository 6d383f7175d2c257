import math

import pytest
import torch
from torch import nn

from genlab.registry import get


def test_gradient_penalty_matches_hand_computation():
    # D(x) = sum(w * x) + b has gradient w everywhere, so GP = weight * (||w|| - 1)^2 exactly.
    torch.manual_seed(0)
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5

    class Linear(nn.Module):
        def forward(self, x):
            return (x * w).sum(1) + 1.0

    gp = get("regularizer", "gradient_penalty")(weight=10.0)
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    assert gp(Linear(), real, fake).item() == pytest.approx(10.0 * (5.0 - 1.0) ** 2)


def test_gradient_penalty_per_sample_interpolation_any_channels():
    # D(x) = 0.5 * sum(x^2): grad = x_hat, so the penalty depends on each sample's own eps.
    class Quad(nn.Module):
        def forward(self, x):
            return 0.5 * x.pow(2).flatten(1).sum(1)

    gp = get("regularizer", "gradient_penalty")(weight=1.0)
    real = torch.ones(5, 3, 4, 4)  # 3 channels
    fake = torch.zeros(5, 3, 4, 4)
    torch.manual_seed(1)
    value = gp(Quad(), real, fake)
    torch.manual_seed(1)
    eps = torch.rand(5, 1, 1, 1)  # one draw per sample, broadcast over C, H, W
    norms = (eps.flatten() * math.sqrt(3 * 16))
    assert value.item() == pytest.approx(((norms - 1) ** 2).mean().item(), rel=1e-5)


def test_losses_against_hand_values():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731
    ns = get("loss", "non_saturating")()
    assert ns.d_loss(r, f).item() == pytest.approx((sp(-2) + sp(0)) / 2 + (sp(-1) + sp(1)) / 2, rel=1e-6)
    assert ns.g_loss(f).item() == pytest.approx((sp(1) + sp(-1)) / 2, rel=1e-6)
    w = get("loss", "wasserstein")()
    assert w.d_loss(r, f).item() == pytest.approx(0.0 - 1.0)
    assert w.g_loss(f).item() == pytest.approx(0.0)
    h = get("loss", "hinge")()
    assert h.d_loss(r, f).item() == pytest.approx((0 + 1) / 2 + (0 + 2) / 2)
    ls = get("loss", "least_squares")(a=0.0, b=1.0, c=1.0)
    assert ls.d_loss(r, f).item() == pytest.approx(0.5 * (1 + 1) / 2 + 0.5 * (1 + 1) / 2)
    assert ls.g_loss(f).item() == pytest.approx(0.5 * (4 + 0) / 2)
