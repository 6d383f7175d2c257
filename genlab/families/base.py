"""The family contract (see DESIGN.md) and the small helpers every family shares.

A family owns its nets, optimizers and update schedule. The trainer only calls:
    train_step(batch, step) -> dict[str, float]     one update; returns the losses to log
    sample(n, generator=None) -> Tensor             images in [0, 1] (n, C, H, W) or points (n, 2)
    state_dict() / load_state_dict(state)
and reads a few optional attributes:
    Options                 the dataclass of the family's config section (required)
    batches_per_step: int   real batches consumed per step (e.g. GAN n_critic); default 1
    ema_module: nn.Module   the weights to average for sampling when train.ema_decay > 0
Optional capabilities, discovered with hasattr by sample/eval/report:
    log_likelihood(x) -> nats per example, reconstruct(x), interpolate(...), encode(x), translate(x, d)

`generator` arguments are always CPU torch.Generators: noise is drawn on the CPU and moved, so a
seed gives the same samples on every device.
"""
from __future__ import annotations

import math

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .. import registry
from ..config import ConfigError, OptimConfig, RunConfig


class Family(Protocol):
    Options: type

    def train_step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, float]: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def build_family(cfg: RunConfig, info: Any, device: torch.device) -> Family:
    cls = registry.get("family", cfg.family)
    # Families declare `supports_points = False` on their Options; the check lives here, once.
    if info.kind != "image" and not getattr(cls.Options, "supports_points", True):
        raise ConfigError(f"the {cfg.family} family models images; {info.name!r} is {info.kind} data "
                          f"(2-D points need a GAN)")
    return cls(cfg, info, device)


def bits_per_dim(nll_nats: float | Tensor, dims: int) -> float | Tensor:
    """Nats per example -> bits per dimension (the unit the likelihood papers report)."""
    return nll_nats / (dims * math.log(2))


def make_optimizer(params, opt: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)


def to_signed(x: Tensor) -> Tensor:
    """uint8 images in 0..255 -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def to_unit(x: Tensor) -> Tensor:
    """uint8 images in 0..255 -> float in [0, 1]."""
    return x.float().div(255.0)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Standard normal noise drawn on the CPU from `generator` (or the global RNG), then moved."""
    return torch.randn(shape, generator=generator).to(device)


@torch.no_grad()
def in_batches(fn, n: int, batch: int = 500) -> Tensor:
    """Concatenate fn(k) over chunks of at most `batch`, so sampling 50k never holds 50k activations."""
    return torch.cat([fn(min(batch, n - i)) for i in range(0, n, batch)])


class eval_mode:
    """Context manager: put modules in eval mode, restore their previous modes afterwards."""

    def __init__(self, *modules: nn.Module):
        self.modules = modules

    def __enter__(self):
        self.was = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc):
        for m, was in zip(self.modules, self.was):
            m.train(was)

