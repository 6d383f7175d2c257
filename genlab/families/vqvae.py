"""VQ-VAE (van den Oord et al. 2017) and the PixelCNN prior over its code maps, as two families.

`vqvae`: conv encoder -> vector quantiser (`nets/quantizer.py`: nearest code, straight-through,
EMA codebook with decay 0.99 or the codebook loss, commitment beta = 0.25, dead-code restarts) ->
conv decoder. Reconstruction loss: MSE on x in [-1, 1] for grey/colour data, Bernoulli
cross-entropy for binarized data (`vqvae.recon: auto`). Every step logs the reconstruction error
(`recon_mse`, on the [0, 1] pixel scale), the codebook's perplexity, codes used in the batch,
codes restarted as dead and the cumulative restarts; `codebook_stats(x)` measures the same on any
images (used by `genlab diagnose`).

Sampling needs a prior over code maps. Without one, `VQVAEFamily.sample` falls back to drawing
every code position independently from the codebook's usage frequencies (a unigram prior): it keeps
the training loop's sample grids and the smoke test working, but its pictures are textures made of
digit strokes, not digits. Real samples come from the second stage:

`prior` (model `vqvae-prior`): `genlab train vqvae-prior --set prior.vqvae=RUN_DIR` loads the
VQ-VAE run (its EMA weights if it kept them), encodes each training batch to a code map on the fly
(the encoder is frozen, and cheap next to the prior), and trains a (Gated) PixelCNN from
`nets/pixelcnn.py` on the code indices; `sample` draws code maps autoregressively and decodes them.
The prior's checkpoints also hold the VQ-VAE weights it was trained against, so resuming or
continuing the VQ-VAE run later cannot silently change the codes under a trained prior; the
VQ-VAE run directory must still exist to rebuild the architecture. `prior.vqvae: untrained` builds
a randomly initialised VQ-VAE from the vqvae defaults instead (for smoke tests only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fields import option
from ..config import ConfigError, OptimConfig
from ..nets.common import is_channels_last
from ..nets.pixelcnn import raster_sample
from ..nets.quantizer import Quantized, VectorQuantizer, perplexity
from ..nets.vae import VQDecoder, VQEncoder
from ..parallel import prepare_module
from ..registry import register, require
from .base import FamilyBase, Update, bits_per_dim, eval_mode, in_batches
from .vae import load_test_images


@dataclass
class VQVAEOptions:
    supports_points = False  # image-only family (read by the registry smoke test)
    width: int = option(64, ge=1)  # channels at the code resolution (half that before it)
    res_blocks: int = option(2, ge=0)
    downsample: int = option(2, ge=1)  # stride-2 stages: 28 -> 7x7 code maps, 32 -> 8x8
    n_codes: int = option(512, ge=2)  # K
    code_dim: int = option(16, ge=1)  # D
    beta: float = option(0.25, ge=0)  # commitment weight
    codebook_update: str = option("ema", choices=("ema", "loss"))
    decay: float = option(0.99, ge=0, lt=1)  # EMA decay of the codebook
    dead_steps: int = option(100, ge=0, zero="no restarts")  # restart a code unused for this many batches
    recon: str = option("auto", choices=("auto", "mse", "bernoulli"))  # auto: bernoulli if binarized else mse
    grad_clip: float = option(0.0, ge=0, zero="no clipping")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))


class VQVAE(nn.Module):
    def __init__(self, shape: tuple[int, int, int], o: VQVAEOptions):
        super().__init__()
        self.encoder = VQEncoder(shape, o.code_dim, o.width, o.res_blocks, o.downsample)
        self.quantizer = VectorQuantizer(o.n_codes, o.code_dim, o.beta, o.codebook_update, o.decay,
                                         dead_steps=o.dead_steps)
        self.decoder = VQDecoder(shape, o.code_dim, o.width, o.res_blocks, o.downsample)

    def forward(self, x: Tensor) -> tuple[Tensor, "Quantized"]:
        """x in [-1, 1] -> (decoder output, quantiser result): one training forward (DDP wraps this)."""
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.z_q), q


@register("family", "vqvae")
class VQVAEFamily(FamilyBase):
    Options = VQVAEOptions
    # sample(): the documented unigram fallback (see the module docstring); vqvae-prior samples for real
    capabilities = frozenset({"sample", "reconstruct", "encode", "interpolate", "codebook"})
    # bf16 + channels_last: 1.51-1.56x fp32 on an AMX CPU (bench/bench_train.py; channels_last alone
    # 1.09x), the quantizer kept in float32. Default runs, two seeds each, test recon MSE (all 10,000
    # images): bf16 0.00159 / 0.00158 vs float32 0.00159 / 0.00167; perplexity 331 / 323 vs 324 / 320.
    # README "Performance".
    speed = {"image": {"amp": "bf16", "channels_last": True}}

    def __init__(self, cfg, info, device: torch.device):
        o: VQVAEOptions = cfg.options
        recon = o.recon if o.recon != "auto" else ("bernoulli" if info.binarized else "mse")
        if recon == "bernoulli" and not info.binarized:
            raise ConfigError("vqvae.recon: bernoulli needs binarized data (data.binarize: true)")
        self.opts, self.info, self.device, self.data_cfg, self.recon = o, info, device, cfg.data, recon
        try:
            model = VQVAE(tuple(info.shape), o)
        except ValueError as e:  # e.g. too many halvings for the resolution
            raise ConfigError(f"vqvae: {e}") from None
        self.model, self.model_train = prepare_module(model, cfg.train, device)
        self.opt = Update(self.model.parameters(), o.optim, cfg.train, device, clip=o.grad_clip)
        self.ema_modules = [self.model]
        h = info.shape[1] // 2 ** o.downsample
        self.code_shape = (h, info.shape[2] // 2 ** o.downsample)

    # ------------------------------------------------------------------ pieces
    def _prepare(self, x: Tensor) -> Tensor:
        """uint8 images (or floats in [0, 1]) -> [-1, 1] (binarized data: {-1, 1})."""
        x = x.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
        if self.info.binarized:
            x = (x > 0.5).float()
        return x * 2 - 1

    def _to_unit(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out) if self.recon == "bernoulli" else ((out + 1) / 2).clamp(0, 1)

    def _recon_loss(self, out: Tensor, x: Tensor) -> Tensor:
        if self.recon == "bernoulli":  # nats per pixel
            return F.binary_cross_entropy_with_logits(out, (x > 0).float())
        return F.mse_loss(out, x)

    # ------------------------------------------------------------------ training
    def train_step(self, batch, step: int) -> dict[str, Tensor]:
        x = self._prepare(batch[0])
        out, q = self.model_train(x)
        recon = self._recon_loss(out, x)
        loss = recon + q.loss
        self.opt(loss)
        mse = F.mse_loss(self._to_unit(out.detach()), (x + 1) / 2)
        return {"loss": loss.detach(), "recon_mse": mse, "vq_loss": q.loss.detach(), **q.stats}

    # ------------------------------------------------------------------ codes
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Code indices (B, h, w) of uint8 images (or floats in [0, 1])."""
        with eval_mode(self.model):
            return self.model.quantizer.codes_of(self.model.encoder(self._prepare(x)))

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> images in [0, 1]."""
        with eval_mode(self.model):
            return self._to_unit(self.model.decoder(self.model.quantizer.lookup(codes.to(self.device))))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_codes(self.encode(x))

    @torch.no_grad()
    def codebook_stats(self, x: Tensor, batch: int = 500) -> dict[str, float]:
        """Codebook health and reconstruction error on images x (uint8): perplexity of the code
        usage, codes used / dead (never chosen on x), and the MSE on the [0, 1] pixel scale."""
        counts = torch.zeros(self.opts.n_codes, dtype=torch.long)
        se = torch.zeros((), device=self.device)  # summed on the device, read back once
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            codes = self.encode(xb)
            counts += torch.bincount(codes.flatten().cpu(), minlength=self.opts.n_codes)
            target = (self._prepare(xb) + 1) / 2
            se += F.mse_loss(self.decode_codes(codes), target, reduction="sum")
        used = int((counts > 0).sum())
        return {"perplexity": perplexity(counts), "codes_used": used, "dead_codes": self.opts.n_codes - used,
                "n_codes": self.opts.n_codes, "usage": used / self.opts.n_codes,
                "recon_mse": float(se) / (len(x) * math.prod(self.info.shape)), "n_images": len(x)}

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Documented fallback (see the module docstring): codes drawn independently from their
        usage frequencies. Train `vqvae-prior` for real samples."""
        usage = self.model.quantizer.cluster_size.detach().float().cpu().clamp_min(0)
        probs = usage if usage.sum() > 0 else torch.ones_like(usage)
        h, w = self.code_shape

        def draw(m: int) -> Tensor:
            codes = torch.multinomial(probs, m * h * w, replacement=True, generator=generator)
            return self.decode_codes(codes.view(m, h, w))

        return in_batches(draw, n)

    @torch.no_grad()
    def interpolate(self, rows: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """rows x steps decodings of quantised, linearly interpolated encoder outputs of test images."""
        x = self._prepare(load_test_images(self.data_cfg, 2 * rows, generator))
        with eval_mode(self.model):
            z = self.model.encoder(x)
            a, b = z[:rows, None], z[rows:, None]
            t = torch.linspace(0, 1, steps, device=self.device).view(1, steps, 1, 1, 1)
            zt = (a + t * (b - a)).flatten(0, 1)
            return self.decode_codes(self.model.quantizer.codes_of(zt))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


# ============================================================================== the prior
@dataclass
class PriorOptions:
    supports_points = False
    vqvae: str = ""  # run directory of a trained vqvae (required); "untrained" for smoke tests only
    checkpoint: str = "last"  # which checkpoint of that run
    net: str = "gated-pixelcnn"  # or pixelcnn
    width: int = option(64, ge=1)
    layers: int = option(8, ge=1)
    first_kernel: int = option(5, ge=1)
    grad_clip: float = option(1.0, ge=0, zero="no clipping")
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, betas=(0.9, 0.999)))


def load_vqvae(o: PriorOptions, cfg, info, device: torch.device) -> VQVAEFamily:
    """The frozen VQ-VAE a prior is trained against (EMA weights applied if the run kept them)."""
    if o.vqvae == "untrained":
        from ..config import build

        return VQVAEFamily(build([{"family": "vqvae", "vqvae": {}, "data": cfg.to_dict()["data"]}]), info, device)
    if not o.vqvae:
        raise ConfigError("vqvae-prior needs a trained VQ-VAE: --set prior.vqvae=RUN_DIR "
                          "(a run directory of `genlab train vqvae`)")
    if not (Path(o.vqvae) / "config.yaml").is_file():
        raise ConfigError(f"prior.vqvae: {o.vqvae} is not a genlab run directory (no config.yaml)")
    from ..runs import load_run

    run = load_run(o.vqvae, o.checkpoint, device)
    if run.cfg.family != "vqvae":
        raise ConfigError(f"prior.vqvae: {o.vqvae} is a {run.cfg.family!r} run, not a vqvae run")
    if tuple(run.info.shape) != tuple(info.shape) or run.info.binarized != info.binarized:
        raise ConfigError(f"prior.vqvae: {o.vqvae} was trained on {run.info.name} {tuple(run.info.shape)}"
                          f"{' binarized' if run.info.binarized else ''}; this run's data is {info.name} "
                          f"{tuple(info.shape)}{' binarized' if info.binarized else ''} (set the same data.*)")
    if run.ema is not None:
        run.ema.copy_to(run.family.ema_modules)
    return run.family


def code_cross_entropy(logits: Tensor, codes: Tensor) -> Tensor:
    """-log softmax(logits)[code] in float32 at every position (B, h, w) of (B, K, h, w) logits.
    channels_last logits are rows of K already: cross entropy over that (B*h*w, K) view gives the
    same values as over dim 1 of the map, whose log-softmax ran 2-3x slower here (64x512x7x7 float32,
    forward + backward 6.8 against 3.7 ms); contiguous logits would need a copy, and keep the map."""
    if not is_channels_last(logits):
        return F.cross_entropy(logits.float(), codes, reduction="none")
    rows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # a view, no copy
    return F.cross_entropy(rows.float(), codes.reshape(-1), reduction="none").view(codes.shape)


@register("family", "prior")
class PriorFamily(FamilyBase):
    Options = PriorOptions
    capabilities = frozenset({"sample"})  # reconstruction is the first stage's, not the prior's
    # measured on an AMX CPU (bench/bench_train.py): bf16 1.49x fp32 (channels_last adds nothing). Default
    # runs on one VQ-VAE, two seeds each, FID at n = 10,000: bf16 24.26 / 26.18 vs float32 26.50 / 27.29;
    # final training NLL 160.4 / 160.1 vs 160.1 / 159.9 nats per code map. README "Performance".
    speed = {"image": {"amp": "bf16"}}

    def __init__(self, cfg, info, device: torch.device):
        o: PriorOptions = cfg.options
        self.opts, self.info, self.device = o, info, device
        self.vq = load_vqvae(o, cfg, info, device)
        self.vq.model.eval().requires_grad_(False)
        self.n_codes = self.vq.opts.n_codes
        net_cls = require("net", o.net, "prior.net", role="autoregressive")
        net = net_cls(colours=1, n_values=self.n_codes, width=o.width, layers=o.layers,
                      first_kernel=o.first_kernel, n_codes=self.n_codes)
        self.net, self.net_train = prepare_module(net, cfg.train, device)
        self.opt = Update(self.net.parameters(), o.optim, cfg.train, device, clip=o.grad_clip)
        self.ema_modules = [self.net]

    def nll(self, codes: Tensor, net: nn.Module | None = None) -> Tensor:
        """-log p(code map) in nats per map (B,)."""
        net = self.net if net is None else net  # not `net or`: a compiled net has no truth value
        # (B, 1, K, h, w) -> (B, K, h, w) by squeeze, a view whose backward keeps the gradient's layout
        # ([:, 0]'s backward wrote it into a new contiguous map for the channels_last 1x1 conv before)
        logits = net(codes[:, None]).squeeze(1)
        return code_cross_entropy(logits, codes).flatten(1).sum(1)

    def train_step(self, batch, step: int) -> dict[str, Tensor]:
        with torch.autocast(self.device.type, enabled=False):  # the frozen encoder's codes, as sampled later
            codes = self.vq.encode(batch[0])
        nats = self.nll(codes, self.net_train).mean()
        self.opt(nats / codes[0].numel())
        nats = nats.detach()
        return {"nll_nats": nats, "bits_per_code": bits_per_dim(nats, codes[0].numel())}

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n code maps (n, h, w) drawn by the raster sampler the PixelCNN family shares."""
        with eval_mode(self.net):
            return raster_sample(self.net, (1, *self.vq.code_shape), n, generator, lambda codes: codes,
                                 self.device)[:, 0]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return in_batches(lambda m: self.vq.decode_codes(self.sample_codes(m, generator)), n)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "vqvae": self.vq.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.vq.model.load_state_dict(state["vqvae"])
