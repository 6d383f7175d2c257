"""Declared contracts, tested over the registries: a newly registered family, net, loss, regularizer,
measure or CLI command is covered here without anyone listing it."""
import math

import pytest
import torch
from typer.testing import CliRunner

from genlab import registry
from genlab.errors import ConfigError
from genlab.eval.measures import DIRECTIONS, SECTIONS, figures, find_figure, measures
from genlab.families.base import CAPABILITY_METHODS, FamilyBase
from genlab.nets.autoencoder import Energy

IMAGE, POINTS = (1, 28, 28), (2,)


# ----------------------------------------------------------------------------- families
@pytest.mark.parametrize("name", registry.available("family"))
def test_family_declares_what_it_can_do(name):
    cls = registry.get("family", name)
    assert issubclass(cls, FamilyBase) and hasattr(cls, "Options")
    unknown = set(cls.capabilities) - set(CAPABILITY_METHODS)
    assert not unknown, f"{name} declares unknown capabilities {unknown}"
    for cap, method in CAPABILITY_METHODS.items():
        has = callable(getattr(cls, method, None))
        if cap in cls.capabilities:
            assert has, f"{name} declares {cap!r} but has no {method}()"
        elif cap != "sample":  # every family samples for its training grids; `sample` means data samples
            assert not has, f"{name} has {method}() but does not declare {cap!r}"
    for opt in cls.sample_options:
        assert opt.name.isidentifier() and opt.type in (int, float, str) and opt.help


# ----------------------------------------------------------------------------- nets, by role
def _gen(cls, shape):
    net = cls(shape, latent_dim=8, width=8)
    out = net(torch.randn(3, 8))
    assert out.shape == (3, *shape)
    if len(shape) == 3:
        assert out.min() >= -1 and out.max() <= 1, "generators of images output tanh range [-1, 1]"


def _disc(cls, shape):
    net = cls(shape, width=8, norm="none")
    out = net(torch.rand(3, *shape) * 2 - 1)
    if cls.output == "score":
        assert isinstance(out, torch.Tensor) and out.shape[0] == 3 and out.is_floating_point()
    else:
        assert cls.output == "energy" and isinstance(out, Energy)
        assert out.energy.shape == (3,) and (out.energy >= 0).all() and out.code.shape[0] == 3


def _translator(cls, shape):
    out = cls(shape, width=8, n_blocks=1)(torch.rand(2, *shape) * 2 - 1)
    assert out.shape == (2, *shape) and out.abs().max() <= 1


def _flow(cls, shape):
    net = cls(shape, levels=2, depth=1, hidden=8).eval()
    x = torch.rand(2, *shape) - 0.5
    z, logdet = net(x)
    assert z.shape == (2, math.prod(shape)) and logdet.shape == (2,)
    assert torch.allclose(net.inverse(z), x, atol=1e-4)


def _autoregressive(cls, shape):
    net = cls(colours=1, n_values=2, width=8, layers=1, first_kernel=3)
    x = torch.rand(2, 1, 6, 6).requires_grad_(True)
    logits = net(x)
    assert logits.shape == (2, 1, 2, 6, 6)
    (grad,) = torch.autograd.grad(logits[:, :, :, 2, 3].sum(), x)
    later = torch.zeros(6, 6, dtype=torch.bool)
    later[2, 3:] = True
    later[3:] = True
    assert grad[:, 0][:, later].abs().max() == 0, "no output may depend on its own or later pixels"


def _gaussian_encoder(cls, shape):
    mean, logvar = cls(shape, latent_dim=4, width=4)(torch.rand(2, *shape))
    assert mean.shape == logvar.shape == (2, 4)


def _decoder(cls, shape):
    assert cls(shape, latent_dim=4, width=4)(torch.randn(2, 4)).shape[0] == 2


def _map_encoder(cls, shape):
    z = cls(shape, code_dim=4, width=8)(torch.rand(2, *shape) * 2 - 1)
    assert z.shape[:2] == (2, 4) and z.dim() == 4


def _map_decoder(cls, shape):
    assert cls(shape, code_dim=4, width=8)(torch.randn(2, 4, 7, 7)).shape[0] == 2


def _quantizer(cls, shape):
    q = cls(n_codes=8, dim=4)(torch.randn(2, 4, 3, 3))
    assert q.z_q.shape == (2, 4, 3, 3) and q.codes.shape == (2, 3, 3) and q.codes.max() < 8


def _classifier(cls, shape):
    assert cls(shape, num_classes=10, width=4)(torch.rand(2, *shape)).shape == (2, 10)


def _denoiser(cls, shape):
    net = cls(shape, width=8, num_classes=10, **({"mults": (1, 2)} if len(shape) == 3 else {}))
    x, t = torch.randn(3, *shape), torch.rand(3)
    assert torch.equal(net(x, t), torch.zeros_like(x)), "zero-initialised output: the first step starts calm"
    torch.nn.init.normal_(list(net.parameters())[-2])  # make the output layer live
    with_label, no_label = net(x, t, torch.tensor([1, 2, 10])), net(x, t, None)  # 10 = the "no label" class
    assert with_label.shape == x.shape and torch.allclose(with_label[2], no_label[2], atol=1e-6)
    assert not torch.allclose(net(x, t * 0.5), no_label), "the output depends on t"


ROLE_CONTRACTS = {"denoiser": _denoiser, "generator": _gen, "discriminator": _disc, "translator": _translator, "flow": _flow,
                  "autoregressive": _autoregressive, "gaussian-encoder": _gaussian_encoder, "decoder": _decoder,
                  "map-encoder": _map_encoder, "map-decoder": _map_decoder, "quantizer": _quantizer,
                  "classifier": _classifier}


@pytest.mark.parametrize("name", registry.available("net"))
def test_net_meets_the_contract_of_its_role(name):
    cls = registry.get("net", name)
    assert cls.role in ROLE_CONTRACTS, f"net {name}: role {cls.role!r} has no contract test yet"
    torch.manual_seed(0)
    for kind in getattr(cls, "data", ("image",)):
        shape = {"image": (1, 28, 28), "points": POINTS}[kind]
        ROLE_CONTRACTS[cls.role](cls, shape)


# ----------------------------------------------------------------------------- losses and regularizers
def _d_output(kind: str, n: int = 6, requires_grad: bool = True):
    score = torch.randn(n, requires_grad=requires_grad)
    if kind == "score":
        return score
    return Energy(score.exp(), torch.randn(n, 4, requires_grad=requires_grad))


@pytest.mark.parametrize("name", registry.available("loss"))
def test_loss_takes_the_outputs_it_declares(name):
    cls = registry.get("loss", name)
    assert cls.accepts and set(cls.accepts) <= {"score", "energy"}
    loss = cls()
    for kind in cls.accepts:
        real, fake = _d_output(kind), _d_output(kind)
        d, g = loss.d_loss(real, fake), loss.g_loss(fake)
        assert d.dim() == 0 and g.dim() == 0 and math.isfinite(d.item()) and math.isfinite(g.item())
        (d + g).backward()


@pytest.mark.parametrize("name", registry.available("regularizer"))
def test_regularizer_takes_the_outputs_it_declares(name):
    cls = registry.get("regularizer", name)
    assert cls.accepts == ("score",)
    D = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    term = cls(weight=1.0)(lambda x: D(x).squeeze(1), torch.randn(5, 2), torch.randn(5, 2))
    assert term.dim() == 0 and term.item() >= 0
    term.backward()  # the penalty is differentiable in D's weights (its double backward)
    assert D[0].weight.grad is not None and D[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model, sets, message", [
    ("ebgan", ["gan.regularizers=[{name: gradient_penalty, weight: 10}]"],
     "regularizer 'gradient_penalty' takes discriminator outputs 'score', but discriminator 'autoencoder-d' returns 'energy'"),
    ("gan", ["gan.discriminator=autoencoder-d"],
     "loss 'non_saturating' takes discriminator outputs 'score', but discriminator 'autoencoder-d' returns 'energy' (losses that take 'energy': energy)"),
    ("gan", ["gan.generator=glow"], "gan.generator: net 'glow' has role 'flow'"),
    ("gan", ["--dataset", "ring8", "gan.generator=dcgan-g"], "that fits: mlp-g"),
])
def test_incompatible_parts_are_one_line_errors(tmp_path, model, sets, message):
    from genlab.cli import app

    args = ["train", model, "--steps", "1", "--out", str(tmp_path), "--no-progress"]
    for s in sets:
        args += [s] if s.startswith("--") or args[-1] == "--dataset" else ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_registered_names_are_validated():
    for bad in ("has space", "a/b", "..", "x\\y", ""):
        with pytest.raises(ValueError, match="invalid"):
            registry.register("net", bad, object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("net", "dcgan-g", object())
    assert issubclass(registry.RegistryError, ConfigError)


# ----------------------------------------------------------------------------- measures
@pytest.mark.parametrize("m", measures(), ids=lambda m: m.name)
def test_measure_declares_its_figures(m):
    assert m.section in SECTIONS and m.figures and m.doc
    for f in m.figures:
        assert f.direction in DIRECTIONS and f.label
        assert f.direction != "target" or f.target is not None
        if m.section == "diagnose":
            assert f.key.startswith(f"{m.name}."), f"diagnostic figures live in the {m.name} section"
        assert find_figure(f.key, m.section) is f
    if m.cheap and m.section == "diagnose":
        assert m.coverage in {f.key for f in m.figures}


def test_figure_keys_are_unique_per_section():
    for section in SECTIONS:
        keys = [f.key for f in figures(section)]
        assert len(keys) == len(set(keys))


# ----------------------------------------------------------------------------- CLI
def _commands():
    from genlab.cli import app
    import typer.main

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None)
        out += [[name, sub] for sub in subs] if subs else [[name]]
    return out


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_every_command_has_help(command):
    from genlab.cli import app

    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_declared_sampling_options_reach_the_cli():
    from genlab.cli import app
    from genlab.cli_common import declared_sample_options

    options = declared_sample_options()
    assert "temperature" in options  # declared by the flow family
    for command in ("sample", "eval"):
        text = CliRunner().invoke(app, [command, "--help"]).output
        for name in options:
            assert f"--{name.replace('_', '-')}" in text
