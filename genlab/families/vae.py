"""The VAE family (Kingma & Welling 2014) with an importance-weighted likelihood (Burda et al. 2016).

One stochastic layer: q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), conv encoder/decoder
sized by resolution (`nets/vae.py`). The observation model p(x|z) is `vae.decoder`: bernoulli for
binarized data (`data.binarize: true`), logistic / gaussian (discretised over the 256 grey levels)
otherwise; `auto` picks bernoulli or logistic from the data. Training maximises
    ELBO = E_q[log p(x|z)] - beta_t KL(q(z|x) || p(z))    (analytic KL, one reparameterised sample)
with beta_t ramped linearly from 0 to `beta` over `kl_warmup` steps. The logged `nll_bound_nats`
is -ELBO at beta = 1 (a true upper bound on -log p(x) whatever beta_t is), also as bits/dim.

`log_likelihood(x)` is the IWAE estimate log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), with
k = `vae.iw_samples` (5,000 as in Burda et al. for reported figures), drawn `iw_batch` latents at a
time so k = 5,000 fits in memory (decoded in inference chunks, genlab.speed). It is a lower bound on
log p(x) that tightens as k grows, so the reported NLL is an (upper-biased) estimate. Caveat: with
k = 5,000 a 28x28 conv decoder costs 5,000 forward passes per test image -- about 1-2 s per image on
one CPU thread.

`sample` decodes z ~ N(0, I) to the decoder mean (Bernoulli probabilities / logistic means), the
usual picture; `vae.sample_pixels: true` draws the pixels too (a true sample of p(x)).
`reconstruct`, `encode` (posterior means) and `interpolate` (between encoded test images) are
there for `genlab sample --reconstruct / --interpolate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..fields import option
from ..config import ConfigError, OptimConfig
from ..nets.vae import OBSERVATION_MODELS, VAEDecoder, VAEEncoder
from ..parallel import prepare_module, shared_randn
from ..registry import register
from ..schedules import warmup
from .base import FamilyBase, Update, bits_per_dim, chunked, eval_mode, in_batches, randn


@dataclass
class VAEOptions:
    supports_points = False  # image-only family (read by the registry smoke test)
    latent_dim: int = option(32, ge=1)
    width: int = option(32, ge=1)  # channels of the first conv; doubled at every halving
    decoder: str = option("auto", choices=("auto", "bernoulli", "logistic", "gaussian"))  # bernoulli | logistic | gaussian; auto: bernoulli if binarized else logistic
    beta: float = option(1.0, ge=0)  # weight of the KL term (beta-VAE); the logged bound always uses 1
    kl_warmup: int = option(0, ge=0, zero="no warm-up")  # steps over which beta ramps linearly from 0
    iw_samples: int = option(5000, ge=1)  # k of the importance-weighted log-likelihood estimate
    iw_batch: int = option(2000, ge=1)  # latents drawn per step of that estimate
    sample_pixels: bool = False  # sample(): draw the pixels instead of returning the decoder mean
    grad_clip: float = option(0.0, ge=0, zero="no clipping")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over latent dims -> (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)


def log_normal(z: Tensor, mean: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mean, exp(logvar)) summed over the last dim."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mean).pow(2) * torch.exp(-logvar)).sum(-1)


@register("family", "vae")
class VAEFamily(FamilyBase):
    Options = VAEOptions
    capabilities = frozenset({"sample", "log_likelihood", "reconstruct", "encode", "interpolate"})
    # channels_last: ~1.5x faster IWAE decoding (the likelihood itself stays float32). bf16 + channels_last:
    # 1.48x fp32 training on an AMX CPU (bench/bench_train.py). Default runs, two seeds each: test NLL (IWAE
    # k = 5,000, 500 images) bf16 86.15 / 85.95 vs float32 86.13 / 85.99, FID 69.5 / 67.1 vs 69.1 / 67.6.
    speed = {"image": {"amp": "bf16", "channels_last": True}}
    # an IWAE estimate with k = 5,000 costs ~1 s per test image on 2 CPU cores: 500 images (standard
    # error ~1 nat) unless --n-test asks for more (all 10,000: about 3 hours)
    eval_n_test = 500

    def __init__(self, cfg, info, device: torch.device):
        o: VAEOptions = cfg.options
        name = o.decoder if o.decoder != "auto" else ("bernoulli" if info.binarized else "logistic")
        self.obs = OBSERVATION_MODELS[name]
        if self.obs.needs_binary and not info.binarized:
            raise ConfigError("vae.decoder: bernoulli needs binarized data (data.binarize: true); "
                              "use logistic or gaussian for grey/colour images")
        self.opts, self.info, self.device, self.data_cfg = o, info, device, cfg.data
        shape = tuple(info.shape)
        self.encoder, self.encoder_train = prepare_module(VAEEncoder(shape, o.latent_dim, o.width), cfg.train, device)
        self.decoder, self.decoder_train = prepare_module(
            VAEDecoder(shape, o.latent_dim, o.width, params=self.obs.params), cfg.train, device)
        self.opt = Update([*self.encoder.parameters(), *self.decoder.parameters()], o.optim, cfg.train, device,
                          clip=o.grad_clip)
        self.ema_modules = [self.encoder, self.decoder]
        self.dims = math.prod(shape)

    # ------------------------------------------------------------------ pieces
    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 images (or floats in [0, 1]) -> (encoder input in [-1, 1], uint8 targets)."""
        x = x.to(self.device)
        x_uint8 = x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)
        if self.info.binarized:
            x_uint8 = (x_uint8 > 127).to(torch.uint8) * 255
        return x_uint8.float() / 127.5 - 1, x_uint8

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None, train: bool = False) -> dict[str, Tensor]:
        """Per-image log p(x|z) (one reparameterised z) and the analytic KL, in nats -> (B,) each.
        train=True: the nets' training views, and noise for this rank's rows of the global batch."""
        inp, target = self._prepare(x)
        encoder, decoder = (self.encoder_train, self.decoder_train) if train else (self.encoder, self.decoder)
        # z, the KL and log p(x|z) in float32 under any autocast (the nets themselves may run in bf16)
        mean, logvar = (t.float() for t in encoder(inp))
        eps = (shared_randn(mean.shape[0], mean.shape[1:], self.device) if train
               else randn(tuple(mean.shape), generator, self.device))
        z = mean + torch.exp(0.5 * logvar) * eps
        return {"log_px_z": self.obs.log_prob(decoder(z).float(), target), "kl": gaussian_kl(mean, logvar)}

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The ELBO (beta = 1) in nats per image, one sample of z."""
        t = self.elbo_terms(x, generator)
        return t["log_px_z"] - t["kl"]

    def beta_at(self, step: int) -> float:
        return self.opts.beta * warmup(step, self.opts.kl_warmup)

    # ------------------------------------------------------------------ training
    def train_step(self, batch, step: int) -> dict[str, Tensor | float]:
        x, _ = batch
        t = self.elbo_terms(x, train=True)
        rec, kl = -t["log_px_z"].mean(), t["kl"].mean()
        beta = self.beta_at(step)
        loss = rec + beta * kl
        self.opt(loss / self.dims)  # per-dim loss keeps the learning rate resolution-independent
        bound = (rec + kl).detach()
        return {"nll_bound_nats": bound, "bits_per_dim": bits_per_dim(bound, self.dims),
                "recon_nats": rec.detach(), "kl_nats": kl.detach(), "beta": beta}

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def log_likelihood(self, x_uint8: Tensor, k: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """IWAE estimate of log p(x) in nats per image, with k importance samples (default
        vae.iw_samples); k = 1 is a one-sample ELBO with a Monte Carlo KL."""
        k = k or self.opts.iw_samples
        out = []
        with eval_mode(self.encoder, self.decoder):
            per = max(1, self.opts.iw_batch // k)  # images per pass when k is small
            for i in range(0, len(x_uint8), per):
                out.append(self._iwae(x_uint8[i:i + per], k, generator))
        return torch.cat(out)

    def _iwae(self, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        inp, target = self._prepare(x)
        mean, logvar = self.encoder(inp)
        b, chunk = len(x), max(1, self.opts.iw_batch // len(x))
        log_w = []
        for j in range(0, k, chunk):
            c = min(chunk, k - j)
            eps = randn((b, c, mean.shape[1]), generator, self.device)
            z = mean[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # (b, c, L)
            out = chunked(self.decoder, z.reshape(b * c, -1))
            tgt = target[:, None].expand(b, c, *target.shape[1:]).reshape(b * c, *target.shape[1:])
            log_px_z = self.obs.log_prob(out, tgt).view(b, c)
            log_w.append(log_px_z + log_normal(z) - log_normal(z, mean[:, None], logvar[:, None]))
        return torch.logsumexp(torch.cat(log_w, 1).double(), dim=1).float() - math.log(k)

    # ------------------------------------------------------------------ sampling and latents
    def _decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        out = self.decoder(z)
        x = self.obs.sample(out, generator) if self.opts.sample_pixels else self.obs.mean(out)
        return x.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self.encoder, self.decoder):
            return in_batches(lambda m: self._decode(randn((m, self.opts.latent_dim), generator, self.device),
                                                     generator), n)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Posterior means (B, latent_dim) of uint8 images (or floats in [0, 1])."""
        with eval_mode(self.encoder):
            return self.encoder(self._prepare(x)[0])[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean, in [0, 1]."""
        with eval_mode(self.encoder, self.decoder):
            return self.obs.mean(self.decoder(self.encode(x))).clamp(0, 1)

    @torch.no_grad()
    def interpolate(self, rows: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """rows x steps decoder means, linear in z between the encodings of two random test images."""
        x = load_test_images(self.data_cfg, 2 * rows, generator)
        z = self.encode(x)
        a, b = z[:rows, None], z[rows:, None]
        t = torch.linspace(0, 1, steps, device=self.device)[None, :, None]
        with eval_mode(self.decoder):
            return self.obs.mean(self.decoder((a + t * (b - a)).reshape(rows * steps, -1))).clamp(0, 1)

    def state_dict(self) -> dict:
        return {"encoder": self.encoder.state_dict(), "decoder": self.decoder.state_dict(),
                "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        self.opt.load_state_dict(state["opt"])


def load_test_images(data_cfg, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n random uint8 images of the test split (binarized with `generator` if the data is)."""
    from ..data import load_dataset

    data = load_dataset(data_cfg, "test")
    idx = torch.randperm(len(data.x), generator=generator)[:n]
    x = data.x[idx]
    if data.info.binarized:
        x = (torch.rand(x.shape, generator=generator) * 255 < x.float()).to(torch.uint8) * 255
    return x
