"""Invertible layers shared by the flow models (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018).

Every layer maps a batch to a batch of the same size, bijectively:
    forward(x) -> (z, logdet)    logdet: (B,) log|det dz/dx| per example, in nats
    inverse(z) -> x
except `Split`, which factors out half the channels: forward(x) -> (z1, eps, logdet) and
inverse(z1, eps) -> x. Its "learned prior" is written as a conditional affine bijection,
eps = (z2 - mu(z1)) / sigma(z1), so every latent of a model is standard normal and sampling at
temperature T is just eps * T (exactly Glow's reduced-temperature sampling).

Numerical care, since flow ports are known for NaNs:
- ActNorm is initialised from the first training batch (zero mean, unit variance per channel); the
  `initialized` flag is a buffer, so it is saved in state_dict and a resumed or loaded model never
  re-initialises. It only initialises in training mode (log_likelihood / sampling never do).
- Coupling nets end in a zero-initialised conv (each coupling starts near the identity) and keep the
  scale bounded: sigmoid(h + 2) in (0, 1) (Glow) or exp(a * tanh(h)) (RealNVP).
- The 1x1 conv is LU-decomposed: log|det W| = sum(log|s|) is exact and cheap, and W stays invertible.
- Under bf16 autocast only the coupling nets and the learned split priors compute in bf16: their
  outputs are cast back to the flow's dtype before they scale or shift anything, the 1x1 conv runs
  outside autocast, and every log-det is a float32 sum.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..parallel import global_moments
from .common import is_channels_last


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0])


class Squeeze(nn.Module):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2); a permutation, log-det 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"cannot squeeze a {h}x{w} map (sides must be even)")
        z = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, _zeros(x)

    def inverse(self, z: Tensor) -> Tensor:
        b, c4, h, w = z.shape
        c = c4 // 4
        return z.view(b, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c, 2 * h, 2 * w)


class ActNorm(nn.Module):
    """Per-channel affine z = (x + bias) * exp(logs), initialised from the first training batch.

    Under torchrun the initialising statistics are those of the global batch (every rank's rows), so
    all ranks start from the same parameters -- the ones a single process would compute."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # host copy of `initialized`, so a forward never reads the device flag back

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean, var = global_moments(x, (0, 2, 3))
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(var.sqrt().clamp_min(1e-6)))
        self.initialized.fill_(True)
        self._ready = True

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read the loaded flag at the next training forward

    def _ensure_initialized(self, inputs: Callable[[], Tensor]) -> None:
        if self.training and not self._ready:
            if bool(self.initialized):
                self._ready = True
            else:
                with torch.no_grad():  # float32 statistics of what may be a bf16 conv output
                    self.initialize(inputs().to(self.bias.dtype))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._ensure_initialized(lambda: x)
        z = (x + self.bias) * torch.exp(self.logs)
        return z, (x.shape[2] * x.shape[3] * self.logs.sum()).expand(x.shape[0])

    def after_conv(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        """self(conv(x))[0] as one convolution: the affine folded into the conv's weight and bias.

        The same function of the same parameters, but the per-channel add and multiply (and their
        backward passes) act on the kernel, not on every position of a wide hidden map: folding them
        (with InvConv1x1 as a matmul) took 12-23% off the flows' float32 training step here."""
        self._ensure_initialized(lambda: conv(x))
        return _scaled_conv(conv, x, torch.exp(self.logs).flatten(), self.bias.flatten())

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(-self.logs) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution, W = P L (U + diag(sign * exp(log_s))), from a random rotation.

    P is fixed; L is unit lower-triangular; log|det W| = sum(log_s), times H*W positions."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("l_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower * self.l_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> Tensor:
        lower = self.lower * self.l_mask + self.eye
        upper = self.upper * self.l_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # outside any autocast: its log-det is exact for the W it builds only if neither W nor the
        # product is rounded to bf16 (x is the flow's float32 state)
        with torch.autocast(x.device.type, enabled=False):
            z = _mix_channels(x, self.weight())
        return z, (x.shape[2] * x.shape[3] * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):
            return _mix_channels(z, torch.linalg.inv(self.weight().double()).to(z.dtype))


def _mix_channels(x: Tensor, w: Tensor) -> Tensor:
    """The 1x1 convolution W x, as a matrix product over the channel axis that keeps x's layout
    both ways (its gradient too). With these few channels (4-16) oneDNN's 1x1 conv costs 1.7-2.7x
    the product on a channels_last map, and 3-6x a batched product on a contiguous one, forward +
    backward (float32, 2 threads, 64x4x14x14 .. 64x16x7x7). A plain W @ (B, C, H*W) would hand a
    contiguous map a strided gradient (the slow mixed-layout kernels of nets/common.py's
    _ToLayout); bmm's results and gradients are contiguous."""
    if is_channels_last(x):
        return F.linear(x.movedim(1, -1), w).movedim(-1, 1)
    return torch.bmm(w.expand(len(x), -1, -1), x.flatten(2)).view_as(x)


class ZeroConv2d(nn.Module):
    """3x3 conv initialised to output zeros, with Glow's learned per-channel output scale exp(3 * logs)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _scaled_conv(self.conv, x, torch.exp(3 * self.logs).flatten())


def _scaled_conv(conv: nn.Conv2d, x: Tensor, scale: Tensor, shift: Tensor | None = None) -> Tensor:
    """(conv(x) + shift) * scale per output channel, computed as a conv with weight * scale and
    bias (bias + shift) * scale (the flows' convs all have a bias)."""
    bias = conv.bias if shift is None else conv.bias + shift
    return F.conv2d(x, conv.weight * scale[:, None, None, None], bias * scale,
                    conv.stride, conv.padding, conv.dilation, conv.groups)


class CouplingNet(nn.Module):
    """s/t network: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU [-> residual blocks]
    -> ZeroConv3x3. ActNorm here only normalises (its log-det is not part of the flow)."""

    def __init__(self, cin: int, cout: int, hidden: int, res_blocks: int = 0):
        super().__init__()
        self.inp = nn.Conv2d(cin, hidden, 3, padding=1)
        self.norm1 = ActNorm(hidden)
        self.mid = nn.Conv2d(hidden, hidden, 1)
        self.norm2 = ActNorm(hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 3, padding=1)) for _ in range(res_blocks))
        self.out = ZeroConv2d(hidden, cout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1.after_conv(self.inp, x))
        h = F.relu(self.norm2.after_conv(self.mid, h))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def checkerboard(h: int, w: int, parity: int, device=None) -> Tensor:
    """(1, 1, H, W) mask, 1 where (i + j + parity) is even: those positions condition, the rest change."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j + parity) % 2 == 0).float()[None, None]


class AffineCoupling(nn.Module):
    """Affine coupling: one part of x is kept and conditions an affine map of the other part.

    mask='checkerboard' (RealNVP): spatial alternation; the net sees x * b and the mask b itself.
    mask='channel': the channels are split in two halves; parity picks which half is kept
      (Glow uses parity 0 throughout, its 1x1 convs mix channels between couplings).
    scale='sigmoid': scale = sigmoid(h + 2) (Glow);  scale='tanh': log scale = a * tanh(h), a learned
      per channel (RealNVP). Both are bounded, and the last conv starts at zero.
    z = x * scale + shift on the changed part; log-det = sum of log scale over the changed part."""

    def __init__(self, channels: int, hidden: int, mask: str = "channel", parity: int = 0,
                 scale: str = "sigmoid", res_blocks: int = 0):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"unknown coupling mask {mask!r} (checkerboard or channel)")
        if scale not in ("sigmoid", "tanh"):
            raise ValueError(f"unknown coupling scale {scale!r} (sigmoid or tanh)")
        if mask == "channel" and channels < 2:
            raise ValueError("a channel coupling needs at least 2 channels")
        self.mask, self.parity, self.scale = mask, parity, scale
        if mask == "checkerboard":
            cin, cout = channels + 1, channels
        else:
            kept = channels // 2 if parity == 0 else channels - channels // 2
            cin, cout = kept, channels - kept
        self.net = CouplingNet(cin, 2 * cout, hidden, res_blocks)
        if scale == "tanh":
            self.scale_a = nn.Parameter(torch.ones(1, cout, 1, 1))

    def _log_scale_shift(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(cond).to(cond.dtype)  # the net may run in bf16; the affine map and log-det do not
        raw, shift = h[:, 0::2], h[:, 1::2]
        log_scale = F.logsigmoid(raw + 2.0) if self.scale == "sigmoid" else self.scale_a * torch.tanh(raw)
        return log_scale, shift

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
        return (a, b) if self.parity == 0 else (b, a)  # (kept, changed)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "checkerboard":
            b = checkerboard(x.shape[2], x.shape[3], self.parity, x.device)
            log_scale, shift = self._log_scale_shift(torch.cat([x * b, b.expand(x.shape[0], -1, -1, -1)], 1))
            log_scale, shift = log_scale * (1 - b), shift * (1 - b)
            return x * torch.exp(log_scale) + shift, log_scale.flatten(1).sum(1)
        kept, changed = self._halves(x)
        log_scale, shift = self._log_scale_shift(kept)
        return self._join(kept, changed * torch.exp(log_scale) + shift), log_scale.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            b = checkerboard(z.shape[2], z.shape[3], self.parity, z.device)
            log_scale, shift = self._log_scale_shift(torch.cat([z * b, b.expand(z.shape[0], -1, -1, -1)], 1))
            log_scale, shift = log_scale * (1 - b), shift * (1 - b)
            return (z - shift) * torch.exp(-log_scale)
        kept, changed = self._halves(z)
        log_scale, shift = self._log_scale_shift(kept)
        return self._join(kept, (changed - shift) * torch.exp(-log_scale))


class Split(nn.Module):
    """Multi-scale split: keep the first half of the channels (z1), factor out the rest (z2).

    learned=True (Glow): p(z2 | z1) = N(mu(z1), sigma(z1)^2) from a zero-initialised conv, written as
    eps = (z2 - mu) / sigma with log-det -sum(log sigma); learned=False (RealNVP): eps = z2 ~ N(0, I).
    forward(x) -> (z1, eps, logdet); inverse(z1, eps) -> x."""

    def __init__(self, channels: int, learned: bool = True):
        super().__init__()
        self.keep = channels - channels // 2
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep)) if learned else None

    def _mean_logs(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        h = self.prior(z1).to(z1.dtype)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z1, z2 = x[:, :self.keep], x[:, self.keep:]
        if self.prior is None:
            return z1, z2, _zeros(x)
        mean, logs = self._mean_logs(z1)
        return z1, (z2 - mean) * torch.exp(-logs), -logs.flatten(1).sum(1)

    def inverse(self, z1: Tensor, eps: Tensor) -> Tensor:
        if self.prior is None:
            return torch.cat([z1, eps], 1)
        mean, logs = self._mean_logs(z1)
        return torch.cat([z1, mean + eps * torch.exp(logs)], 1)


class LearnedPrior(nn.Module):
    """Glow's learned top prior N(mu, sigma^2) per position, as the bijection eps = (z - mu) / sigma."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.logs = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.mean) * torch.exp(-self.logs), (-self.logs.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return self.mean + z * torch.exp(self.logs)


class Preprocess(nn.Module):
    """Dequantised data y in [0, 1) -> the flow's input space.

    alpha == 0: centre, x = y - 0.5 (Glow; log-det 0).
    alpha > 0: x = logit(alpha + (1 - 2 alpha) y) (RealNVP), log-det
      sum(log(1 - 2 alpha) - log p - log(1 - p)) with p = alpha + (1 - 2 alpha) y."""

    def __init__(self, alpha: float = 0.0):
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.alpha == 0:
            return y - 0.5, _zeros(y)
        p = self.alpha + (1 - 2 * self.alpha) * y
        x = torch.log(p) - torch.log1p(-p)
        ld = torch.log(torch.tensor(1 - 2 * self.alpha)) - torch.log(p) - torch.log1p(-p)
        return x, ld.flatten(1).sum(1)

    def inverse(self, x: Tensor) -> Tensor:
        if self.alpha == 0:
            return x + 0.5
        return (torch.sigmoid(x) - self.alpha) / (1 - 2 * self.alpha)
