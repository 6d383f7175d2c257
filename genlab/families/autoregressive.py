"""The autoregressive family: PixelCNN and Gated PixelCNN with exact likelihoods.

Outputs: Bernoulli per pixel for binarized data (`data.binarize: true`, 2 values) or a 256-way
softmax per colour channel. `log_likelihood(x)` is exact, in nats per image; training logs nats and
bits/dim. Sampling is pixel by pixel (and colour by colour), batched, under inference mode, by the
raster sampler the VQ-VAE prior shares (`nets.pixelcnn.raster_sample`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fields import option
from ..config import OptimConfig
from ..nets.pixelcnn import raster_sample
from ..parallel import prepare_module
from ..registry import register, require
from .base import FamilyBase, Update, bits_per_dim, chunked, eval_mode


@dataclass
class AutoregressiveOptions:
    supports_points = False  # image-only family (read by the registry smoke test)
    net: str = "gated-pixelcnn"  # or pixelcnn
    width: int = option(64, ge=1)
    layers: int = option(10, ge=1)
    first_kernel: int = option(7, ge=1)
    class_conditional: bool = False
    grad_clip: float = option(1.0, ge=0, zero="no clipping")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))


def n_values(info) -> int:
    return 2 if info.binarized else 256


def pixel_targets(x_uint8: Tensor, info) -> Tensor:
    """uint8 images -> integer targets: {0,1} for binarized data (stored as 0/255), else 0..255."""
    return (x_uint8 > 127).long() if info.binarized else x_uint8.long()


def targets_to_unit(t: Tensor, values: int) -> Tensor:
    return t.float() / (values - 1)


@register("family", "autoregressive")
class AutoregressiveFamily(FamilyBase):
    Options = AutoregressiveOptions
    capabilities = frozenset({"sample", "log_likelihood"})
    # measured: bf16 ~1.5-2.4x fp32 (the NLL is still summed in float32). channels_last slows the plain
    # PixelCNN's step; configs/gated-pixelcnn.yaml turns it on for the gated stacks (README "Performance")
    speed = {"image": {"amp": "bf16"}}

    def __init__(self, cfg, info, device: torch.device):
        o: AutoregressiveOptions = cfg.options
        self.opts, self.info, self.device = o, info, device
        self.values = n_values(info)
        classes = info.num_classes if o.class_conditional else 0
        net_cls = require("net", o.net, "autoregressive.net", role="autoregressive")
        net = net_cls(colours=info.shape[0], n_values=self.values, width=o.width, layers=o.layers,
                      first_kernel=o.first_kernel, num_classes=classes)
        self.net, self.net_train = prepare_module(net, cfg.train, device)
        self.opt = Update(self.net.parameters(), o.optim, cfg.train, device, clip=o.grad_clip)
        self.ema_modules = [self.net]
        self.dims = math.prod(info.shape)

    def _labels(self, y: Tensor | None) -> Tensor | None:
        return y if self.opts.class_conditional and y is not None else None

    def nll(self, x_uint8: Tensor, y: Tensor | None = None, net: torch.nn.Module | None = None) -> Tensor:
        """Exact negative log-likelihood in nats, per image (sum over pixels and colours)."""
        t = pixel_targets(x_uint8, self.info)
        net = self.net if net is None else net  # not `net or`: a compiled net has no truth value
        logits = net(targets_to_unit(t, self.values), self._labels(y))  # (B, C, V, H, W)
        per_pixel = F.cross_entropy(logits.float().transpose(1, 2), t, reduction="none")  # (B, C, H, W)
        return per_pixel.flatten(1).sum(1)

    def train_step(self, batch, step: int) -> dict[str, Tensor]:
        x, y = batch
        nats = self.nll(x, y, self.net_train).mean()
        self.opt(nats / self.dims)  # per-dim loss keeps the learning rate resolution-independent
        nats = nats.detach()
        return {"nll_nats": nats, "bits_per_dim": bits_per_dim(nats, self.dims)}

    @torch.no_grad()
    def log_likelihood(self, x_uint8: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) in nats per image (exact)."""
        with eval_mode(self.net):
            return -chunked(self.nll, x_uint8.to(self.device), None if y is None else y.to(self.device))

    @torch.inference_mode()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               method: str = "cached") -> Tensor:
        if self.opts.class_conditional and y is None:
            y = torch.randint(self.info.num_classes, (n,), generator=generator)
        y = None if y is None or not self.opts.class_conditional else y.to(self.device)
        with eval_mode(self.net):
            t = raster_sample(self.net, tuple(self.info.shape), n, generator,
                              lambda v: targets_to_unit(v, self.values), self.device, y, method)
        return targets_to_unit(t, self.values)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])

