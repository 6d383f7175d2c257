"""The flow family: RealNVP and Glow with exact (dequantised) likelihoods, in nats and bits/dim.

Units, stated once so they are never confused. Images x in {0..2^n - 1}^D (n = `n_bits`; 8-bit data
is reduced by dropping low bits, as in Glow) are dequantised with uniform noise,
y = (x + u) / 2^n, u ~ U[0, 1)^D, and the flow models the density p(y) on [0, 1)^D. Every discrete
x owns a cell of volume 2^(-nD), so by Jensen
    log P(x) = log E_u[p(y) 2^(-nD)] >= E_u[log p(y)] - D n ln 2.
`log_likelihood(x)` returns the single-draw estimate log p(y) - D n ln 2 of that bound (the number
the papers report), in nats per image; bits/dim = -log P / (D ln 2) is on the 2^n-level data, so
8-bit results compare with the published ones (RealNVP / Glow tables) and 5-bit ones with Glow's
5-bit figures. The training loss is the same quantity divided by D (nats/dim), so the learning
rate does not depend on resolution; training logs `nll_nats` and `bits_per_dim`.

Stability: gradients are clipped by norm (`grad_clip`), the learning rate warms up linearly over
`warmup_steps`, and a step whose gradient norm is not finite is never applied (decided on the device,
see `Update`); the norm is logged, and a non-finite one stops the shared loop at its next log or
checkpoint step, keeping the last good checkpoint.

Sampling: eps ~ N(0, T^2 I) through the inverse (T = `temperature`, Glow's reduced temperature,
e.g. 0.7), then the continuous y is mapped to its cell, floor(y 2^n), and returned in [0, 1].
Caveat: ActNorm initialises from the first training batch, so with train.ema_decay > 0 the EMA
copy starts from the pre-initialisation weights and lags; flows here are trained without EMA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..fields import option
from ..config import ConfigError, OptimConfig
from ..nets.flow_models import flow_log_prob
from ..nets.flows import Preprocess
from ..parallel import prepare_module, shared_rand
from ..registry import register, require
from ..schedules import warmup
from .base import FamilyBase, SampleOption, Update, bits_per_dim, chunked, eval_mode, in_batches, randn

NLL_NOISE_SEED = 0  # log_likelihood draws its dequantisation noise from this seed: repeatable evals


@dataclass
class FlowOptions:
    supports_points = False  # image-only family (read by the registry smoke test)
    net: str = "glow"  # or realnvp
    levels: int = option(2, ge=1)  # scales; glow needs sides divisible by 2^levels, realnvp by 2^(levels-1)
    depth: int = option(8, ge=1)  # glow: flow steps per level; realnvp: couplings per stage (paper: 3)
    hidden: int = option(128, ge=1)  # channels of the coupling nets
    res_blocks: int = option(0, ge=0)  # residual blocks inside each coupling net (RealNVP uses several)
    coupling_scale: str = option("", choices=("", "sigmoid", "tanh"))  # sigmoid | tanh; "" -> the net's own (glow: sigmoid, realnvp: tanh)
    n_bits: int = option(8, ge=1, le=8)  # model 2^n_bits levels per pixel (Glow used 5 for CelebA-HQ)
    logit_alpha: float = option(0.0, ge=0, lt=0.5)  # 0: centre y - 0.5 (Glow); > 0: logit(a + (1 - 2a) y) (RealNVP, 0.05)
    temperature: float = option(1.0, ge=0)  # default sampling temperature (grids, eval); `genlab sample --temperature`
    grad_clip: float = option(50.0, ge=0, zero="no clipping")  # max gradient norm
    warmup_steps: int = option(200, ge=0, zero="no warm-up")  # linear learning-rate warm-up
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))


def dequantize(x_uint8: Tensor, n_bits: int, noise: Tensor | None = None) -> Tensor:
    """uint8 images -> y = (x_n + u) / 2^n in [0, 1), x_n the top n bits, u ~ U[0, 1) (or `noise`)."""
    x = torch.div(x_uint8.long(), 2 ** (8 - n_bits), rounding_mode="floor").float()
    u = torch.rand_like(x) if noise is None else noise.to(x)
    return (x + u) / 2 ** n_bits


def discretization_nats(dims: int, n_bits: int) -> float:
    """-log of the volume of one dequantisation cell: D n ln 2 (D ln 256 for 8-bit data)."""
    return dims * n_bits * math.log(2)


@register("family", "flow")
class FlowFamily(FamilyBase):
    Options = FlowOptions
    capabilities = frozenset({"sample", "log_likelihood"})
    # bf16 reaches only the coupling nets (nets/flows.py): 2.09x (glow) / 2.22x (realnvp) the float32
    # baseline's step with channels_last, test bits/dim no worse than float32's over the seeds (README)
    speed = {"image": {"amp": "bf16", "channels_last": True}}
    sample_options = (SampleOption("temperature", float, "Sampling temperature: scale of the latent noise, "
                                                        "e.g. 0.7 (default: flow.temperature)"),)

    def __init__(self, cfg, info, device: torch.device):
        o: FlowOptions = cfg.options
        if info.binarized and o.n_bits != 1:
            raise ConfigError("binarized data has 2 levels per pixel: set flow.n_bits=1")
        self.opts, self.info, self.device = o, info, device
        net_fn = require("net", o.net, "flow.net", role="flow")
        try:
            self.pre = Preprocess(o.logit_alpha)
            scale = {"scale": o.coupling_scale} if o.coupling_scale else {}
            model = net_fn(tuple(info.shape), levels=o.levels, depth=o.depth, hidden=o.hidden,
                           res_blocks=o.res_blocks, **scale)
        except ValueError as e:
            raise ConfigError(f"flow: {e}") from None
        self.model, self.model_train = prepare_module(model, cfg.train, device)
        self.opt = Update(self.model.parameters(), o.optim, cfg.train, device, clip=o.grad_clip,
                          skip_nonfinite=True)
        self.ema_modules = [self.model]
        self.dims = math.prod(info.shape)

    def nll(self, x_uint8: Tensor, noise: Tensor | None = None, net: torch.nn.Module | None = None) -> Tensor:
        """-(log p(y) - D n ln 2) in nats per image, y the dequantised x (an upper bound on -log P(x))."""
        x, pre_ld = self.pre(dequantize(x_uint8, self.opts.n_bits, noise))
        logp = (self.model.log_prob(x) if net is None else flow_log_prob(net, x)) + pre_ld
        return discretization_nats(self.dims, self.opts.n_bits) - logp

    def train_step(self, batch, step: int) -> dict[str, Tensor]:
        x, _ = batch
        x = x.to(self.device)
        self.opt.set_lr(self.opts.optim.lr * warmup(step, self.opts.warmup_steps))
        noise = shared_rand(x.shape[0], x.shape[1:], self.device)  # this rank's rows of the global draw
        nats = self.nll(x, noise, self.model_train).mean()
        norm = self.opt(nats / self.dims)  # nats per dim: resolution-independent learning rate
        nats = nats.detach()
        return {"nll_nats": nats, "bits_per_dim": bits_per_dim(nats, self.dims), "grad_norm": norm}

    @torch.no_grad()
    def log_likelihood(self, x_uint8: Tensor, y: Tensor | None = None) -> Tensor:
        """log P(x) in nats per image: one seeded uniform-dequantisation draw of the bound above."""
        gen = torch.Generator().manual_seed(NLL_NOISE_SEED)
        noise = torch.rand(x_uint8.shape, generator=gen)
        with eval_mode(self.model):
            return -chunked(self.nll, x_uint8.to(self.device), noise.to(self.device))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float | None = None) -> Tensor:
        t = self.opts.temperature if temperature is None else float(temperature)
        if not t >= 0:
            raise ConfigError(f"temperature must be >= 0, got {t}")
        levels = 2 ** self.opts.n_bits

        def draw(k: int) -> Tensor:
            z = randn((k, self.dims), generator, self.device) * t
            y = chunked(lambda rows: self.pre.inverse(self.model.inverse(rows)), z)
            y = torch.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
            return torch.floor(y * levels).clamp(0, levels - 1) / (levels - 1)

        with eval_mode(self.model):
            return in_batches(draw, n)

    def state_dict(self) -> dict:
        return {"net": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
