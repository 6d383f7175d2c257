"""Collectives that are no-ops in one process, so family code reads the same at any world size."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import GenlabError
from .world import world


def _active() -> bool:
    return world().distributed and dist.is_initialized()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: the backward of a sum is the sum of the ranks' gradients --
    itself computed by this Function, so that a create_graph backward (a gradient penalty, the
    unrolled GAN's look-ahead, through sync_bn's statistics) can be differentiated again: an
    all-reduce of a clone would record only the clone, and the second-order terms of the other
    ranks' samples would be lost."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce_sum(t: Tensor, grad: bool = False) -> Tensor:
    """The sum of `t` over ranks (a new tensor; `t` itself in one process). grad=True keeps autograd."""
    if not _active():
        return t
    if grad:
        return _AllReduceSum.apply(t)
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def shard_rows(x: Tensor) -> Tensor:
    """This rank's contiguous block of rows of a global tensor (rows divisible by the world size)."""
    w = world()
    if not w.distributed:
        return x
    if x.shape[0] % w.size:
        raise ValueError(f"{x.shape[0]} rows cannot be split evenly over {w.size} ranks")
    k = x.shape[0] // w.size
    return x[w.rank * k:(w.rank + 1) * k]


def _shared(draw, n_local: int, shape: Sequence[int], device, generator) -> Tensor:
    # Drawn on the CPU for the whole global batch (the same numbers on every rank and on every
    # device), then sliced: rank r gets exactly the rows a single process would give its samples.
    full = draw((n_local * world().size, *shape), generator=generator)
    return shard_rows(full).to(device)


def shared_randn(n_local: int, shape: Sequence[int], device, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise for this rank's n_local rows of a global batch (see `_shared`)."""
    return _shared(torch.randn, n_local, shape, device, generator)


def shared_rand(n_local: int, shape: Sequence[int], device, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) noise for this rank's n_local rows of a global batch (see `_shared`)."""
    return _shared(torch.rand, n_local, shape, device, generator)


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0, in rank order."""
    if not _active():
        return t
    parts = [torch.empty_like(t) for _ in range(world().size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj: Any) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects, e.g. CPU tensors)."""
    if not _active():
        return [obj]
    out: list = [None] * world().size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn, *args, **kwargs) -> Any:
    """fn(*args) on rank 0 only, its result -- or the user error it raised -- on every rank (so a bad
    checkpoint stops all ranks with the same message instead of leaving them waiting)."""
    if not _active():
        return fn(*args, **kwargs)
    result, error = None, None
    if world().main:
        try:
            result = fn(*args, **kwargs)
        except GenlabError as e:
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def barrier() -> None:
    if _active():
        dist.barrier()


@torch.no_grad()
def global_moments(x: Tensor, dims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over `dims` of the global batch (every rank's x together), two-pass
    for accuracy; exactly x.mean(dims) / x.var(dims, unbiased=False) in one process."""
    if not _active():
        return x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    count = all_reduce_sum(torch.tensor(float(x.numel() // _kept(x, dims)), device=x.device))
    mean = all_reduce_sum(x.sum(dims, keepdim=True)) / count
    var = all_reduce_sum((x - mean).pow(2).sum(dims, keepdim=True)) / count
    return mean, var


def _kept(x: Tensor, dims: Sequence[int]) -> int:
    """Number of elements of x NOT reduced over (the size of one moment tensor)."""
    n = 1
    for d in range(x.dim()):
        if d not in [dd % x.dim() for dd in dims]:
            n *= x.shape[d]
    return n
