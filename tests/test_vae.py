"""VAE family: ELBO / KL / IWAE against direct computations on tiny models, observation models."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from genlab import config as C
from genlab.config import ConfigError
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.families.vae import gaussian_kl, load_test_images, log_normal
from genlab.nets.vae import DiscretisedGaussian, DiscretisedLogistic


def _family(binarized=True, shape=(1, 8, 8), extra=()):
    cfg = C.resolve("vae", sets=["vae.width=4", "vae.latent_dim=3", *extra])
    info = DataInfo(name="t", kind="image", shape=shape, num_classes=10, binarized=binarized)
    torch.manual_seed(0)
    return build_family(cfg, info, torch.device("cpu"))


def _images(n=6, shape=(1, 8, 8), binarized=True, seed=0):
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return (x > 127).to(torch.uint8) * 255 if binarized else x


def test_elbo_equals_a_direct_computation():
    fam = _family()
    x = _images()
    elbo = fam.elbo(x, torch.Generator().manual_seed(3))
    with torch.no_grad():
        mean, logvar = fam.encoder(x.float() / 127.5 - 1)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
        log_px_z = Bernoulli(logits=fam.decoder(z)).log_prob((x > 0).float()).flatten(1).sum(1)
        kl = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(elbo.detach(), log_px_z - kl, rtol=1e-5, atol=1e-4)


def test_kl_term_matches_the_closed_form_and_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 0.5
    std = torch.exp(0.5 * logvar)
    closed = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mean, logvar), closed)
    z = mean + std * torch.randn(200_000, 4, 5, generator=g)
    mc = (log_normal(z, mean, logvar) - log_normal(z)).mean(0)
    torch.testing.assert_close(mc, closed, atol=0.03, rtol=0.01)


def test_iwae_estimate_is_the_log_mean_importance_weight():
    fam = _family()
    x = _images(1)
    k = 7
    got = fam.log_likelihood(x, k=k, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean, logvar = fam.encoder(x.float() / 127.5 - 1)
        std = torch.exp(0.5 * logvar)
        z = mean[:, None] + std[:, None] * torch.randn(1, k, 3, generator=torch.Generator().manual_seed(1))
        logits = fam.decoder(z[0])
        log_w = (Bernoulli(logits=logits).log_prob((x > 0).float().expand(k, -1, -1, -1)).flatten(1).sum(1)
                 + Normal(0.0, 1.0).log_prob(z[0]).sum(1) - Normal(mean, std).log_prob(z[0]).sum(1))
    torch.testing.assert_close(got, (torch.logsumexp(log_w, 0) - math.log(k))[None], rtol=1e-5, atol=1e-4)


def test_iwae_in_chunks_equals_one_pass():
    x = _images(1)
    one = _family(extra=["vae.iw_batch=1000"]).log_likelihood(x, k=300, generator=torch.Generator().manual_seed(2))
    chunked = _family(extra=["vae.iw_batch=64"]).log_likelihood(x, k=300, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(one, chunked, rtol=1e-5, atol=1e-4)


def test_iwae_is_above_the_elbo_and_increases_with_k_on_average():
    fam = _family()
    x = _images(8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([fam.elbo(x, g) for _ in range(400)]).mean(0)  # E_q[ELBO], analytic KL
        est = {k: torch.stack([fam.log_likelihood(x, k=k, generator=g) for _ in range(30)]).mean(0)
               for k in (1, 10, 100)}
    assert (est[100] >= elbo).all()
    means = [est[k].mean().item() for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2], means
    assert abs(means[0] - elbo.mean().item()) < 0.05 * abs(elbo.mean().item())  # k = 1 is an ELBO


@pytest.mark.parametrize("obs, cdf", [(DiscretisedLogistic, torch.sigmoid),
                                      (DiscretisedGaussian, lambda t: Normal(0.0, 1.0).cdf(t))])
def test_discretised_likelihoods_are_bin_probabilities_that_sum_to_one(obs, cdf):
    mean_raw = torch.tensor([-3.0, -0.2, 0.0, 0.7, 2.5]).double()
    log_scale = torch.tensor([-6.0, -3.0, -1.5, -0.5, 0.3]).double()
    out = torch.stack([mean_raw, log_scale])[None, :, :, None].expand(256, 2, 5, 1)  # (256, 2, 5, 1)
    values = torch.arange(256, dtype=torch.uint8)[:, None, None, None].expand(256, 1, 5, 1)
    per_pixel = torch.stack([obs.log_prob(out[:, :, i:i + 1], values[:, :, i:i + 1]) for i in range(5)], 1)
    torch.testing.assert_close(per_pixel.exp().sum(0), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)
    m, s = torch.tanh(mean_raw), torch.exp(log_scale)
    xv = torch.arange(256).double()[:, None] / 127.5 - 1
    hi = torch.where(xv > 0.999, torch.ones(()).double(), cdf((xv + 1 / 255 - m) / s))
    lo = torch.where(xv < -0.999, torch.zeros(()).double(), cdf((xv - 1 / 255 - m) / s))
    direct = hi - lo
    ok = direct > 1e-12  # where the direct difference is representable
    torch.testing.assert_close(per_pixel.exp()[ok], direct[ok], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("decoder", ["logistic", "gaussian"])
def test_grey_decoders_train_and_give_finite_likelihoods(decoder):
    fam = _family(binarized=False, extra=[f"vae.decoder={decoder}"])
    x = _images(4, binarized=False)
    losses = fam.train_step((x, None), 1)
    assert losses["nll_bound_nats"] > 0 and math.isfinite(losses["bits_per_dim"])
    ll = fam.log_likelihood(x, k=5)
    assert ll.shape == (4,) and torch.isfinite(ll).all() and (ll < 0).all()


def test_bernoulli_decoder_needs_binarized_data():
    with pytest.raises(ConfigError, match="binarized"):
        _family(binarized=False, extra=["vae.decoder=bernoulli"])


def test_kl_warmup_ramps_beta_linearly():
    fam = _family(extra=["vae.kl_warmup=100", "vae.beta=0.5"])
    assert [fam.beta_at(s) for s in (0, 50, 100, 1000)] == [0.0, 0.25, 0.5, 0.5]


def test_reconstruct_encode_and_interpolate_between_test_images():
    cfg = C.resolve("vae", sets=["vae.width=4", "vae.latent_dim=3"])
    info = DataInfo(name="mnist", kind="image", shape=(1, 28, 28), num_classes=10, binarized=True)
    fam = build_family(cfg, info, torch.device("cpu"))
    x = _images(3, (1, 28, 28))
    assert fam.encode(x).shape == (3, 3)
    r = fam.reconstruct(x)
    assert r.shape == (3, 1, 28, 28) and r.min() >= 0 and r.max() <= 1
    grid = fam.interpolate(2, 5, torch.Generator().manual_seed(0))
    assert grid.shape == (10, 1, 28, 28)
    # rows run from the reconstruction of one seeded test image to that of another
    ends = load_test_images(cfg.data, 4, torch.Generator().manual_seed(0))
    rows = grid.view(2, 5, 1, 28, 28)
    torch.testing.assert_close(rows[:, 0], fam.reconstruct(ends[:2]))
    torch.testing.assert_close(rows[:, -1], fam.reconstruct(ends[2:]))
