"""Diffusion and flow matching, against closed forms: the noise schedules, q(x_t | x_0), the bound's
pieces, DDIM's deterministic inversion, flow matching's optimal velocity between Gaussians, the
probability-flow likelihood of a known Gaussian, exact vs Hutchinson divergence, and every sampler
through the CLI."""
import math

import pytest
import torch
from typer.testing import CliRunner

from genlab import config as C
from genlab.cli import app
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.families.flow_matching import exact_divergence, hutchinson_divergence, ode_log_likelihood
from genlab.noise import NoiseSchedule, discretized_gaussian_log_likelihood

POINTS = DataInfo("gauss", "points", (2,))


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_endpoints_and_monotonicity(kind):
    s = NoiseSchedule(kind, 1000)
    ab = s.alpha_bar
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all() and ab[-1] < 1e-4
    if kind == "linear":
        assert torch.allclose(s.betas[1:], torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
        assert ab[-1] == pytest.approx(torch.prod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)).item())
    else:  # Nichol & Dhariwal: abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2) / f(0), betas clipped at 0.999
        f = lambda t: math.cos(((t / 1000 + 0.008) / 1.008) * math.pi / 2) ** 2  # noqa: E731
        assert ab[500].item() == pytest.approx(f(500) / f(0), rel=1e-9)
        assert s.betas.max() <= 0.999


def test_q_sample_moments_by_monte_carlo():
    s = NoiseSchedule("linear", 1000)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for step in (1, 250, 999):
        t = torch.full((len(x0),), step)
        xt = s.q_sample(x0, t, torch.randn_like(x0, generator=torch.Generator().manual_seed(step)))
        ab = s.alpha_bar[step].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=4 * math.sqrt((1 - ab) / len(x0)))
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_posterior_and_bound_pieces_against_hand_computations():
    s = NoiseSchedule("linear", 10)
    x0, xt, t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.2]], dtype=torch.float64), torch.tensor([4])
    ab, ab_prev, beta = s.alpha_bar[4].item(), s.alpha_bar[3].item(), s.betas[4].item()
    mean, var = s.posterior(x0, xt, t)
    assert mean.item() == pytest.approx(math.sqrt(ab_prev) * beta / (1 - ab) * 0.3
                                        + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * -0.2)
    assert var.item() == pytest.approx(beta * (1 - ab_prev) / (1 - ab))
    # KL between two Gaussians of the same variance: (mu_q - mu_p)^2 / (2 var); eps equal to the truth -> 0
    eps_true = (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    assert s.kl_term(x0, xt, t, eps_true).item() == pytest.approx(0.0, abs=1e-12)
    # L_T: KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) by hand
    abT = s.alpha_bar[10].item()
    hand = 0.5 * ((1 - abT) + abT * 0.09 - 1 - math.log(1 - abT))
    assert s.prior_kl(x0).item() == pytest.approx(hand)


def test_discretised_decoder_and_bits_per_dim_by_hand():
    # one pixel at level 128 (x = 128/127.5 - 1), decoder N(x, 0.01^2): the bin of width 2/255 holds
    # P = Phi(1/255 / 0.01) - Phi(-1/255 / 0.01)
    x = torch.tensor([[128 / 127.5 - 1]], dtype=torch.float64)
    logp = discretized_gaussian_log_likelihood(x, x, torch.full_like(x, math.log(0.01)))
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    assert logp.item() == pytest.approx(math.log(phi(0.3921568) - phi(-0.3921568)), rel=1e-6)
    edge = torch.tensor([[1.0]], dtype=torch.float64)  # the top bin reaches +inf
    assert discretized_gaussian_log_likelihood(edge, edge, torch.full_like(edge, math.log(0.01))).item() == \
        pytest.approx(math.log(1 - phi(-0.3921568)), rel=1e-6)
    from genlab.families.base import bits_per_dim

    assert bits_per_dim(784 * math.log(2) * 1.5, 784) == pytest.approx(1.5)


# ----------------------------------------------------------------------------- a tiny trained model
def _gaussian_batches(n, mu=(2.0, -1.0), std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(mu) + std * torch.randn(n, 2, generator=g)


def _trained(model, steps=1500, **sets):
    key = "diffusion" if model == "ddpm" else "flow-matching"
    # raw coordinates: the ring8 section's sinusoidal features only add noise on one broad Gaussian
    sets = {f"{key}.optim.lr": 1e-3, f"{key}.warmup_steps": 50, f"{key}.coord_features": 0, **sets}
    extra = [f"{k}={v}" for k, v in sets.items()]
    cfg = C.resolve(model, sets=["data.name=ring8", "train.batch_size=256", *extra])
    torch.manual_seed(0)
    fam = build_family(cfg, POINTS, torch.device("cpu"))
    for step in range(1, steps + 1):
        fam.train_step((_gaussian_batches(256, seed=step), torch.zeros(256, dtype=torch.long)), step)
    return fam


@pytest.fixture(scope="module")
def ddpm():
    return _trained("ddpm", **{"diffusion.T": 100, "diffusion.width": 64})


def test_ddim_with_eta_0_is_deterministic_and_inverts(ddpm):
    a = ddpm.sample(64, torch.Generator().manual_seed(0), sampler="ddim", eta=0.0, sample_steps=100)
    b = ddpm.sample(64, torch.Generator().manual_seed(0), sampler="ddim", eta=0.0, sample_steps=100)
    assert torch.equal(a, b)
    x = _gaussian_batches(64, seed=99)
    z = ddpm.encode(x, sample_steps=100)
    back = ddpm.generate(z, sampler="ddim", eta=0.0, sample_steps=100)
    assert (back - x).norm(dim=1).median() < 0.05 * x.norm(dim=1).median(), "encode -> decode round trip"
    assert (z - x).norm(dim=1).median() > 0.5, "the encoding is not the data itself"


def test_samplers_with_the_exact_denoiser_draw_the_target_gaussian(ddpm, monkeypatch):
    """For Gaussian data N(mu, s^2 I) the optimal eps is known: E[eps | x_t] =
    sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar); with it, the ancestral chain and DDIM
    must draw the target (DDIM with few steps shrinks the spread a little, a known discretisation effect)."""
    mu, s2, sched = torch.tensor([2.0, -1.0]), 0.25, ddpm.schedule

    def eps_star(x, t, y, guidance=0.0):
        ab = sched.at(sched.alpha_bar, t, x)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)

    monkeypatch.setattr(ddpm, "_eps", eps_star)
    for sampler, steps, std_tol in (("ddpm", None, 0.03), ("ddim", 50, 0.05), ("ddim", 20, 0.1)):
        x = ddpm.sample(20000, torch.Generator().manual_seed(1), sampler=sampler, sample_steps=steps)
        assert torch.allclose(x.mean(0), mu, atol=0.03), (sampler, steps, x.mean(0))
        assert torch.allclose(x.std(0), torch.tensor([0.5, 0.5]), atol=std_tol), (sampler, steps, x.std(0))


def test_the_trained_ddpm_samples_the_training_gaussian(ddpm):
    x = ddpm.sample(2000, torch.Generator().manual_seed(1), sampler="ddpm")
    assert torch.allclose(x.mean(0), torch.tensor([2.0, -1.0]), atol=0.15)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 0.5]), atol=0.15)


def test_the_2d_denoisers_coordinate_features_are_sinusoids_of_25_x():
    """The toy configs' coord_features: the first layer sees [x, cos(25 x f_k), sin(25 x f_k) per
    coordinate, time embedding], f_k = 10000^(-k / (F/2)) -- checked against a hand computation."""
    from genlab.nets.unet import MLPDenoiser
    net, feats = MLPDenoiser((2,), width=16, depth=2, coord_features=4), {}
    net.net[0].register_forward_pre_hook(lambda m, args: feats.update(inp=args[0]))
    x = torch.tensor([[0.3, -1.2]])
    net(x, torch.tensor([0.5]))
    f = torch.tensor([1.0, 10_000.0 ** -0.5])
    want = [x[0]] + [torch.cat([torch.cos(25 * x[0, i] * f), torch.sin(25 * x[0, i] * f)]) for i in range(2)]
    assert feats["inp"].shape == (1, 2 * 5 + 128)
    assert torch.allclose(feats["inp"][0, :10], torch.cat(want), atol=1e-5)
    assert MLPDenoiser((2,), width=16, depth=2).net[0].in_features == 2 + 128  # off: raw coordinates


def test_the_unets_input_conv_reads_x_t_in_float32_under_bf16_autocast():
    """At small t, eps is read from noise of ~0.01 on pixels of ~1, which bf16 (8-bit mantissa) rounds
    away: a 1e-3 change of x_t must reach the input conv's output as the float32 conv of that change."""
    from genlab.nets.unet import UNet
    torch.manual_seed(0)
    net, outs = UNet((1, 28, 28), width=8, mults=(1, 2)), []
    net.inp.register_forward_hook(lambda m, args, out: outs.append(out))
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    dx = 1e-3 * torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, torch.full((2,), 0.001))
        net(x + dx, torch.full((2,), 0.001))
    assert y.dtype == torch.bfloat16  # the rest of the net still runs in bf16
    want = torch.nn.functional.conv2d(dx, net.inp.weight, padding=1)
    assert outs[0].dtype == torch.float32
    assert torch.allclose(outs[1] - outs[0], want, atol=1e-6)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "bf16"])
def test_the_unet_computes_the_same_in_channels_last(amp):
    """In channels_last under bf16, the UNet's GroupNorms normalise in the contiguous layout (the
    CPU's channels_last kernel is slow there): the layout must change neither output nor gradients."""
    from genlab.nets.unet import UNet
    outs, grads, seen = {}, {}, []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = UNet((1, 28, 28), width=8, mults=(1, 2), patch=2)
        torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # not the zero start: gradients reach every layer
        net = net.to(memory_format=layout)
        net.down[0][0].n1.register_forward_pre_hook(
            lambda m, args: seen.append((args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
        x = (torch.rand(4, 1, 28, 28) * 2 - 1).contiguous(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            outs[layout] = out = net(x, torch.rand(4))
        out.float().square().sum().backward()
        grads[layout] = [p.grad for p in net.parameters()]
    # the channels_last run really handed a GroupNorm a channels_last map (in bf16 under autocast)
    assert seen[1] == (torch.bfloat16 if amp else torch.float32, True)
    assert all(g.abs().sum() > 0 for g in grads[torch.channels_last])
    # float32: reductions in another order (gradients reach ~500 here; the biases just before a
    # GroupNorm have true gradient 0 and carry rounding noise of ~1e-4)
    tol = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-4, atol=1e-3)
    assert torch.allclose(outs[torch.contiguous_format].float(), outs[torch.channels_last].float(), **tol)
    for a, b in zip(grads[torch.contiguous_format], grads[torch.channels_last]):
        assert torch.allclose(a, b, **tol)


# ----------------------------------------------------------------------------- flow matching
def _ot_velocity(mu: torch.Tensor, s: float):
    """The exact marginal velocity of the OT path N(0, I) -> N(mu, s^2 I) (sigma_min = 0):
    p_t = N(t mu, ((1 - t)^2 + t^2 s^2) I), v = mu + ((t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2)) (x - t mu)."""
    def v(x, t):
        tt = t.reshape(-1, 1).to(x.dtype)
        var = (1 - tt) ** 2 + tt ** 2 * s ** 2
        return mu.to(x.dtype) + (tt * s ** 2 - (1 - tt)) / var * (x - tt * mu.to(x.dtype))
    return v


def test_flow_matching_learns_the_optimal_velocity_field():
    fam = _trained("flow-matching", **{"flow-matching.width": 64})
    mu, exact = torch.tensor([2.0, -1.0]), _ot_velocity(torch.tensor([2.0, -1.0]), 0.5)
    g = torch.Generator().manual_seed(5)
    t = torch.rand(2000, generator=g) * 0.9 + 0.05
    x = (1 - t[:, None]) * torch.randn(2000, 2, generator=g) + t[:, None] * (mu + 0.5 * torch.randn(2000, 2, generator=g))
    with torch.no_grad():
        err = (fam.velocity(x, t) - exact(x, t)).norm(dim=1).mean()
    assert err < 0.25 * exact(x, t).norm(dim=1).mean(), f"mean error {err:.3f}"


def test_loss_at_the_exact_field_equals_its_closed_form():
    """E_t E||x1 - x0 - v*(x_t, t)||^2 at the optimal field is the conditional variance of the target,
    per dimension Var(u) - Cov(u, x_t)^2 / Var(x_t) = (1 + s^2) - (t s^2 - (1 - t))^2 / ((1-t)^2 + t^2 s^2)."""
    mu, s, n = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5, 400_000
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(n, 2, generator=g, dtype=torch.float64), mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1
    mc = ((x1 - x0) - _ot_velocity(mu, s)(xt, t)).pow(2).sum(1).mean().item()
    ts = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    per_dim = (1 + s ** 2) - (ts * s ** 2 - (1 - ts)) ** 2 / ((1 - ts) ** 2 + ts ** 2 * s ** 2)
    closed = 2 * torch.trapezoid(per_dim, ts).item()
    assert mc == pytest.approx(closed, rel=0.01)


def test_ode_log_likelihood_of_a_known_gaussian_is_its_log_density():
    mu, s = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5
    x = mu + s * torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    analytic = torch.distributions.Normal(mu, s).log_prob(x).sum(1)
    got = ode_log_likelihood(_ot_velocity(mu, s), x, exact=True, tol=1e-8)
    assert torch.allclose(got, analytic, atol=1e-4)
    probes = [ode_log_likelihood(_ot_velocity(mu, s), x, exact=False, tol=1e-8) for _ in range(3)]
    assert torch.allclose(torch.stack(probes).mean(0), analytic, atol=1e-3)  # linear field: Hutchinson is exact
    with torch.inference_mode():  # as the evaluation passes call it: the divergence must still get gradients
        for exact in (True, False):
            got = ode_log_likelihood(_ot_velocity(mu, s), x, exact=exact, tol=1e-8)
            assert torch.allclose(got, analytic, atol=1e-3), exact


def test_exact_divergence_agrees_with_hutchinson_within_its_error():
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 6))
    f = lambda x: net(x)  # noqa: E731
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    _, exact = exact_divergence(f, x)
    est = torch.stack([hutchinson_divergence(f, x, torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(i)).float() * 2 - 1)[1]
                       for i in range(2000)])
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - exact).abs() < 4 * se + 1e-6).all()
    jac = torch.stack([torch.autograd.functional.jacobian(net, x[i]).trace() for i in range(4)])
    assert torch.allclose(exact, jac, atol=1e-5)  # against the brute-force Jacobian


# ----------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("model, samplers", [("ddpm", [["--sampler", "ddpm", "--sample-steps", "5"],
                                                        ["--sampler", "ddim", "--sample-steps", "5", "--eta", "0.5"]]),
                                              ("flow-matching", [["--sampler", "euler", "--sample-steps", "3"],
                                                                 ["--sampler", "heun", "--sample-steps", "3"],
                                                                 ["--sampler", "adaptive"]])])
def test_every_sampler_through_the_cli(tmp_path, model, samplers):
    key = "diffusion" if model == "ddpm" else "flow-matching"
    sets = [f"{key}.width=8", f"{key}.mults=[1, 2]", "train.batch_size=4", "train.grid_size=2",
            "train.sample_every=100", f"{key}.sample_steps=3", "train.ema_decay=0"]
    args = ["train", model, "--steps", "2", "--out", str(tmp_path), "--name", "r", "--no-progress",
            *[x for s in sets for x in ("--set", s)]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    for i, options in enumerate(samplers):
        out = tmp_path / f"s{i}.png"
        res = CliRunner().invoke(app, ["sample", str(tmp_path / "r"), "-n", "2", "--out", str(out), *options])
        assert res.exit_code == 0 and out.is_file(), res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "r"), "-n", "4", "--metrics", "none", "--n-test", "4",
                                   "--no-save", "--json"])  # bits/dim through the real evaluation path
    assert res.exit_code == 0 and '"bits_per_dim"' in res.output, res.output
    res = CliRunner().invoke(app, ["sample", str(tmp_path / "r"), "-n", "2", "--sampler", "bogus"])
    assert res.exit_code == 2 and "--sampler 'bogus'" in res.output
    if model == "flow-matching":
        res = CliRunner().invoke(app, ["sample", str(tmp_path / "r"), "-n", "2", "--eta", "0.5"])
        assert res.exit_code == 2 and "not a sampling option" in res.output
