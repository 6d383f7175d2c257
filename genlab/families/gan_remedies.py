"""Mode-collapse remedies of the GAN family, as small objects the family is given (not branches):

- `Packing` (PacGAN, Lin et al. 2018): the discriminator judges `m` samples at once, concatenated
  along channels for images ((n, C, H, W) -> (n/m, m*C, H, W)) and along features for points
  ((n, 2) -> (n/m, 2m)). Real packs hold real samples only and fake packs fake ones. Losses and
  regularizers see packed inputs, so the gradient penalty is on packed interpolates, as PacGAN does
  for WGAN-GP (one interpolation weight and one gradient norm per pack).
- `LookAhead` (Unrolled GAN, Metz et al. 2017): the generator's loss is taken against the
  discriminator after k differentiable optimizer steps on its own loss, computed with
  torch.func.functional_call on copies of D's parameters and buffers, so D itself, its batch-norm
  statistics, its spectral-norm vectors and its optimizer state are untouched. k = 0 returns D.
- The minibatch standard deviation layer (ProGAN) is a layer inside the discriminator nets
  (nets/common.py `MinibatchStd`); `check_batch` here checks that its groups fit the batch.

Distributed runs: every rank packs (and groups) its own rows. A rank holds a contiguous block of each
global batch (genlab.data.Shard) and packs consecutive rows, so when the rows per rank divide by m,
rank r's packs are exactly the single process's packs of those rows -- hence `check_batch`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from ..parallel import all_reduce_sum, world
from ..parallel.modules import to_channels_last


class Packing:
    """Concatenate each run of `m` consecutive samples into one discriminator input (m = 1: as is)."""

    def __init__(self, m: int, channels_last: bool = False):
        self.m, self.channels_last = m, channels_last

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The discriminator's input shape for data of `shape`: m*C channels, or m*d features."""
        return (self.m * shape[0], *shape[1:])

    def __call__(self, x: Tensor) -> Tensor:
        if self.m == 1:
            return x
        n = x.shape[0]
        if n % self.m:
            raise ValueError(f"cannot pack {n} samples in packs of {self.m}")
        # (n, C, ...) -> (n/m, m, C, ...) -> (n/m, m*C, ...): pack i holds samples i*m .. i*m+m-1
        packed = x.reshape(n // self.m, self.m * x.shape[1], *x.shape[2:])
        return to_channels_last(packed) if self.channels_last else packed


def check_batch(batch_size: int, world_size: int, pack: int, mbstd_group: int) -> None:
    """ConfigError unless each rank's rows of a (sub-)batch split into whole packs, and the packed
    rows into whole minibatch-std groups (the same groups as in one process)."""
    if batch_size % world_size:
        return  # the sampler reports this one (genlab.data.Shard), with its own message
    local = batch_size // world_size
    if local % pack:
        raise ConfigError(f"gan.pack = {pack} needs the batch on each rank divisible by {pack}, but "
                          f"train.batch_size {batch_size} over {world_size} rank(s) gives {local} rows per rank "
                          f"(use a batch_size that is a multiple of {pack * world_size})")
    if mbstd_group:
        rows, group = local // pack, min(mbstd_group, batch_size // pack)
        if rows % group:
            raise ConfigError(f"gan.d_minibatch_std = {mbstd_group} groups the discriminator's inputs, but each "
                              f"rank has {rows} (train.batch_size {batch_size} / {world_size} rank(s) / pack {pack}), "
                              f"not a multiple of {group}")


# ----------------------------------------------------------------------------- unrolled GAN
def _adam_steps(ps: list[Tensor], gs: list[Tensor], state: dict, group: dict) -> tuple[list[Tensor], dict]:
    """torch.optim.Adam's update (L2 weight decay, no amsgrad) of tensors that share a param group and
    a step count, written out of place so autograd can differentiate through it, and with foreach ops:
    one op per list instead of one per tensor (unrolled-gan's step dispatches 4,013 ops instead of
    4,503 and runs 1.02-1.03x faster, the same values bit for bit). sqrt is taken of v
    clamped at 1e-30: at v = 0 its derivative is infinite (0 * inf = NaN in the backward), and the
    clamp moves the value by < 1e-14 against eps."""
    b1, b2 = group["betas"]
    if group["weight_decay"]:
        gs = torch._foreach_add(gs, torch._foreach_mul(ps, group["weight_decay"]))
    t = state["step"] + 1
    m = torch._foreach_add(torch._foreach_mul(state["exp_avg"], b1), torch._foreach_mul(gs, 1 - b1))
    v = torch._foreach_add(torch._foreach_mul(state["exp_avg_sq"], b2),
                           torch._foreach_mul(torch._foreach_mul(gs, gs), 1 - b2))
    root = torch._foreach_sqrt(torch._foreach_clamp_min(v, 1e-30))
    denom = torch._foreach_add(torch._foreach_div(root, (1 - b2 ** t) ** 0.5), group["eps"])
    steps = torch._foreach_div(torch._foreach_mul(m, group["lr"] / (1 - b1 ** t)), denom)
    return torch._foreach_sub(ps, steps), {"step": t, "exp_avg": m, "exp_avg_sq": v}


def _sgd_steps(ps: list[Tensor], gs: list[Tensor], state: dict, group: dict) -> tuple[list[Tensor], dict]:
    """theta <- theta - lr * grad: the update written in Metz et al. (2017), Eq. 5."""
    return torch._foreach_sub(ps, torch._foreach_mul(gs, group["lr"])), state


INNER_STEPS = {"adam": _adam_steps, "sgd": _sgd_steps}


def _start_states(opt: torch.optim.Optimizer, named: dict[str, nn.Parameter]) -> list[tuple[list[str], dict, dict]]:
    """The parameters `named` in lists that step together -- one param group, one step count -- each
    list with a detached copy of the optimizer's state for it (zeros before a first step) and its
    group."""
    lists: dict[tuple[int, float], tuple[list[str], dict, dict]] = {}
    for n, p in named.items():
        group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
        state = opt.state.get(p, {})
        fresh = "exp_avg" not in state
        step = 0 if fresh else float(state["step"])
        together = (id(group), step)
        if together not in lists:
            lists[together] = ([], {"step": step, "exp_avg": [], "exp_avg_sq": []}, group)
        names, moments, _ = lists[together]
        names.append(n)
        for key in ("exp_avg", "exp_avg_sq"):
            moments[key].append(torch.zeros_like(p) if fresh else state[key].detach().clone())
    return list(lists.values())


def _restride(t: Tensor, like: Tensor) -> Tensor:
    return t if t.stride() == like.stride() else torch.empty_like(like).copy_(t)


class _StridedLike(torch.autograd.Function):
    """x with `like`'s strides, and its gradient handed back with them too.

    Elementwise ops on weights and gradients of different layouts may return either layout, and a
    conv weight of one input channel is both layouts at once, told apart by its strides alone. Had
    the first conv's stepped weight lost its channels_last strides, its output and every map after
    it would turn contiguous against the channels_last weights of the later layers; had the
    gradient reaching its look-ahead gradient g lost them, the double backward's conv(x, dL/dg)
    would: mixed layouts, which run torch's slow CPU paths (leaky_relu_backward on a contiguous
    gradient of a channels_last map: 30 ms of unrolled-gan's step)."""

    @staticmethod
    def forward(ctx, x: Tensor, like: Tensor) -> Tensor:
        ctx.like = like.detach()
        return _restride(x, like)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _restride(grad, ctx.like), None


def _strided_like(like: Tensor, x: Tensor) -> Tensor:
    return _StridedLike.apply(x, like)


class LookAhead:
    """The discriminator k optimizer steps ahead, as a differentiable function of the fakes.

    Metz et al. (2017) backpropagate the generator's loss through the unrolled steps (second order).
    The reference code (poolio/unrolled_gan) unrolls D's own Adam, starting from its current moment
    estimates, on the same minibatch at every step; `optim: adam` does that (PyTorch's Adam formula,
    with D's lr, betas, eps and weight decay and a copy of its state), `optim: sgd` the plain gradient
    step of the paper's Eq. 5 with D's lr. The discriminator's loss at each step is the family's own
    (loss + regularizers). Under torchrun each step's gradient is averaged over ranks (with autograd,
    so the second-order terms are too), as DDP averages D's real gradients."""

    def __init__(self, steps: int, loss, regularizers: list, optim: str = "adam"):
        self.steps, self.loss, self.regularizers, self.inner = steps, loss, regularizers, INNER_STEPS[optim]

    def __call__(self, D: nn.Module, opt, real: Tensor, fake: Tensor) -> Callable[[Tensor], Any]:
        """D after `steps` look-ahead steps on (real, fake); `opt` is D's `Update`. k = 0: D itself."""
        if self.steps == 0:
            return D
        trained = {id(p) for p in opt.params}
        named = dict(D.named_parameters())
        params = {n: p.detach().clone().requires_grad_(True) for n, p in named.items() if id(p) in trained}
        fixed = {n: p for n, p in named.items() if id(p) not in trained}
        # buffers are cloned: batch norm and spectral norm update theirs in place during a forward
        buffers = {n: b.clone() for n, b in D.named_buffers()}
        moving = _start_states(opt.opt, {n: named[n] for n in params})
        ones = opt.scale(torch.ones((), device=fake.device))  # the loss scale (fp16), undone per gradient
        for _ in range(self.steps):
            critic = self._critic(D, params, fixed, buffers)
            d_loss = self.loss.d_loss(critic(real), critic(fake))
            for reg in self.regularizers:
                d_loss = d_loss + reg(critic, real, fake, scale=opt.scale)
            grads = torch.autograd.grad(opt.scale(d_loss), list(params.values()), create_graph=True)
            grads = dict(zip(params, grads))
            moving = [(names, self._step(params, grads, names, state, group, ones), group)
                      for names, state, group in moving]
        return self._critic(D, params, fixed, buffers)

    def _step(self, params: dict, grads: dict, names: list[str], state: dict, group: dict, ones: Tensor) -> dict:
        """One inner step of the parameters `names` (replaced in `params`); their new optimizer state."""
        ps, size = [params[n] for n in names], world().size
        gs = [_strided_like(p, all_reduce_sum(grads[n] / ones, grad=True) / size) for n, p in zip(names, ps)]
        stepped, state = self.inner(ps, gs, state, group)
        params.update((n, _strided_like(p, q)) for n, p, q in zip(names, ps, stepped))
        return state

    @staticmethod
    def _critic(D: nn.Module, params: dict, fixed: dict, buffers: dict) -> Callable[[Tensor], Any]:
        tensors = {**fixed, **params, **buffers}
        return lambda x: functional_call(D, tensors, (x,))
