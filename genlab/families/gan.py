"""The GAN family: one generator, one discriminator, a loss object and regularizer objects.

Variants are configs, not branches: `loss: wasserstein` + a gradient_penalty regularizer and
n_critic 5 is WGAN-GP; `loss: non_saturating` is the vanilla GAN; `loss: hinge` with
`spectral_norm: true` is SN-GAN. The n_critic loop lives here (DESIGN.md), and each critic
iteration gets its own real batch: the family asks the trainer for n_critic batches per step.

Mode-collapse remedies combine with every loss (gan_remedies.py): `pack: m` (PacGAN) feeds the
discriminator m samples at once, `d_minibatch_std: G` adds ProGAN's minibatch-std feature to the
discriminator net, `unroll: k` (Unrolled GAN) takes the generator's loss k discriminator steps ahead.
With their defaults (1, 0, 0) the updates are exactly those of the plain GAN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import option
from ..config import OptimConfig, RunConfig
from ..losses import build_loss, build_regularizers
from ..parallel import prepare_module, shared_randn, world
from ..registry import register, require
from ..schedules import linear_decay
from .base import FamilyBase, Update, chunked, eval_mode, in_batches, randn, to_signed
from .gan_remedies import LookAhead, Packing, check_batch


NORMS = ("batch", "instance", "layer", "none")


@dataclass
class GANOptions:
    generator: str = "auto"  # a registered net; auto -> dcgan-g for images, mlp-g for points
    discriminator: str = "auto"  # auto -> dcgan-d / mlp-d
    latent_dim: int = option(100, ge=1)
    g_width: int = option(32, ge=1)
    d_width: int = option(32, ge=1)
    g_norm: str = option("batch", choices=NORMS)
    d_norm: str = option("batch", choices=NORMS)
    spectral_norm: bool = False  # on every discriminator layer
    loss: str = "non_saturating"
    loss_args: dict = field(default_factory=dict)  # e.g. {a: 0, b: 1, c: 1} for least_squares
    regularizers: list[dict] = field(default_factory=list)
    n_critic: int = option(1, ge=1)
    g_optim: OptimConfig = field(default_factory=OptimConfig)
    d_optim: OptimConfig = field(default_factory=OptimConfig)
    g_args: dict = field(default_factory=dict)  # extra net arguments, e.g. {depth: 4, act: tanh} for the MLPs
    d_args: dict = field(default_factory=dict)
    # -- mode-collapse remedies (gan_remedies.py); the defaults leave the plain GAN
    pack: int = option(1, ge=1)  # PacGAN: D judges `pack` samples concatenated (Lin et al. 2018)
    # ProGAN's minibatch-std feature in D, over groups of this many samples (true = 4, as in ProGAN).
    # A field of its own rather than a d_args entry: it is a remedy, checked against what the net declares
    d_minibatch_std: int = option(0, ge=0, zero="off", aliases=((True, 4), (False, 0)))
    unroll: int = option(0, ge=0, zero="off")  # Unrolled GAN: G's loss after k look-ahead D steps (Metz et al. 2017)
    unroll_optim: str = option("adam", choices=("adam", "sgd"))  # the look-ahead steps' update
    # both learning rates decay linearly to 0 after this fraction of train.steps (1: constant). Lets G
    # settle onto the modes at the end instead of orbiting them at full step size (the 2-D sections)
    lr_decay_start: float = option(1.0, ge=0, le=1)


def _net(name: str, role: str, info, what: str) -> tuple[str, type]:
    """The registered net `name` (auto: DCGAN nets for images, MLPs for points), checked to play
    `role` on this kind of data."""
    if name == "auto":
        name = f"{'dcgan' if info.kind == 'image' else 'mlp'}-{role[0]}"
    return name, require("net", name, what, role=role, data=info.kind)


def _build_net(cls: type, name: str, what: str, args: dict, *positional, **kwargs):
    """net(*positional, **kwargs, **args); a bad `args` entry is a one-line ConfigError."""
    try:
        return cls(*positional, **kwargs, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{what}: net {name!r}: {e}") from None


def _score_logs(key: str, out) -> dict[str, Tensor]:
    """Mean discriminator score for the logs. D may return a tensor of scores or a tuple whose first
    field is the per-sample score (EBGAN's `Energy(energy, code)`); anything else is not logged."""
    score = out[0] if isinstance(out, tuple) and out else out
    return {key: score.detach().mean()} if isinstance(score, Tensor) else {}


@register("family", "gan")
class GANFamily(FamilyBase):
    Options = GANOptions
    capabilities = frozenset({"sample", "interpolate"})
    # measured (bench/bench_train.py, AVX512-BF16 CPU): bf16 autocast + channels_last runs the DCGAN step
    # 1.6-2.1x fp32, channels_last alone 1.13x. Quality, default runs, 5 seeds (gan) and 3 (wgan-gp) per
    # precision: FID 57.3 +/- 1.7 bf16 vs 56.2 +/- 1.2 float32 (wgan-gp 66.4 vs 65.3), inside float32's
    # seed-to-seed spread, recall unchanged; seed by seed bf16 is 1.1 +/- 0.3 higher, and its 4,000 steps
    # take the time of float32's 3,000 (FID 59.5). README "Performance". 2-D MLPs stay as they are.
    # Sampling in bf16 (genlab sample / eval --precision auto): the generator ~4x faster on an AMX CPU;
    # one trained checkpoint's FID at n = 10,000 moved by -0.014 to -0.021 over 3 sampling seeds, whose
    # own spread was 1.7.
    speed = {"image": {"amp": "bf16", "channels_last": True, "sample": "bf16"}}

    def __init__(self, cfg: RunConfig, info, device: torch.device):
        o: GANOptions = cfg.options
        self.opts, self.info, self.device = o, info, device
        shape = tuple(info.shape)
        g_name, G = _net(o.generator, "generator", info, "gan.generator")
        d_name, D = _net(o.discriminator, "discriminator", info, "gan.discriminator")
        # the loss and every regularizer must take what this discriminator returns
        self.loss = build_loss(o.loss, o.loss_args, d_name, D.output)
        self.regularizers = build_regularizers(o.regularizers, d_name, D.output)
        remedy_args = {"minibatch_std": o.d_minibatch_std} if o.d_minibatch_std else {}
        for key in remedy_args:  # a net declares the remedy layers it has (register(..., options=...))
            require("net", d_name, f"gan.d_{key}", options=key)
        check_batch(cfg.train.batch_size, world().size, o.pack, o.d_minibatch_std)
        self.pack = Packing(o.pack, channels_last=cfg.train.channels_last == "on")
        self.lookahead = LookAhead(o.unroll, self.loss, self.regularizers, o.unroll_optim)
        G = _build_net(G, g_name, "gan.g_args", o.g_args, shape, latent_dim=o.latent_dim, width=o.g_width,
                       norm=o.g_norm)
        D = _build_net(D, d_name, "gan.d_args", o.d_args, self.pack.shape(shape), width=o.d_width, norm=o.d_norm,
                       spectral_norm=o.spectral_norm, **remedy_args)
        self.G, self.G_train = prepare_module(G, cfg.train, device)
        # penalties and the look-ahead differentiate D's gradients again (sync_bn must allow it)
        self.D, self.D_train = prepare_module(D, cfg.train, device,
                                              twice_differentiable=bool(self.regularizers) or o.unroll > 0)
        self.opt_g = Update(self.G.parameters(), o.g_optim, cfg.train, device)
        self.opt_d = Update(self.D.parameters(), o.d_optim, cfg.train, device)
        self.batches_per_step = o.n_critic
        self.ema_modules = [self.G]
        self.total_steps = cfg.train.steps

    # -- data conventions: images live in [-1, 1] inside the family, points as they are
    def _prepare(self, x: Tensor) -> Tensor:
        return to_signed(x) if self.info.kind == "image" else x.float()

    def _to_output(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.info.kind == "image" else x

    def _noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return randn((n, self.opts.latent_dim), generator, self.device)

    def _train_noise(self, n_local: int) -> Tensor:
        """This rank's rows of one global batch of latents (the same numbers at any world size)."""
        return shared_randn(n_local, (self.opts.latent_dim,), self.device)

    def train_step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor]:
        if self.opts.lr_decay_start < 1:
            factor = linear_decay(step, self.total_steps, self.opts.lr_decay_start)
            self.opt_g.set_lr(self.opts.g_optim.lr * factor)
            self.opt_d.set_lr(self.opts.d_optim.lr * factor)
        reals = self._prepare(batch[0]).chunk(self.opts.n_critic)
        logs: dict[str, Tensor] = {}
        for real in reals:
            logs = self._critic_update(real)
        logs["g_loss"] = self._generator_update(reals[-1])
        return logs

    def _generator_update(self, real: Tensor) -> Tensor:
        """One G step; `real` (the last critic batch) is what the look-ahead D trains on (unroll > 0)."""
        # G learns through the plain D: only G's gradients are averaged over ranks in this update, and
        # D's own weight gradients are not computed at all (they would be discarded)
        fake = self.pack(self.G_train(self._train_noise(real.shape[0])))
        self.D.requires_grad_(False)
        try:
            critic = self.lookahead(self.D, self.opt_d, self.pack(real), fake)  # unroll 0: self.D
            g_loss = self.loss.g_loss(critic(fake))
            self.opt_g(g_loss)
        finally:
            self.D.requires_grad_(True)
        return g_loss.detach()

    def _critic_update(self, real: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            fake = self.pack(self.G(self._train_noise(real.shape[0])))
        real = self.pack(real)
        d_real, d_fake = self.D_train(real), self.D_train(fake)
        d_loss = self.loss.d_loss(d_real, d_fake)
        logs = {"d_loss": d_loss.detach(), **_score_logs("d_real", d_real), **_score_logs("d_fake", d_fake)}
        total = d_loss
        for reg in self.regularizers:
            # the plain D: regularizers take their own (double) backward, which compiled graphs lack;
            # its gradients still reach D's parameters, and DDP averages them with the rest
            term = reg(self.D, real, fake, scale=self.opt_d.scale)
            logs[reg.name] = term.detach()
            total = total + term
        self.opt_d(total)
        return logs

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self.G):
            return in_batches(lambda k: self._to_output(chunked(self.G, self._noise(k, generator))), n)

    @torch.no_grad()
    def interpolate(self, rows: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """rows x steps images: spherical interpolation between two random latents per row."""
        a, b = self._noise(rows, generator), self._noise(rows, generator)
        t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]
        a, b = a[:, None], b[:, None]
        omega = torch.acos((a / a.norm(dim=-1, keepdim=True) * b / b.norm(dim=-1, keepdim=True)).sum(-1, keepdim=True).clamp(-1, 1))
        so = torch.sin(omega).clamp_min(1e-6)
        z = torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b
        with eval_mode(self.G):
            return self._to_output(self.G(z.reshape(rows * steps, -1)))

    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
