"""Flow layers, RealNVP / Glow and the flow family: exact inverses, log-determinants checked against
brute-force autograd Jacobians, ActNorm initialisation and resume, and the units (nats, bits/dim,
the discretisation term) checked by hand."""
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from genlab import config as C
from genlab.cli import app
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.families.flow import bits_per_dim, dequantize, discretization_nats
from genlab.nets.flow_models import standard_normal_logpdf
from genlab.nets.flows import (ActNorm, AffineCoupling, InvConv1x1, LearnedPrior, Preprocess, Split,
                               Squeeze, ZeroConv2d)
from genlab.registry import get


def _perturb(module: nn.Module, scale: float = 0.05) -> nn.Module:
    """Move every parameter off its (often identity / zero) initialisation, deterministically."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _ready(layer: nn.Module, shape) -> nn.Module:
    """Initialise ActNorms on a batch (training mode), perturb, switch to eval."""
    torch.manual_seed(0)
    layer.train()
    with torch.no_grad():
        layer(torch.randn(8, *shape))
    return _perturb(layer).eval()


# (name, factory, input shape (C, H, W)); coupling nets are tiny so the Jacobians stay cheap.
LAYERS = [
    ("squeeze", lambda: Squeeze(), (2, 4, 4)),
    ("actnorm", lambda: ActNorm(3), (3, 4, 4)),
    ("invconv1x1", lambda: InvConv1x1(4), (4, 3, 3)),
    ("coupling-checker-sigmoid-0", lambda: AffineCoupling(1, 8, "checkerboard", 0, "sigmoid"), (1, 4, 4)),
    ("coupling-checker-tanh-1", lambda: AffineCoupling(2, 8, "checkerboard", 1, "tanh", res_blocks=1), (2, 4, 4)),
    ("coupling-channel-sigmoid-0", lambda: AffineCoupling(4, 8, "channel", 0, "sigmoid"), (4, 3, 3)),
    ("coupling-channel-tanh-1-odd", lambda: AffineCoupling(3, 8, "channel", 1, "tanh"), (3, 3, 3)),
    ("top-prior", lambda: LearnedPrior((2, 3, 3)), (2, 3, 3)),
    ("preprocess-centre", lambda: Preprocess(0.0), (1, 3, 3)),
    ("preprocess-logit", lambda: Preprocess(0.05), (1, 3, 3)),
]
SPLITS = [("split-learned", True), ("split-standard", False)]


def _input(name, shape, batch, dtype=torch.float32):
    torch.manual_seed(2)
    if name.startswith("preprocess"):
        return torch.rand(batch, *shape, dtype=dtype)  # dequantised data lives in [0, 1)
    return torch.randn(batch, *shape, dtype=dtype)


@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_layer_inverse_and_logdet(name, factory, shape):
    layer = _ready(factory(), shape)
    x = _input(name, shape, 5)
    z, ld = layer(x)
    assert z.shape[0] == 5 and z[0].numel() == x[0].numel() and ld.shape == (5,)
    assert torch.allclose(layer.inverse(z), x, atol=1e-4)

    layer = layer.double()
    x1 = _input(name, shape, 1, torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view(1, *shape))[0].flatten(), x1.flatten())
    brute = torch.linalg.slogdet(jac).logabsdet
    assert torch.allclose(layer(x1)[1][0], brute, atol=1e-8), (layer(x1)[1][0].item(), brute.item())


@pytest.mark.parametrize("learned", [s[1] for s in SPLITS], ids=[s[0] for s in SPLITS])
def test_split_inverse_and_logdet(learned):
    shape = (4, 3, 3)
    split = _perturb(Split(4, learned=learned)).eval()
    x = torch.randn(5, *shape)
    z1, eps, ld = split(x)
    assert z1.shape == (5, 2, 3, 3) and eps.shape == (5, 2, 3, 3)
    assert torch.allclose(split.inverse(z1, eps), x, atol=1e-5)

    split = split.double()

    def f(v):
        a, b, _ = split(v.view(1, *shape))
        return torch.cat([a.flatten(), b.flatten()])

    x1 = torch.randn(1, *shape, dtype=torch.float64)
    brute = torch.linalg.slogdet(torch.autograd.functional.jacobian(f, x1.flatten())).logabsdet
    assert torch.allclose(split(x1)[2][0], brute, atol=1e-8)
    if not learned:
        assert split(x1)[2][0] == 0


def test_learned_split_prior_starts_standard_normal():
    """Zero-initialised prior conv: mu = 0, sigma = 1 before training, so eps == z2."""
    x = torch.randn(2, 4, 3, 3)
    z1, eps, ld = Split(4, learned=True)(x)
    assert torch.equal(eps, x[:, 2:]) and torch.equal(ld, torch.zeros(2))


def test_zero_conv_and_coupling_start_from_zero_output():
    assert torch.count_nonzero(ZeroConv2d(3, 4)(torch.randn(2, 3, 5, 5))) == 0
    c = AffineCoupling(4, 8, "channel", 0, "tanh").train()
    x = torch.randn(3, 4, 5, 5)
    z, ld = c(x)
    assert torch.equal(z, x) and torch.equal(ld, torch.zeros(3))  # tanh coupling: exact identity at init


def test_checkerboard_coupling_keeps_the_conditioning_positions():
    c = _ready(AffineCoupling(1, 8, "checkerboard", 0, "sigmoid"), (1, 4, 4))
    x = torch.randn(2, 1, 4, 4)
    z, _ = c(x)
    keep = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 0
    assert torch.equal(z[:, 0][:, keep], x[:, 0][:, keep])
    assert not torch.allclose(z[:, 0][:, ~keep], x[:, 0][:, ~keep])


def test_invconv_is_lu_parameterised_and_starts_orthogonal():
    torch.manual_seed(0)
    conv = InvConv1x1(6)
    w = conv.weight()
    assert torch.allclose(w @ w.T, torch.eye(6), atol=1e-5)
    assert torch.allclose(conv.log_s.sum(), torch.linalg.slogdet(w).logabsdet, atol=1e-5)


# ------------------------------------------------------------------------------------- ActNorm


def test_actnorm_initialises_to_zero_mean_unit_variance_per_channel():
    torch.manual_seed(0)
    std, mean = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1), torch.tensor([3.0, -1.0, 10.0]).view(1, 3, 1, 1)
    x = torch.randn(64, 3, 5, 5) * std + mean
    norm = ActNorm(3).train()
    assert not norm.initialized
    z, _ = norm(x)
    assert norm.initialized
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    # later batches are not re-normalised
    z2, _ = norm(x * 3 + 1)
    assert not torch.allclose(z2.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=0.1)


def test_actnorm_flag_is_saved_and_not_redone_after_load_state_dict():
    x = torch.randn(16, 2, 4, 4) * 3 + 2
    norm = ActNorm(2).train()
    norm(x)
    assert "initialized" in norm.state_dict()
    restored = ActNorm(2).train()
    restored.load_state_dict(norm.state_dict())
    other = torch.randn(16, 2, 4, 4) * 0.1 - 5  # very different statistics
    assert torch.equal(restored(other)[0], norm(other)[0])
    assert torch.equal(restored.bias, norm.bias)


def test_actnorm_does_not_initialise_in_eval_mode():
    norm = ActNorm(2).eval()
    x = torch.randn(4, 2, 3, 3) + 5
    assert torch.equal(norm(x)[0], x) and not norm.initialized


def test_actnorm_after_a_conv_is_the_same_function_with_the_same_gradients():
    """after_conv folds the per-channel affine into the conv's weight and bias: the same initialisation
    from the first batch, the same outputs and the same gradients as norm(conv(x)), and no
    initialisation in eval mode."""
    torch.manual_seed(3)
    conv = _perturb(nn.Conv2d(3, 4, 3, padding=1)).double()
    x = (torch.randn(8, 3, 5, 5, dtype=torch.float64) * 2 + 1).requires_grad_()
    weights = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    out, grads = {}, {}
    norms = {"plain": ActNorm(4).double().train(), "folded": ActNorm(4).double().train()}
    for name, norm in norms.items():
        for step in range(2):  # the first call initialises, the second runs on the initialised norm
            y = norm(conv(x))[0] if name == "plain" else norm.after_conv(conv, x)
        out[name] = y
        grads[name] = torch.autograd.grad((y * weights).sum(), [x, *conv.parameters(), *norm.parameters()])
    assert torch.equal(norms["plain"].bias, norms["folded"].bias) and torch.equal(norms["plain"].logs, norms["folded"].logs)
    assert torch.allclose(out["plain"], out["folded"], atol=1e-12)
    for a, b in zip(grads["plain"], grads["folded"]):
        assert torch.allclose(a, b, atol=1e-10)
    idle = ActNorm(4).double().eval()
    assert torch.allclose(idle.after_conv(conv, x), conv(x)) and not idle.initialized


def test_zero_conv_scales_its_conv_by_exp_3_logs():
    zc = _perturb(ZeroConv2d(3, 4)).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.allclose(zc(x), zc.conv(x) * torch.exp(3 * zc.logs), atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_invconv_is_a_float32_1x1_convolution_in_its_inputs_layout(channels_last):
    """The channel mix runs as a matrix product: the 1x1 conv's values and gradients, the input's
    layout kept (output and gradient), and float32 under bf16 autocast (W is not rounded)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = _perturb(InvConv1x1(4))
    x = torch.randn(5, 4, 3, 3).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn(5, 4, 3, 3)
    z, ref = conv(x)[0], nn.functional.conv2d(x, conv.weight()[:, :, None, None])
    assert torch.allclose(z, ref, atol=1e-6) and z.is_contiguous(memory_format=fmt)
    gz, gref = (torch.autograd.grad(t, x, g)[0] for t in (z, ref))
    assert torch.allclose(gz, gref, atol=1e-6) and gz.is_contiguous(memory_format=fmt)
    assert conv.inverse(z).is_contiguous(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16, back = conv(x)[0], conv.inverse(z)
    assert z16.dtype == back.dtype == torch.float32 and torch.equal(z16, z)
    assert torch.allclose(back, x, atol=1e-5)


BF16 = pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 on this CPU")


@BF16
@pytest.mark.parametrize("name,factory,shape", LAYERS, ids=[n for n, _, _ in LAYERS])
def test_under_bf16_autocast_a_layer_keeps_the_flow_in_float32(name, factory, shape):
    """bf16 autocast may round what a coupling net computes (its scales and shifts), never the flow's
    own values or log-determinants: each layer's output and log-det come out float32, and its inverse
    (the same net on the same kept half) undoes it to float32 precision."""
    layer = _ready(factory(), shape)
    x = _input(name, shape, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, ld = layer(x)
        back = layer.inverse(z)
    assert z.dtype == ld.dtype == back.dtype == torch.float32
    assert torch.allclose(back, x, atol=1e-5)


@BF16
@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_a_bf16_model_log_likelihood_agrees_with_float32(name):
    """The whole model under bf16 autocast: float32 latents and log-det, log p(x) within 2% of
    float32's on a fixed batch (measured on these small perturbed models: at most 0.09% for glow,
    1.2% for realnvp). Through many layers the inverse is only approximate in bf16: a float32
    rounding difference in a coupling net's input can round it to the neighbouring bf16 value."""
    shape = (2, 8, 8)
    model = _model(name, shape, 2, hidden=16)
    x = torch.randn(16, *shape)
    lp32 = model.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, ld = model(x)
        lp16 = model.log_prob(x)
    assert z.dtype == ld.dtype == torch.float32
    assert not torch.equal(lp16, lp32)  # the nets did run in bf16
    assert torch.allclose(lp16, lp32, rtol=0.02), ((lp16 - lp32) / lp32).abs().max()


# ------------------------------------------------------------------------------------- models

MODELS = [("glow", (1, 8, 8), 2), ("glow", (3, 4, 4), 2), ("realnvp", (1, 8, 8), 2), ("realnvp", (3, 4, 4), 2),
          ("realnvp", (1, 8, 8), 3)]


def _model(name, shape, levels, **kw):
    torch.manual_seed(0)
    kw = {"depth": 2, "hidden": 8, **kw}
    model = get("net", name)(shape, levels=levels, **kw)
    return _ready(model, shape)


@pytest.mark.parametrize("name,shape,levels", MODELS)
def test_model_inverse_and_standard_normal_latent(name, shape, levels):
    model = _model(name, shape, levels)
    x = torch.randn(6, *shape)
    z, ld = model(x)
    assert z.shape == (6, math.prod(shape)) and ld.shape == (6,)
    assert torch.allclose(model.inverse(z), x, atol=1e-4)
    assert torch.allclose(model.log_prob(x), standard_normal_logpdf(z) + ld)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_model_logdet_matches_brute_force_jacobian(name):
    shape = (2, 4, 4)
    model = _model(name, shape, 2).double()
    x = torch.randn(1, *shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *shape))[0].flatten(), x.flatten())
    assert torch.allclose(model(x)[1][0], torch.linalg.slogdet(jac).logabsdet, atol=1e-8)


def test_models_reject_sizes_they_cannot_squeeze():
    with pytest.raises(ValueError, match="divisible by 8"):
        get("net", "glow")((1, 28, 28), levels=3)
    get("net", "realnvp")((1, 28, 28), levels=3)  # 28 -> 14 -> 7: two squeezes are fine


# ------------------------------------------------------------------------------------- family


def _family(shape=(1, 4, 4), model="glow", sets=(), binarized=False):
    cfg = C.resolve(model, sets=["flow.depth=1", "flow.hidden=8", "flow.levels=1", "flow.logit_alpha=0.0", *sets])
    info = DataInfo(name="random", kind="image", shape=shape, num_classes=10, binarized=binarized)
    torch.manual_seed(0)
    return build_family(cfg, info, torch.device("cpu"))


class _StandardNormal(nn.Module):
    """A stub flow: the identity, so log p(x) = sum N(x; 0, 1), computable by hand."""

    def log_prob(self, x):
        return standard_normal_logpdf(x)


@pytest.mark.parametrize("n_bits,alpha", [(8, 0.0), (5, 0.0), (8, 0.05)])
def test_nll_and_bits_per_dim_against_a_hand_computation(n_bits, alpha):
    fam = _family(sets=[f"flow.n_bits={n_bits}", f"flow.logit_alpha={alpha}"])
    fam.model = _StandardNormal()
    x = torch.tensor([0, 37, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).repeat(2, 1, 2, 2)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    d = 16
    nll = fam.nll(x, noise)

    total = []
    for img, u in zip(x, noise):
        lp = 0.0
        for v, e in zip(img.flatten().tolist(), u.flatten().tolist()):
            y = (v // 2 ** (8 - n_bits) + e) / 2 ** n_bits
            if alpha == 0:
                t, jac = y - 0.5, 0.0
            else:
                p = alpha + (1 - 2 * alpha) * y
                t, jac = math.log(p / (1 - p)), math.log((1 - 2 * alpha) / (p * (1 - p)))
            lp += -0.5 * t * t - 0.5 * math.log(2 * math.pi) + jac
        total.append(d * n_bits * math.log(2) - lp)  # discretisation: D ln(2^n) nats
    assert torch.allclose(nll.double(), torch.tensor(total, dtype=torch.float64), rtol=1e-6)
    assert discretization_nats(d, 8) == pytest.approx(d * math.log(256))
    levels = torch.tensor([0, 7, 8, 255], dtype=torch.uint8)
    assert dequantize(levels, 5, torch.zeros(4)).tolist() == [0.0, 0.0, 1 / 32, 31 / 32]  # top 5 bits
    assert dequantize(levels, 8, torch.full((4,), 0.5)).tolist() == [(v + 0.5) / 256 for v in (0, 7, 8, 255)]
    assert bits_per_dim(total[0], d) == pytest.approx(total[0] / (d * math.log(2)))


def test_dequantised_bound_is_below_the_exact_discrete_log_likelihood():
    """log P(x) = log(model mass on x's cell) >= E_u[log p(y)] - D ln 256 (Jensen), checked exactly
    for a narrow Gaussian density (sigma = 0.01, so the cell-averaging gap is measurable)."""
    sigma = 0.01

    class Narrow(nn.Module):
        def log_prob(self, x):
            return standard_normal_logpdf(x / sigma) - x[0].numel() * math.log(sigma)

    fam = _family()
    fam.model = Narrow()
    x = torch.tensor([125, 126, 127, 128, 129, 130, 131, 128] * 2, dtype=torch.uint8).view(1, 1, 4, 4)
    normal = torch.distributions.Normal(0.0, sigma)
    v = x.double().flatten()
    exact = torch.log(normal.cdf((v + 1) / 256 - 0.5) - normal.cdf(v / 256 - 0.5)).sum().item()
    # E_u by the midpoint rule over a grid of u (the same u in every pixel: the terms are per pixel)
    grid = [-fam.nll(x, torch.full(x.shape, (k + 0.5) / 200)).item() for k in range(200)]
    bound = sum(grid) / len(grid)
    assert bound < exact
    assert 0.001 < exact - bound < 0.2  # a real but small gap: the bound is tight, not loose
    assert max(grid) > exact  # single draws can exceed log P: only the expectation is a bound


def test_log_likelihood_is_repeatable_and_matches_training_units():
    fam = _family()
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    losses = fam.train_step((x, None), 1)
    assert losses["bits_per_dim"] == pytest.approx(losses["nll_nats"] / (16 * math.log(2)))
    a, b = fam.log_likelihood(x), fam.log_likelihood(x)
    assert a.shape == (4,) and torch.equal(a, b)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a, -fam.nll(x, noise))


def test_family_resume_keeps_actnorm_initialisation():
    fam = _family()
    x = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    fam.train_step((x, None), 1)
    state = fam.state_dict()
    flags = [k for k in state["net"] if k.endswith("initialized")]
    assert flags and all(bool(state["net"][k]) for k in flags)
    again = _family()
    again.load_state_dict(state)
    skewed = (x // 4 + 100).to(torch.uint8)  # other statistics: a re-initialisation would show
    fam.model.train(), again.model.train()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fam.nll(skewed, noise), again.nll(skewed, noise))


def test_warmup_and_nonfinite_gradients_are_never_applied():
    fam = _family(sets=["flow.warmup_steps=10", "flow.optim.lr=0.01"])
    x = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    fam.train_step((x, None), 1)
    assert fam.opt.param_groups[0]["lr"] == pytest.approx(0.001)
    fam.train_step((x, None), 20)
    assert fam.opt.param_groups[0]["lr"] == pytest.approx(0.01)
    with torch.no_grad():
        fam.model.top.logs[0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in fam.model.state_dict().items()}
    losses = fam.train_step((x, None), 21)
    assert not math.isfinite(losses["nll_nats"]) and not math.isfinite(losses["grad_norm"])
    for k, v in fam.model.state_dict().items():
        assert torch.equal(v, before[k]) or (torch.isnan(v).any() and torch.isnan(before[k]).any())


def test_sample_temperature_grid_and_range():
    fam = _family(sets=["flow.n_bits=3"])
    fam.train_step((torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8), None), 1)
    s = fam.sample(50, torch.Generator().manual_seed(0), temperature=0.7)
    assert s.shape == (50, 1, 4, 4) and s.min() >= 0 and s.max() <= 1
    assert torch.allclose(s * 7, (s * 7).round(), atol=1e-6)  # values on the 2^3-level grid
    cold = fam.sample(3, torch.Generator().manual_seed(0), temperature=0.0)
    assert torch.equal(cold, fam.sample(3, torch.Generator().manual_seed(9), temperature=0.0))
    spread = [fam.sample(200, torch.Generator().manual_seed(0), temperature=t).std() for t in (0.2, 1.0)]
    assert spread[0] < spread[1]
    with pytest.raises(C.ConfigError):
        fam.sample(2, temperature=-1.0)


def test_family_rejects_bad_options():
    with pytest.raises(C.ConfigError, match="n_bits"):
        _family(sets=["flow.n_bits=9"])
    with pytest.raises(C.ConfigError, match="n_bits=1"):
        _family(binarized=True)
    with pytest.raises(C.ConfigError, match="divisible"):
        _family(shape=(1, 6, 6), sets=["flow.levels=2"])
    with pytest.raises(C.ConfigError, match="points"):
        build_family(C.resolve("glow"), DataInfo(name="p", kind="points", shape=(2,)), torch.device("cpu"))


# ------------------------------------------------------------------------------------- CLI


def test_cli_sample_with_temperature(tmp_path):
    runner = CliRunner()
    sets = ["flow.depth=1", "flow.hidden=4", "train.batch_size=8", "train.grid_size=4", "train.threads=1"]
    args = ["train", "glow", "--steps", "2", "--out", str(tmp_path), "--name", "g", "--no-progress"]
    r = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["sample", str(tmp_path / "g"), "-n", "4", "--temperature", "0.7", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g" / "samples" / "sample-last-seed0-t0.7.png").is_file()
