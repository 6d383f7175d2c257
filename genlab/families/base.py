"""The family contract (see DESIGN.md) and the small helpers every family shares.

A family owns its nets, optimizers and update schedule. The trainer and every command use only:
    train_step(batch, step) -> dict[str, Tensor | float]   one update; losses as DETACHED DEVICE
                            tensors, never host floats: the trainer reads them back when it logs
    sample(n, generator=None) -> Tensor             images in [0, 1] (n, C, H, W) or points (n, 2)
    state_dict() / load_state_dict(state)
    device                  where its nets live
    ema_modules             every module whose weights sampling uses (averaged when train.ema_decay > 0)
    capabilities            what it can do beyond training: sample (unconditional samples of the data
                            distribution, for the sample metrics), log_likelihood, reconstruct, encode,
                            interpolate, translate, codebook; each names a method it has
    sample_options          keyword options of `sample` (SampleOption: name, type, help), which become
                            `genlab sample / eval` options with no edit to the CLI
    batches_per_step        real batches consumed per step (e.g. GAN n_critic); default 1
    rank_local_state        state_dict entries that differ between ranks (CycleGAN's history pools):
                            the trainer saves every rank's copy and gives each rank its own on resume
    Options                 the dataclass of the family's config section

`generator` arguments are always CPU torch.Generators: noise is drawn on the CPU and moved, so a
seed gives the same samples on every device. Random draws inside `train_step` go through
`genlab.parallel.shared_randn / shared_rand`, so a global batch gets the same noise at any world size.

Nets become trainable through `genlab.parallel.prepare_module` (DDP under torchrun, channels_last,
torch.compile), and every optimizer step goes through `Update` (fp16 loss scaling, clipping).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch
from torch import Tensor, nn

from .. import registry
from ..config import ConfigError, OptimConfig, RunConfig
from ..speed import inference_chunk


class Family(Protocol):
    Options: type
    device: torch.device
    ema_modules: list[nn.Module]
    capabilities: frozenset[str]
    sample_options: tuple[SampleOption, ...]
    batches_per_step: int
    rank_local_state: tuple[str, ...]

    def train_step(self, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor | float]: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class SampleOption:
    """A keyword option of a family's `sample` (e.g. temperature), declared so the CLI can offer it."""
    name: str
    type: type
    help: str

    def convert(self, value):
        try:
            return self.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{self.name.replace('_', '-')}: expected {self.type.__name__}, got {value!r}") from None


# capability -> the method a family that declares it must have (checked by the contract tests)
CAPABILITY_METHODS = {"sample": "sample", "log_likelihood": "log_likelihood", "reconstruct": "reconstruct",
                      "encode": "encode", "interpolate": "interpolate", "translate": "translate",
                      "codebook": "codebook_stats"}


class FamilyBase:
    """Defaults of the optional parts of the contract; families subclass it."""

    capabilities: frozenset[str] = frozenset()
    sample_options: tuple[SampleOption, ...] = ()
    # measured CPU defaults per data kind for train.amp / channels_last = auto (genlab/speed.py)
    speed: dict[str, dict] = {}
    # test images `genlab eval` scores likelihood / reconstruction on when --n-test is not given
    # (None: as many as --n); for families whose likelihood is expensive per image
    eval_n_test: int | None = None
    batches_per_step: int = 1
    rank_local_state: tuple[str, ...] = ()
    device: torch.device
    ema_modules: list[nn.Module]


def build_family(cfg: RunConfig, info: Any, device: torch.device) -> Family:
    """The family of `cfg` for this data on `device`; resolves cfg.train.amp / channels_last (in place)
    from the family's declared speed defaults and the hardware first (genlab/speed.py)."""
    from .. import speed

    cls = registry.get("family", cfg.family)
    # Families declare `supports_points = False` on their Options; the check lives here, once.
    if info.kind != "image" and not getattr(cls.Options, "supports_points", True):
        raise ConfigError(f"the {cfg.family} family models images; {info.name!r} is {info.kind} data "
                          f"(2-D points need a GAN)")
    speed.resolve(cfg, cls, info, torch.device(device))
    return cls(cfg, info, device)


def bits_per_dim(nll_nats: float | Tensor, dims: int) -> float | Tensor:
    """Nats per example -> bits per dimension (the unit the likelihood papers report)."""
    return nll_nats / (dims * math.log(2))


def make_optimizer(params, opt: OptimConfig) -> torch.optim.Optimizer:
    # fused: one kernel over every tensor instead of torch's per-tensor loop, which is its default on
    # the CPU; measured 3-5x faster steps there (a UNet's 208 tensors: 11.9 -> 2.3 ms), equal to ~1 ulp
    return torch.optim.Adam(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay, eps=opt.eps,
                            fused=True)


class Update:
    """One optimizer's step, done the same way in every family:

        zero_grad -> backward (fp16: of the scaled loss) -> [unscale, clip to `clip`] -> step

    With `train.amp: fp16` a GradScaler scales the loss so small fp16 gradients do not flush to zero,
    and skips the step (lowering the scale) when a gradient overflowed. `skip_nonfinite=True` skips a
    step whose gradient norm is inf/NaN without asking the host: fused Adam takes the verdict as a
    device tensor (`found_inf`), the way GradScaler hands it over. The backward always runs outside
    autocast (autocast is for forwards). After the step the autocast cache is emptied: a family's
    step runs inside one autocast region, which keeps the low-precision copy of every weight it cast,
    so without that a second forward in the same step (a GAN's next critic iteration) would still
    see the weights from before this update. `__call__` returns the pre-clipping gradient norm as a
    device tensor when clipping, else None. The state (optimizer, scaler) resumes exactly."""

    def __init__(self, params: Iterable[nn.Parameter], optim: OptimConfig, train_cfg, device: torch.device,
                 clip: float = 0.0, skip_nonfinite: bool = False):
        self.params = [p for p in params if p.requires_grad]
        self.scaler = torch.amp.GradScaler(torch.device(device).type) if train_cfg.amp == "fp16" else None
        self.skip_nonfinite = skip_nonfinite and self.scaler is None  # the scaler skips overflows itself
        self.opt = make_optimizer(self.params, optim)
        self.clip, self.device = (math.inf if skip_nonfinite and clip <= 0 else clip), torch.device(device)

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def scale(self, t: Tensor) -> Tensor:
        """t times the current loss scale (1 without fp16): for terms that take their own
        autograd.grad, such as the gradient penalty, so that gradient is not flushed to zero either."""
        return self.scaler.scale(t) if self.scaler is not None else t

    def __call__(self, loss: Tensor) -> Tensor | None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):
            (self.scale(loss)).backward()
        norm = None
        if self.scaler is not None:
            if self.clip > 0:
                self.scaler.unscale_(self.opt)
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            if self.clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            if self.skip_nonfinite:
                self.opt.found_inf, self.opt.grad_scale = (~torch.isfinite(norm)).float(), None
            self.opt.step()
        torch.clear_autocast_cache()  # the weights changed: casts made before this step are stale
        return None if norm is None else norm.detach()

    def state_dict(self) -> dict:
        state = self.opt.state_dict()
        if self.scaler is not None:
            state = {**state, "grad_scaler": self.scaler.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        scaler = state.pop("grad_scaler", None)
        self.opt.load_state_dict(state)
        if self.scaler is not None and scaler is not None:
            self.scaler.load_state_dict(scaler)


def to_signed(x: Tensor) -> Tensor:
    """uint8 images in 0..255 -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def to_unit(x: Tensor) -> Tensor:
    """uint8 images in 0..255 -> float in [0, 1]."""
    return x.float().div(255.0)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Standard normal noise drawn on the CPU from `generator` (or the global RNG), then moved."""
    return torch.randn(shape, generator=generator).to(device)


def chunked(fn, *args):
    """fn(*args) over row chunks of its tensor arguments, the results concatenated along rows: for
    inference forwards of per-row nets, whose results do not depend on the chunking. The chunk is
    speed.inference_chunk of the arguments' device; None arguments pass through."""
    first = next(a for a in args if isinstance(a, Tensor))
    size, n = inference_chunk(first.device), first.shape[0]
    if size is None or n <= size:
        return fn(*args)
    return torch.cat([fn(*(a[i:i + size] if isinstance(a, Tensor) else a for a in args))
                      for i in range(0, n, size)])


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
