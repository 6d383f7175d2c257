"""Turn a family's net into what a training step calls: synced BatchNorm, channels_last, DDP, compile.

    self.D, self.D_train = prepare_module(D, cfg.train, device)

The first is the plain module: checkpoints, sampling, EMA and evaluation use it, so a run trained on
any number of ranks is read by the ordinary single-process commands. The second is the view that
`train_step` calls for every forward whose backward updates this module's own parameters: the
module itself in one process; a `DistributedDataParallel` wrapper (gradients averaged over ranks)
under torchrun; compiled with torch.compile when `train.compile` is on. Forwards that only pass
gradients through a module (D while the generator learns, the gradient penalty's double backward,
which torch.compile does not support) use the plain module.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .collectives import all_reduce_sum
from .world import world


class ComposedSyncBatchNorm(_BatchNorm):
    """BatchNorm whose batch statistics cover every rank's batch, composed of plain ops: on the CPU
    (torch's SyncBatchNorm is CUDA-only), and on CUDA for modules that are differentiated twice
    (torch's backward is fused kernels that autograd cannot differentiate again).

    Two all-reduces per call (sum, then the sum of squared deviations), both differentiable, so the
    gradient is that of BatchNorm over the global batch. Outside training, or in one process, it is
    an ordinary BatchNorm; its state_dict keys are BatchNorm's, so checkpoints load either way."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world().distributed):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = all_reduce_sum(x.sum(dims), grad=True) / count
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims), grad=True) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * count / (count - 1).clamp_min(1))
        return out

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, m)
        self.running_var.lerp_(unbiased_var, m)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, twice_differentiable: bool = False) -> nn.Module:
    """Every BatchNorm layer of `module` -> one synchronised over ranks: torch's on CUDA, ours on the
    CPU and wherever the module's gradients are differentiated again (`twice_differentiable`: a
    gradient penalty, the unrolled GAN's look-ahead). Parameters and buffers are carried over, so
    the optimizer may be built before or after."""
    if device.type == "cuda" and not twice_differentiable:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, ComposedSyncBatchNorm):
        out = ComposedSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device, twice_differentiable)
        if new is not child:
            setattr(module, name, new)
    return module


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in module.modules())


def prepare_module(module: nn.Module, train_cfg, device: torch.device,
                   twice_differentiable: bool = False) -> tuple[nn.Module, nn.Module]:
    """(plain module, training view) -- see the module docstring. `train_cfg` is the run's TrainConfig;
    `twice_differentiable`: the family differentiates the module's gradients again (see
    convert_sync_batchnorm)."""
    w = world()
    module = module.to(device)
    if train_cfg.sync_bn and w.distributed and _has_batchnorm(module):
        module = convert_sync_batchnorm(module, device, twice_differentiable)
    if train_cfg.channels_last in ("on", True):
        module = module.to(memory_format=torch.channels_last)
    view: nn.Module = module
    if w.distributed and any(p.requires_grad for p in module.parameters()):
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Buffers are not broadcast from rank 0 at every forward: the state that must agree across
        # ranks is synchronised explicitly (see genlab.parallel), and BatchNorm statistics without
        # train.sync_bn are each rank's own (rank 0's are saved).
        ids = [device] if device.type == "cuda" else None
        try:  # torch >= 2.14 spells it forward_sync_buffers (buffers still agree at init, as we want)
            view = DDP(module, device_ids=ids, forward_sync_buffers=False)
        except TypeError:
            view = DDP(module, device_ids=ids, broadcast_buffers=False)
    if train_cfg.compile:
        view = torch.compile(view)
    return module, view


def to_channels_last(x: Tensor) -> Tensor:
    """4-D image batches (uint8 or float) in channels_last memory format; other tensors unchanged.
    Element-wise ops keep the format, so a uint8 batch converted here reaches the first conv so."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


