"""The discrete diffusion process of DDPM (Ho et al. 2020), its samplers and its variational bound.

    s = NoiseSchedule("cosine", T=1000)
    x_t = s.q_sample(x0, t, eps)                       # q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I)
    x_prev = s.ddpm_step(x_t, t, eps_hat, noise)       # ancestral step with variance beta_t
    x_prev = s.ddim_step(x_t, t, t_prev, eps_hat, eta, noise)   # DDIM (Song et al. 2021)

Schedules: `linear` betas 1e-4 .. 0.02 at T = 1000 (Ho et al.; for other T both ends scale by
1000 / T, as in Nichol & Dhariwal, so abar_T stays ~4e-5 and x_T is noise), `cosine` abar(t) = f(t) / f(0) with
f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2), s = 0.008, betas clipped at 0.999 (Nichol & Dhariwal
2021). Timesteps are 1..T (t = 0 is the data). Everything is float64 on the CPU and gathered per
sample, so a schedule is exact and device independent.

Why our own module rather than diffusers' schedulers: the parts genlab needs are these ~150 lines
(q_sample, the two steps, the bound's Gaussian terms), tested here against closed forms; diffusers
would add a large dependency for the same arithmetic (see the README's diffusion section).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")


def _cosine_alpha_bar(T: int, s: float = 0.008) -> Tensor:
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2
    return f / f[0]


class NoiseSchedule:
    def __init__(self, kind: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {kind!r} ({', '.join(SCHEDULES)})")
        self.kind, self.T = kind, T
        if kind == "linear":
            scale = 1000 / T
            betas = torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), T, dtype=torch.float64)
        else:
            abar = _cosine_alpha_bar(T)
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])  # index t = 0..T, beta_0 = 0
        self.alpha_bar = torch.cumprod(1 - self.betas, 0)  # abar_0 = 1

    def at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] per sample, shaped to broadcast against `like` (B, ...)."""
        v = values[t.cpu().long()].to(like.device, like.dtype)
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        ab = self.at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def velocity(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The v-prediction target sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)."""
        ab = self.at(self.alpha_bar, t, x0)
        return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        ab = self.at(self.alpha_bar, t, x_t)
        return ab.sqrt() * v + (1 - ab).sqrt() * x_t

    def x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        ab = self.at(self.alpha_bar, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (t >= 1; variance beta~_t, 0 at t = 1)."""
        ab, ab_prev = self.at(self.alpha_bar, t, x_t), self.at(self.alpha_bar, t - 1, x_t)
        beta = self.at(self.betas, t, x_t)
        mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t
        return mean, beta * (1 - ab_prev) / (1 - ab)

    # ------------------------------------------------------------------ samplers
    def ddpm_step(self, x_t: Tensor, t: Tensor, eps: Tensor, noise: Tensor, clip: bool = True) -> Tensor:
        """x_{t-1} ~ N(mu_theta(x_t, t), beta_t I) (Ho et al.'s sigma_t^2 = beta_t; no noise at t = 1)."""
        x0 = self.x0_from_eps(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.posterior(x0, x_t, t)
        sigma = self.at(self.betas, t, x_t).sqrt() * (t > 1).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return mean + sigma * noise

    def ddim_step(self, x_t: Tensor, t: Tensor, t_prev: Tensor, eps: Tensor, eta: float, noise: Tensor,
                  clip: bool = True) -> Tensor:
        """DDIM: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z, with
        s = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev); eta = 0 is deterministic."""
        ab, ab_prev = self.at(self.alpha_bar, t, x_t), self.at(self.alpha_bar, t_prev, x_t)
        x0 = self.x0_from_eps(x_t, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # the eps consistent with the clipped x0
        s = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev - s ** 2).clamp_min(0).sqrt() * eps + s * noise

    def ddim_inverse_step(self, x_prev: Tensor, t_prev: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The deterministic DDIM map run forwards (x_{t_prev} -> x_t), for encoding data to noise."""
        ab, ab_prev = self.at(self.alpha_bar, t, x_prev), self.at(self.alpha_bar, t_prev, x_prev)
        x0 = (x_prev - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def timesteps(self, steps: int) -> list[int]:
        """`steps` timesteps from T down to 1, evenly spaced (DDIM's sub-sequence; all T for steps = T)."""
        if not 1 <= steps <= self.T:
            raise ValueError(f"sampling steps must be in 1..{self.T}, got {steps}")
        return sorted({max(1, round(x)) for x in torch.linspace(self.T, 1, steps).tolist()}, reverse=True)

    # ------------------------------------------------------------------ the variational bound
    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in nats per sample (the bound's L_T; no parameters)."""
        ab = float(self.alpha_bar[self.T])
        mean, var = math.sqrt(ab) * x0, 1 - ab
        return 0.5 * (var + mean.pow(2) - 1 - math.log(var)).flatten(1).sum(1)

    def kl_term(self, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) in nats per sample, t >= 2, with p's
        variance the posterior's beta~_t (Ho et al.'s lower choice) and mean from eps_theta."""
        mean_q, var = self.posterior(x0, x_t, t)
        mean_p, _ = self.posterior(self.x0_from_eps(x_t, t, eps), x_t, t)
        return (0.5 * (mean_q - mean_p).pow(2) / var).flatten(1).sum(1)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per sample (summed) of 8-bit data x in [-1, 1] (256 levels, bin width 2/255) under a
    Gaussian discretised to those bins, the outermost bins reaching to -inf / +inf (Ho et al.'s L_0)."""
    centred = x - mean
    inv = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv * (centred + 1.0 / 255))
    cdf_min = _std_normal_cdf(inv * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp_min(1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp_min(1e-12))
    log_mid = torch.log((cdf_plus - cdf_min).clamp_min(1e-12))
    logp = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_mid))
    return logp.flatten(1).sum(1)
