"""SN-GAN, LSGAN and EBGAN pieces: losses against hand values, spectral norm, pulling-away term,
the ResNet and auto-encoder nets, and one training step of each variant through the GAN family."""
import itertools

import pytest
import torch
from torch import nn

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.losses.adversarial import pulling_away
from genlab.nets.autoencoder import Energy
from genlab.registry import get


def test_least_squares_with_configurable_targets():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    ls = get("loss", "least_squares")(a=-1.0, b=1.0, c=0.0)
    # d: 0.5 * mean((r - 1)^2) + 0.5 * mean((f + 1)^2) = 0.5 * (1 + 1) / 2 + 0.5 * (0 + 4) / 2
    assert ls.d_loss(r, f).item() == pytest.approx(0.5 + 1.0)
    # g: 0.5 * mean((f - 0)^2) = 0.5 * (1 + 1) / 2
    assert ls.g_loss(f).item() == pytest.approx(0.5)


def test_energy_loss_against_hand_values():
    loss = get("loss", "energy")(margin=1.0, pt_weight=0.1)
    codes = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos^2 = 1/2 for the one pair (both orders)
    real = Energy(torch.tensor([0.2, 0.4]), codes)
    fake = Energy(torch.tensor([0.5, 1.5]), codes)
    # d = mean(0.2, 0.4) + mean(relu(1 - 0.5), relu(1 - 1.5)) = 0.3 + 0.25
    assert loss.d_loss(real, fake).item() == pytest.approx(0.55)
    # g = mean(0.5, 1.5) + 0.1 * 0.5
    assert loss.g_loss(fake).item() == pytest.approx(1.0 + 0.05)
    assert get("loss", "energy")(pt_weight=0.0).g_loss(fake).item() == pytest.approx(1.0)


def test_pulling_away_matches_direct_formula():
    torch.manual_seed(0)
    s = torch.randn(7, 3, 2, 2)
    flat = s.flatten(1)
    terms = [(flat[i] @ flat[j] / (flat[i].norm() * flat[j].norm())) ** 2
             for i, j in itertools.permutations(range(7), 2)]
    assert pulling_away(s).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    assert pulling_away(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-7)  # orthogonal codes
    assert pulling_away(torch.ones(3, 5)).item() == pytest.approx(1.0)  # parallel codes
    with pytest.raises(ValueError):
        pulling_away(torch.ones(1, 5))


@pytest.mark.parametrize("net, shape", [("dcgan-d", (1, 28, 28)), ("resnet-d", (3, 32, 32)),
                                        ("autoencoder-d", (1, 28, 28)), ("patchgan-d", (3, 32, 32))])
def test_spectral_norm_bounds_every_layer(net, shape):
    torch.manual_seed(0)
    D = get("net", net)(shape, width=8, norm="none", spectral_norm=True)
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert layers and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    with torch.no_grad():  # make every raw weight's spectral norm far from 1
        for m in layers:
            m.parametrizations.weight.original.mul_(3.0)
    x = torch.randn(2, *shape)
    D.train()
    for _ in range(15):  # one power iteration per forward in training mode
        D(x)
    D.eval()
    for m in layers:
        w = m.weight  # the normalised weight
        # torch reshapes ConvTranspose weights along dim 1 (out channels); either way sigma ~ 1
        mat = (w.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else w).flatten(1)
        sigma = torch.linalg.matrix_norm(mat.detach(), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05), f"{m}: sigma {sigma}"
        raw = m.parametrizations.weight.original
        raw_sigma = torch.linalg.matrix_norm(
            (raw.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else raw).flatten(1).detach(), ord=2)
        assert raw_sigma.item() > 1.5  # the bound comes from the parametrization, not the raw weight


@pytest.mark.parametrize("size, base", [(28, 7), (32, 4), (64, 4)])
def test_resnet_nets_are_sized_from_the_data(size, base):
    G = get("net", "resnet-g")((3, size, size), latent_dim=16, width=8)
    D = get("net", "resnet-d")((3, size, size), width=8)
    assert G.base == base
    x = G(torch.randn(2, 16))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert D(x).shape == (2,)


def test_autoencoder_d_returns_energy_and_code():
    D = get("net", "autoencoder-d")((1, 28, 28), width=8)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    out = D(x)
    assert isinstance(out, Energy) and out.energy.shape == (3,) and out.code.shape[0] == 3
    recon = D.decoder(D.encoder(x))
    assert torch.allclose(out.energy, (recon - x).pow(2).mean(dim=(1, 2, 3)))


def _step(model, shape, sets=()):
    cfg = C.resolve(model, sets=["train.batch_size=4", *sets])
    torch.manual_seed(0)
    fam = build_family(cfg, DataInfo("random", "image", shape), torch.device("cpu"))
    before = [p.detach().clone() for p in fam.G.parameters()]
    n = cfg.train.batch_size * fam.batches_per_step
    logs = fam.train_step((torch.randint(0, 256, (n, *shape), dtype=torch.uint8), torch.zeros(n, dtype=torch.long)), 1)
    moved = any(not torch.equal(a, b) for a, b in zip(before, fam.G.parameters()))
    return cfg, fam, logs, moved


def test_sngan_with_resnet_nets_trains_a_step_at_32x32():
    cfg, fam, logs, moved = _step("sngan", (3, 32, 32), ["gan.generator=resnet-g", "gan.discriminator=resnet-d",
                                                          "gan.g_width=16", "gan.d_width=16"])
    assert cfg.options.loss == "hinge" and cfg.options.spectral_norm
    assert tuple(cfg.options.d_optim.betas) == (0.0, 0.9) and cfg.options.d_optim.lr == 2e-4
    assert type(fam.G).__name__ == "ResNetGenerator" and type(fam.D).__name__ == "ResNetDiscriminator"
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logs.values()) and moved
    assert fam.sample(3).shape == (3, 3, 32, 32)


def test_lsgan_and_ebgan_configs_train_a_step():
    cfg, fam, logs, moved = _step("lsgan", (1, 28, 28))
    assert cfg.options.loss_args == {"a": 0.0, "b": 1.0, "c": 1.0} and moved
    cfg, fam, logs, moved = _step("ebgan", (1, 28, 28))
    assert cfg.options.loss_args["pt_weight"] == 0.1 and moved
    assert logs["d_real"] >= 0 and logs["d_fake"] >= 0  # the logged score is the energy
