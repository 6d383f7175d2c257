"""CycleGAN (Zhu, Park, Isola & Efros 2017): unpaired image-to-image translation.

Two generators (G_AB: A -> B, G_BA: B -> A), two PatchGAN discriminators (D_A judges A images, D_B
judges B images), an adversarial loss object from the registry (least squares by default, as in
the paper), cycle-consistency L1 (weight 10) and identity L1 (0.5 x the cycle weight). Adam 2e-4,
betas (0.5, 0.999); the discriminators see fakes through a history pool of 50 images (Shrivastava
et al. 2017); the learning rate is constant, then decays linearly to 0 at train.steps.

Data layout: each batch row is (C, H, 2W) = [A image | independently drawn B image] (see
genlab.data.pairs), split here at W. The paper's batch size is 1; any batch size works.

What `sample(n)` means here: the family has no prior to sample from, so a "sample" is a translation
of real images. It returns n rows in the data layout, [a | G_AB(a)], for A images drawn (with the
given generator) from a bank of the first `bank_size` training A images the family has seen (kept in
its state). Grids written during training therefore show input | translation side by side. Held-out
translations come from `translate(x, direction)` (`genlab translate`, `cyclegan_metrics`).

Exact resume: the pools (images and their RNG), both optimizers and the sample bank are in the state;
the learning rate is a pure function of the step number, so it needs no scheduler state. Under
torchrun every rank keeps its own history pools of its own fakes (`rank_local_state`: the trainer
saves each rank's and gives it back on resume at the same world size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fields import option
from ..config import ConfigError, OptimConfig, RunConfig
from ..losses import build_loss
from ..parallel import prepare_module
from ..registry import register, require
from ..schedules import linear_decay
from .base import FamilyBase, Update, eval_mode, to_signed

DIRECTIONS = ("AtoB", "BtoA")


@dataclass
class CycleGANOptions:
    supports_points: ClassVar[bool] = False  # images only (the smoke test skips 2-D points)

    generator: str = "cyclegan-g"
    discriminator: str = "patchgan-d"
    g_width: int = option(64, ge=1)  # channels of the first generator conv (paper: 64)
    d_width: int = option(64, ge=1)  # channels of the first PatchGAN conv (paper: 64)
    n_blocks: int = option(9, ge=0)  # generator residual blocks (paper: 9 at 256 px, 6 at 128 px)
    d_layers: int = option(0, ge=0, zero="sized to the data")  # PatchGAN stride-2 layers; 0 -> sized to the data (3 = 70x70 patches)
    g_norm: str = option("instance", choices=("batch", "instance", "layer", "none"))
    d_norm: str = option("instance", choices=("batch", "instance", "layer", "none"))
    loss: str = "least_squares"
    loss_args: dict = field(default_factory=dict)
    cycle_weight: float = option(10.0, ge=0)
    identity_weight: float = option(0.5, ge=0)  # times cycle_weight (the paper's lambda_identity = 0.5)
    pool_size: int = option(50, ge=0, zero="no pool")  # history of generated images shown to the discriminators (0 disables)
    decay_start: float = option(0.5, ge=0, le=1)  # fraction of train.steps after which the LR decays linearly to 0
    bank_size: int = option(256, ge=1)  # training A images kept for `sample`
    g_optim: OptimConfig = field(default_factory=OptimConfig)  # Adam 2e-4, (0.5, 0.999)
    d_optim: OptimConfig = field(default_factory=OptimConfig)


class ImagePool:
    """The history buffer of Shrivastava et al. (2017) as used by CycleGAN.

    Until `size` images have been seen, each new image is stored and returned as is. Afterwards
    each image is, with probability 1/2, swapped for a random stored one (which is returned and
    replaced by the new image), else returned as is. The pool's own seeded generator makes it
    reproducible and resumable."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: Tensor | None = None  # (k, C, H, W), k <= size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    @torch.no_grad()
    def query(self, batch: Tensor) -> Tensor:
        if self.size <= 0:
            return batch
        batch = batch.detach()
        out = []
        for img in batch:
            k = len(self)
            if k < self.size:
                self.images = img[None].clone() if self.images is None else torch.cat([self.images, img[None]])
                out.append(img)
            elif torch.rand((), generator=self.generator) < 0.5:  # a CPU generator: no device sync
                j = int(torch.randint(self.size, (), generator=self.generator))
                out.append(self.images[j].clone())
                self.images[j] = img
            else:
                out.append(img)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"images": self.images, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = None if state["images"] is None else state["images"].to(device)
        self.generator.set_state(state["generator"].cpu())


@register("family", "cyclegan")
class CycleGANFamily(FamilyBase):
    Options = CycleGANOptions
    capabilities = frozenset({"translate"})  # sample() gives [a | G_AB(a)] pairs for grids, not data samples
    # channels_last: 1.02-1.09x once the instance norms ran group norm's kernel (README "Performance");
    # bf16 on top ~1.15x more, but it moved the cycle error by more than float32's seed-to-seed spread
    speed = {"image": {"channels_last": True}}
    rank_local_state = ("pool_A", "pool_B")

    def __init__(self, cfg: RunConfig, info, device: torch.device):
        o: CycleGANOptions = cfg.options
        if info.kind != "image" or info.shape[2] % 2:
            raise ConfigError(f"cyclegan needs two-domain image data (rows [A | B] of even width, e.g. "
                              f"mnist-pair or pair:DIR); {info.name!r} has shape {tuple(info.shape)}")
        self.opts, self.info, self.device, self.total_steps = o, info, device, cfg.train.steps
        c, h, w2 = info.shape
        self.domain_shape = (c, h, w2 // 2)
        G = require("net", o.generator, "cyclegan.generator", role="translator", data="image")
        D = require("net", o.discriminator, "cyclegan.discriminator", role="discriminator", data="image")
        self.loss = build_loss(o.loss, o.loss_args, o.discriminator, D.output)

        def generator():
            return prepare_module(G(self.domain_shape, width=o.g_width, norm=o.g_norm, n_blocks=o.n_blocks),
                                  cfg.train, device)

        def discriminator():
            return prepare_module(D(self.domain_shape, width=o.d_width, norm=o.d_norm, n_layers=o.d_layers),
                                  cfg.train, device)

        (self.G_AB, self.G_AB_train), (self.G_BA, self.G_BA_train) = generator(), generator()
        (self.D_A, self.D_A_train), (self.D_B, self.D_B_train) = discriminator(), discriminator()
        self.opt_g = Update([*self.G_AB.parameters(), *self.G_BA.parameters()], o.g_optim, cfg.train, device)
        self.opt_d = Update([*self.D_A.parameters(), *self.D_B.parameters()], o.d_optim, cfg.train, device)
        self.pool_A, self.pool_B = ImagePool(o.pool_size, cfg.seed + 1), ImagePool(o.pool_size, cfg.seed + 2)
        self.bank = torch.empty((0, *self.domain_shape), dtype=torch.uint8)
        self.ema_modules = [self.G_AB, self.G_BA]

    # ------------------------------------------------------------------ data layout
    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Batch rows [A | B] -> (A, B), each (n, C, H, W)."""
        w = self.domain_shape[2]
        return x[..., :w], x[..., w:]

    def _generator(self, direction: str) -> nn.Module:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
        return self.G_AB if direction == "AtoB" else self.G_BA

    # ------------------------------------------------------------------ training
    def generator_losses(self, a: Tensor, b: Tensor, train: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """Total generator loss, its parts, and the fakes (fake_b = G_AB(a), fake_a = G_BA(b)).
        train=True runs the generators' training views (DDP under torchrun)."""
        o = self.opts
        g_ab, g_ba = (self.G_AB_train, self.G_BA_train) if train else (self.G_AB, self.G_BA)
        fake_b, fake_a = g_ab(a), g_ba(b)
        parts = {
            "g_adv": self.loss.g_loss(self.D_B(fake_b)) + self.loss.g_loss(self.D_A(fake_a)),
            "cycle": o.cycle_weight * (F.l1_loss(g_ba(fake_b), a) + F.l1_loss(g_ab(fake_a), b)),
        }
        idt = o.identity_weight * o.cycle_weight
        if idt > 0:
            parts["identity"] = idt * (F.l1_loss(g_ab(b), b) + F.l1_loss(g_ba(a), a))
        return sum(parts.values()), parts, fake_b, fake_a

    def train_step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, float]:
        x = batch[0]
        if len(self.bank) < self.opts.bank_size:
            self.bank = torch.cat([self.bank, self.split(x)[0][: self.opts.bank_size - len(self.bank)].cpu()])
        a, b = self.split(to_signed(x))
        lr = linear_decay(step, self.total_steps, self.opts.decay_start)
        self.opt_g.set_lr(self.opts.g_optim.lr * lr)
        self.opt_d.set_lr(self.opts.d_optim.lr * lr)

        for d in (self.D_A, self.D_B):
            d.requires_grad_(False)  # G step: no D gradients needed (the plain Ds pass gradients through)
        g_total, parts, fake_b, fake_a = self.generator_losses(a, b, train=True)
        self.opt_g(g_total)
        for d in (self.D_A, self.D_B):
            d.requires_grad_(True)

        old_b, old_a = self.pool_B.query(fake_b), self.pool_A.query(fake_a)
        d_b = self.loss.d_loss(self.D_B_train(b), self.D_B_train(old_b))
        d_a = self.loss.d_loss(self.D_A_train(a), self.D_A_train(old_a))
        self.opt_d(d_a + d_b)
        return {"g_loss": g_total.detach(), **{k: v.detach() for k, v in parts.items()},
                "d_a": d_a.detach(), "d_b": d_b.detach(), "lr": self.opts.g_optim.lr * lr}

    # ------------------------------------------------------------------ using it
    @torch.no_grad()
    def translate(self, x: Tensor, direction: str) -> Tensor:
        """Images of the source domain -> the other domain. x: uint8 0..255 or float [0, 1],
        (n, C, H, W) of the domain shape; returns float [0, 1] on the family's device."""
        G = self._generator(direction)
        if tuple(x.shape[1:]) != self.domain_shape:
            raise ValueError(f"translate expects images of shape (n, {', '.join(map(str, self.domain_shape))}), "
                             f"got {tuple(x.shape)}")
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if len(x) == 0:
            return x.to(self.device)
        with eval_mode(G):
            return torch.cat([((G(chunk.to(self.device) * 2 - 1) + 1) / 2).clamp(0, 1) for chunk in x.split(500)])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n rows [a | G_AB(a)] (float [0, 1]) for A images drawn from the training bank; see the module doc."""
        if len(self.bank) == 0:
            raise RuntimeError("cyclegan: nothing to translate yet (sample needs at least one training step)")
        k = len(self.bank)
        idx = (torch.randperm(k, generator=generator)[:n] if n <= k
               else torch.randint(k, (n,), generator=generator))
        a = self.bank[idx].float().div(255).to(self.device)
        return torch.cat([a, self.translate(a, "AtoB")], dim=-1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"G_AB": self.G_AB.state_dict(), "G_BA": self.G_BA.state_dict(),
                "D_A": self.D_A.state_dict(), "D_B": self.D_B.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict(), "bank": self.bank.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("G_AB", "G_BA", "D_A", "D_B", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(state[name])
        self.pool_A.load_state_dict(state["pool_A"], self.device)
        self.pool_B.load_state_dict(state["pool_B"], self.device)
        self.bank = state["bank"].cpu()
