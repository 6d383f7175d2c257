"""DDPM (Ho et al. 2020): denoising diffusion with epsilon (or v) prediction, the simple loss, and
ancestral DDPM or DDIM sampling; its variational bound in bits/dim on test images.

Training: t ~ U{1..T}, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and the net (a UNet for images,
an MLP for 2-D points, both in nets/unet.py) regresses eps -- or v = sqrt(abar) eps - sqrt(1 - abar)
x_0 (Salimans & Ho 2022) with `prediction: v` -- in mean squared error (L_simple). Images live in
[-1, 1]. Class-conditional (`class_conditional: true`) with labels dropped at `cond_drop` (10%), so
one net gives both e(x, y) and e(x); sampling with guidance w uses (1 + w) e(x, y) - w e(x) (Ho &
Salimans 2021).

Sampling (declared options, so `genlab sample / eval` take --sampler, --sample-steps, --eta,
--guidance): `ddpm` ancestral steps with variance beta_t over all T steps (fewer steps: the respaced
ancestral chain, which is DDIM with eta = 1); `ddim` with any number of steps and eta (0 =
deterministic). `encode` runs the deterministic DDIM map forwards (data -> noise), the inverse of
`ddim` sampling with eta = 0.

Likelihood (`log_likelihood`, bits/dim on the 256-level data, comparable with the flows' and
PixelCNN's): the variational bound -L = -(L_T + sum_{t=2..T} L_{t-1} + L_0) with
    L_T       KL(q(x_T | x_0) || N(0, I)), exact (no parameters);
    L_{t-1}   KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), p's variance the posterior's beta~_t,
              its mean from the net's prediction -- estimated without bias from `vlb_timesteps`
              uniformly drawn t in 2..T per image, times T - 1 (computing all 999 terms costs 999
              forwards per image);
    L_0       -log p(x_0 | x_1) under the discretised Gaussian decoder (mean from the net at t = 1,
              variance beta_1), exact.
The estimate's spread over images and timesteps is reported as the record's standard error.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import OptimConfig
from ..errors import ConfigError
from ..fields import option
from ..noise import SCHEDULES, NoiseSchedule, discretized_gaussian_log_likelihood
from ..parallel import prepare_module, shared_rand, shared_randn
from ..registry import register, require
from ..schedules import warmup
from .base import FamilyBase, SampleOption, Update, chunked, eval_mode, in_batches, randn, to_signed

SAMPLE_OPTIONS = (
    SampleOption("sampler", str, "ddpm | ddim (diffusion); euler | heun | adaptive (flow matching)"),
    SampleOption("sample_steps", int, "Denoising / integration steps of the sampler"),
    SampleOption("eta", float, "DDIM noise: 0 deterministic, 1 the ancestral chain"),
    SampleOption("guidance", float, "Classifier-free guidance weight w of class-conditional models (0 = none)"),
)


@dataclass
class DenoiserOptions:
    """Net options shared by diffusion and flow matching."""
    net: str = "auto"  # a registered denoiser; auto -> unet for images, mlp-denoiser for points
    width: int = option(32, ge=1)
    mults: tuple[int, ...] = (1, 2, 2)  # UNet: width multiplier per resolution (len = levels)
    blocks: int = option(1, ge=1)  # UNet: residual blocks per resolution
    attention: bool = False  # UNet: self-attention at the lowest resolution
    patch: int = option(1, ge=1)  # UNet: work on p x p pixel blocks folded into channels
    depth: int = option(3, ge=1)  # MLP: hidden layers
    coord_features: int = option(0, ge=0, zero="raw coordinates only")  # MLP: sinusoids per coordinate
    class_conditional: bool = False
    cond_drop: float = option(0.1, ge=0, lt=1)  # label dropout (classifier-free guidance)
    guidance: float = option(0.0, ge=0)  # default guidance weight when sampling
    grad_clip: float = option(1.0, ge=0, zero="no clipping")
    warmup_steps: int = option(200, ge=0, zero="no warm-up")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, betas=(0.9, 0.999)))


def build_denoiser(o: DenoiserOptions, info, cfg, device, what: str):
    """The denoising net of `o` for this data, prepared for training; (plain, training view)."""
    name = o.net if o.net != "auto" else ("unet" if info.kind == "image" else "mlp-denoiser")
    cls = require("net", name, what, role="denoiser", data=info.kind)
    classes = info.num_classes if o.class_conditional else 0
    try:
        if info.kind == "image":
            net = cls(tuple(info.shape), width=o.width, mults=tuple(o.mults), blocks=o.blocks,
                      attention=o.attention, num_classes=classes, patch=o.patch)
        else:
            net = cls(tuple(info.shape), width=o.width, depth=o.depth, num_classes=classes,
                      coord_features=o.coord_features)
    except ValueError as e:  # sizes the data's shape does not allow
        raise ConfigError(f"{what}: {e}") from None
    return prepare_module(net, cfg.train, device)


class DenoiserFamily(FamilyBase):
    """What diffusion and flow matching share: data scaling, labels, guidance, the optimizer."""

    sample_options = SAMPLE_OPTIONS
    # bf16 autocast where it is native, channels_last, by measurement (README "Performance"): ddpm's step
    # runs 1.8x float32 on an AMX CPU. bf16 once cost likelihood (ddpm bound +0.058 / +0.019 bits/dim
    # over two seeds; flow matching +0.048): the UNet's first conv rounded x_t to bf16, and at small t
    # eps lives below bf16's resolution. With that conv in float32 (nets/unet.py) two ddpm seeds score
    # 2.848 / 2.794 against float32's 2.834 / 2.792, and FID holds. channels_last since the UNet's
    # GroupNorm stopped using torch's slow bf16 channels_last kernel (nets/common.py): training steps
    # ~4% and sampling ~13% faster, the same samples and the same weights after two default steps
    # (to 1e-10). Sampling (--precision auto) stays float32 for ddpm: bf16 DDIM-50 runs 2.3x faster
    # on an AMX CPU but moved one trained run's FID by +0.23 / +0.26 (n = 2,000, two sampling seeds,
    # which differ by 0.37): x0 = (x - s eps) / a magnifies eps's rounding at high noise. Flow
    # matching samples in bf16 (its own declaration).
    speed: dict = {"image": {"amp": "bf16", "channels_last": True}}

    def _setup(self, cfg, info, device, what: str) -> None:
        o = cfg.options
        self.opts, self.info, self.device = o, info, device
        self.net, self.net_train = build_denoiser(o, info, cfg, device, what)
        self.opt = Update(self.net.parameters(), o.optim, cfg.train, device, clip=o.grad_clip)
        self.ema_modules = [self.net]
        self.classes = info.num_classes if o.class_conditional else 0
        self.dims = math.prod(info.shape)

    def _data(self, x: Tensor) -> Tensor:
        x = x.to(self.device)
        return to_signed(x) if self.info.kind == "image" else x.float()

    def _output(self, x: Tensor) -> Tensor:
        return ((x.float().clamp(-1, 1) + 1) / 2) if self.info.kind == "image" else x.float()

    def _train_labels(self, y: Tensor | None, n: int) -> Tensor | None:
        """Labels with `cond_drop` of them replaced by the 'no label' class (drawn for the global batch)."""
        if not self.classes:
            return None
        drop = shared_rand(n, (), self.device) < self.opts.cond_drop
        return torch.where(drop, torch.full_like(y, self.classes), y.to(self.device))

    def _sample_labels(self, n: int, generator, y: Tensor | None) -> Tensor | None:
        if not self.classes:
            return None
        if y is None:
            y = torch.randint(self.classes, (n,), generator=generator)
        return y.to(self.device)

    def predict(self, x: Tensor, t: Tensor, y: Tensor | None, guidance: float) -> Tensor:
        """The net's output at (x, t), guided: (1 + w) f(x, y) - w f(x) when w > 0 and there are labels."""
        if y is None or guidance <= 0:
            return chunked(self.net, x, t, y).float()
        labels = torch.cat([y, torch.full_like(y, self.classes)])
        both = chunked(self.net, torch.cat([x, x]), torch.cat([t, t]), labels)
        cond, uncond = both.float().chunk(2)
        return (1 + guidance) * cond - guidance * uncond

    def _step_lr(self, step: int) -> None:
        self.opt.set_lr(self.opts.optim.lr * warmup(step, self.opts.warmup_steps))

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


@dataclass
class DiffusionOptions(DenoiserOptions):
    schedule: str = option("linear", choices=SCHEDULES)
    T: int = option(1000, ge=2)
    prediction: str = option("eps", choices=("eps", "v"))
    sampler: str = option("ddim", choices=("ddpm", "ddim"))
    sample_steps: int = option(50, ge=1)
    eta: float = option(0.0, ge=0, le=1)
    vlb_timesteps: int = option(1, ge=1)  # random t per test image in the bound's middle sum


@register("family", "diffusion")
class DiffusionFamily(DenoiserFamily):
    Options = DiffusionOptions
    capabilities = frozenset({"sample", "log_likelihood", "encode"})

    def __init__(self, cfg, info, device: torch.device):
        self._setup(cfg, info, device, "diffusion.net")
        self.schedule = NoiseSchedule(self.opts.schedule, self.opts.T)

    def _eps(self, x_t: Tensor, t: Tensor, y: Tensor | None, guidance: float = 0.0) -> Tensor:
        out = self.predict(x_t, t.float() / self.opts.T, y, guidance)
        return out if self.opts.prediction == "eps" else self.schedule.eps_from_v(x_t, t, out)

    # ------------------------------------------------------------------ training
    def train_step(self, batch, step: int) -> dict[str, Tensor]:
        x0 = self._data(batch[0])
        n, T = x0.shape[0], self.opts.T
        t = (shared_rand(n, (), self.device) * T).long().clamp_(0, T - 1) + 1  # U{1..T}, global draw
        eps = shared_randn(n, x0.shape[1:], self.device)
        x_t = self.schedule.q_sample(x0, t, eps)
        target = eps if self.opts.prediction == "eps" else self.schedule.velocity(x0, t, eps)
        pred = self.net_train(x_t, t.float() / T, self._train_labels(batch[1], n))
        loss = F.mse_loss(pred.float(), target)
        self._step_lr(step)
        self.opt(loss)
        return {"loss": loss.detach()}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, x_T: Tensor, generator: torch.Generator | None = None, y: Tensor | None = None,
                 sampler: str | None = None, sample_steps: int | None = None, eta: float | None = None,
                 guidance: float | None = None) -> Tensor:
        """Denoise x_T (model space) to x_0 with the chosen sampler."""
        o = self.opts
        sampler, eta = sampler or o.sampler, o.eta if eta is None else eta
        guidance = o.guidance if guidance is None else guidance
        steps = o.T if sampler == "ddpm" and sample_steps is None else (sample_steps or o.sample_steps)
        if sampler not in ("ddpm", "ddim"):
            from ..errors import ConfigError

            raise ConfigError(f"--sampler {sampler!r}: diffusion samples with ddpm or ddim")
        ts = self.schedule.timesteps(steps)
        x = x_T
        with eval_mode(self.net):
            for i, t_now in enumerate(ts):
                t = torch.full((x.shape[0],), t_now, device=self.device, dtype=torch.long)
                eps = self._eps(x, t, y, guidance)
                noise = randn(tuple(x.shape), generator, self.device)
                clip = self.info.kind == "image"  # predicted x_0 clipped to the data's range [-1, 1]
                if sampler == "ddpm" and steps == o.T:
                    x = self.schedule.ddpm_step(x, t, eps, noise, clip)
                else:
                    t_prev = torch.full_like(t, ts[i + 1] if i + 1 < len(ts) else 0)
                    x = self.schedule.ddim_step(x, t, t_prev, eps, 1.0 if sampler == "ddpm" else eta, noise, clip)
        return x

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None, **options) -> Tensor:
        def draw(k: int) -> Tensor:
            x_T = randn((k, *self.info.shape), generator, self.device)
            labels = self._sample_labels(k, generator, y[:k] if y is not None else None)
            return self._output(self.generate(x_T, generator, labels, **options))

        return in_batches(draw, n)

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None, sample_steps: int | None = None) -> Tensor:
        """Data (uint8 or [0, 1] images, or points) -> x_T by the deterministic DDIM map run forwards."""
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        x = (x * 2 - 1 if self.info.kind == "image" else x).to(self.device)
        ts = list(reversed(self.schedule.timesteps(sample_steps or self.opts.sample_steps)))
        with eval_mode(self.net):
            prev = 0
            for t_now in ts:
                t_prev = torch.full((x.shape[0],), prev, device=self.device, dtype=torch.long)
                eps = self._eps(x, t_prev.clamp_min(1), y)  # the DDIM inversion's eps(x_{t_prev}) approximation
                x = self.schedule.ddim_inverse_step(x, t_prev, torch.full_like(t_prev, t_now), eps)
                prev = t_now
        return x

    # ------------------------------------------------------------------ the bound
    @torch.no_grad()
    def log_likelihood(self, x_uint8: Tensor) -> Tensor:
        """-(variational bound) in nats per image (see the module docstring); draws from the global RNG."""
        x0 = to_signed(x_uint8.to(self.device))
        n, s, T = x0.shape[0], self.schedule, self.opts.T
        with eval_mode(self.net):
            bound = s.prior_kl(x0)
            one = torch.ones(n, device=self.device, dtype=torch.long)
            x1 = s.q_sample(x0, one, torch.randn_like(x0))
            mean, _ = s.posterior(s.x0_from_eps(x1, one, self._eps(x1, one, None)), x1, one)
            log_scale = torch.full_like(x0, 0.5 * math.log(float(s.betas[1])))
            bound = bound - discretized_gaussian_log_likelihood(x0, mean, log_scale)
            for _ in range(self.opts.vlb_timesteps):
                t = torch.randint(2, T + 1, (n,), device=self.device)
                eps = torch.randn_like(x0)
                x_t = s.q_sample(x0, t, eps)
                bound = bound + (T - 1) / self.opts.vlb_timesteps * s.kl_term(x0, x_t, t, self._eps(x_t, t, None))
        return -bound
