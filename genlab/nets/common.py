"""Small building blocks shared by the nets."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.utils import _pair


def in_float32(fn, x: torch.Tensor):
    """fn(x) computed in float32 whatever autocast is on (x cast up first): for the steps whose
    precision the results depend on (a vector quantizer's nearest codes, a denoiser reading x_t)."""
    with torch.autocast(x.device.type, enabled=False):
        return fn(x.float())


def is_channels_last(x: torch.Tensor) -> bool:
    """x is a 4-D map laid out channels_last (and not also contiguous, as a 1-channel map is)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _ToLayout(torch.autograd.Function):
    """x.contiguous(memory_format=...) whose backward hands the gradient back in x's own layout.
    A plain layout copy passes the gradient through as it comes, so the op before it gets a
    gradient in the other layout than its saved tensors, and torch's CPU elementwise backward
    kernels (leaky_relu, relu, group norm) fall off their vectorised path on mixed layouts:
    leaky_relu_backward on a 64x64x7x7 bf16 map took 574 us against 30 us (2 threads)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        ctx.back_to_channels_last = is_channels_last(x)
        return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return to_layout(grad, ctx.back_to_channels_last), None  # differentiable again (gradient penalties)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """x as a contiguous (or channels_last) map, its gradient returned in x's layout; x itself when
    it is laid out so already or is not a 4-D map."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if x.dim() != 4 or x.is_contiguous(memory_format=fmt):
        return x
    return _ToLayout.apply(x, channels_last)


def to_layout_of(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x (through to_layout) in the layout of `module`'s conv weights: channels_last where
    `module.to(memory_format=torch.channels_last)` laid them out so. Reads the raw parameters, so a
    spectral norm parametrisation is not evaluated. For a map built from a linear layer's output
    (contiguous) on its way into channels_last convs, which would copy it in and hand the activation
    before them a gradient in their layout."""
    return to_layout(x, any(is_channels_last(p) for p in module.parameters()))


class Flatten(nn.Flatten):
    """nn.Flatten whose gradient comes back in its input's layout (see _ToLayout): flattening a
    channels_last map copies it to the contiguous order either way, and this copy hands the
    activation before it a gradient it can use at full speed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(to_layout(x, False))


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that normalises a low-precision channels_last map on the CPU in the contiguous
    layout: torch's CPU kernel for a channels_last bf16 map with float32 affine weights (what
    autocast hands it) took 4.5 ms forward + backward against 0.7 ms contiguous (64x48x14x14, 2
    threads), far more than the two layout copies cost, and rounded differently. The result is
    channels_last again, as the convs want it. With one group (a layer norm) the channels_last
    kernel is the faster one (64x64x7x7: 0.25 against 0.66 ms), so it is left to it.

    Also the instance norm (one group per channel): torch's InstanceNorm2d repeats its weights and
    runs batch norm over a (1, N*C, H, W) view, 1.7-2.4x slower than group norm's kernel here
    (8x64x7x7 to 8x16x28x28, forward + backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and self.num_groups > 1
                and is_channels_last(x)):
            # to_layout, not .contiguous(): the gradients go back in the layout each side saved
            return to_layout(super().forward(to_layout(x, False)), True)
        return super().forward(x)


class _ConvTransposeSummedBias(torch.autograd.Function):
    """conv_transpose2d(x, weight, bias) whose backward leaves the bias out of the convolution's
    backward and sums the output gradient for it instead. The ops in backward are differentiable,
    so a second backward (a gradient penalty's) goes through them."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (*(_pair(v) for v in (stride, padding, dilation, output_padding)), groups)  # ints or pairs
        return nn.functional.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, output_padding, groups = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, dilation, True,
                                                        output_padding, groups, [need_x, need_w, False])
        return gx, gw, grad.sum((0, 2, 3)) if need_b else None, None, None, None, None, None


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same parameters and outputs) whose bias gradient, when it trains in bf16
    on the CPU, is a plain sum of the output gradient instead of part of oneDNN's transposed-
    convolution backward, where it cost more than the rest: 64x16x14x14 -> 28x28, 4x4 stride 2,
    channels_last bf16, forward + backward 1.98 ms with the bias against 0.94 without it; the sum
    takes 0.05 ms (2 threads). Adding the bias after the convolution was no cure: a bf16
    channels_last broadcast add of 16 channels took 0.63 ms. Per layer, forward + backward, batch
    64 at 7x7 and 14x14: 1.16-1.78x in bf16 channels_last, 1.03-1.37x bf16 contiguous. In float32
    torch's own path stays: 0.91-1.23x across layouts and batch sizes 8-64, not a clear gain."""

    def _sums_bias(self, x: torch.Tensor) -> bool:
        """Where the summed bias gradient was measured to pay: a bias that trains, on the CPU, in bf16."""
        low_precision = torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16)
        trains = self.bias is not None and self.bias.requires_grad and torch.is_grad_enabled()
        return trains and low_precision and x.device.type == "cpu"

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not self._sums_bias(x):
            return super().forward(x, output_size)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # cast here, as autocast would: backward needs the cast copies
            dtype = torch.get_autocast_dtype("cpu")
            x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
        padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                       self.dilation)
        with torch.autocast("cpu", enabled=False):
            return _ConvTransposeSummedBias.apply(x, weight, bias, self.stride, self.padding, padding,
                                                  self.groups, self.dilation)


class _BatchNormTrain(torch.autograd.Function):
    """Batch norm over the batch's statistics: torch's kernels forward and for a first-order
    backward; a second backward (the unrolled GAN's look-ahead) differentiates the backward written
    below instead of torch's batch-norm double backward, which sums each map over the batch dim
    first (`sum(0)` of a channels_last map: 13x a contiguous one's) and hands float32 contiguous
    gradients to channels_last bf16 layers."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        out, mean, rstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                           momentum, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a differentiable backward
            with torch.autocast("cpu", enabled=False):
                return (*_batch_norm_backward(grad, x, weight, ctx.eps), None, None, None, None)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, rstd, True,
                                                               ctx.eps, list(ctx.needs_input_grad[:3]))
        return gx, gw, gb, None, None, None, None


def _batch_norm_backward(grad, x, weight, eps: float):
    """The gradients of batch norm (batch statistics over dims 0, 2, 3) for x, weight and bias, from
    differentiable ops that keep x's layout, in float32 at least. With c = x - mean, r = 1 / std:
    dx = w r (g - mean(g) - c r^2 mean(g c)), dw = r sum(g c), db = sum(g)."""
    dims, n = (0, 2, 3), x.numel() // x.shape[1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    x32, g32 = x.to(dtype), grad.to(dtype)
    # sums divided afterwards, not means: mean's backward divides the expanded gradient into a new
    # contiguous map, which the channels_last ops after it then mix with (the same values, bit for bit)
    c = x32 - x32.sum(dims, keepdim=True) / n
    r = ((c * c).sum(dims, keepdim=True) / n + eps).rsqrt()
    gc, gb = (g32 * c).sum(dims, keepdim=True), g32.sum(dims, keepdim=True)
    k = r if weight is None else weight.view(1, -1, 1, 1).to(dtype) * r
    gx = torch.addcmul(g32 - gb / n, c, r * r * gc / n, value=-1) * k  # a full-size operand first: x's layout
    if weight is None:
        return gx.to(x.dtype), None, None
    return gx.to(x.dtype), (r * gc).flatten().to(weight.dtype), gb.flatten().to(weight.dtype)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, buffers and outputs) whose second backward, training on the
    CPU, keeps the layer's layout and runs faster: with the LeakyReLU after it, 1.8-2x in bf16
    channels_last, 1.7-2.5x float32 channels_last, 1.2-1.4x float32 contiguous (64 maps of 7x7, 32
    of 14x14; 2 threads). A training step's backward is torch's own kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and torch.is_grad_enabled()):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:  # as nn.BatchNorm2d counts: momentum None = a cumulative average
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else momentum
        return _BatchNormTrain.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum,
                                     self.eps)


def make_norm(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """'batch' | 'instance' | 'layer' | 'none' -> a normalisation layer for conv features.

    'layer' normalises over (C, H, W) per sample (GroupNorm with one group), which is what
    WGAN-GP recommends for the critic since batch norm breaks the per-sample gradient penalty."""
    if kind == "batch":
        return BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "instance":  # = nn.InstanceNorm2d(channels, affine=True), same state_dict keys
        return GroupNorm(channels, channels)
    if kind == "layer":
        return GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch, instance, layer, none)")


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (torch parametrizations) on every conv and linear layer."""
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)
    return module


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of an eval-mode `module` in which every BatchNorm2d that directly follows a Conv2d or
    ConvTranspose2d in an nn.Sequential is folded into that conv's weight and bias (and replaced by
    Identity): the same function to float32 round-off, one memory pass fewer per layer. For weights
    that no longer train (the feature extractors: 1.85x faster here on batches of 500 MNIST images).
    A generator gains nothing measurable (its batch norms are a small part of its time)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode (its running statistics are folded)")
    folded = copy.deepcopy(module)
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = seq._modules[conv_name], seq._modules[bn_name]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d) \
                    and bn.track_running_stats and not nn.utils.parametrize.is_parametrized(conv):
                seq._modules[conv_name] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq._modules[bn_name] = nn.Identity()
    return folded


def num_halvings(size: int) -> tuple[int, int]:
    """How many stride-2 stages take `size` down to a base of 4..7 pixels: 28 -> (2, 7),
    32 -> (3, 4), 64 -> (4, 4). Any size whose halvings end in 4..7 works."""
    k = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        k += 1
    if k == 0:
        raise ValueError(f"resolution {size} is too small or odd for a strided conv net")
    return k, size


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation (Karras et al. 2018, Sec. 3): one feature appended to
    every sample -- the std of each feature over the sample's group, averaged over features --
    broadcast as one extra channel (N, C, H, W) -> (N, C+1, H, W), or one extra feature (N, F) ->
    (N, F+1). A discriminator that sees it can tell a batch of near-copies from a diverse one.

    As in ProGAN: groups of `group_size` samples (the whole batch when it is smaller), biased
    variance, sqrt(var + 1e-8). Unlike ProGAN's reshape, whose groups are strided (sample i with
    i + N/G, ...), a group is G *consecutive* samples: then a rank of a distributed run, which holds
    a contiguous block of the global batch, forms exactly the groups one process would."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"minibatch std group size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x):
        n = x.shape[0]
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"minibatch std: a batch of {n} does not split into groups of {g}")
        y = x.reshape(n // g, g, *x.shape[1:]).float()  # float32 statistics under bf16 autocast too
        # the biased variance written out: torch.var over this middle dim took 8 ms on a 64x64x7x7
        # batch here (a fifth of the SN-GAN step), the two means 0.3 ms
        var = (y - y.mean(1, keepdim=True)).square().mean(1)
        std = (var + 1e-8).sqrt()  # (n/g, C, ...)
        s = std.flatten(1).mean(1).repeat_interleave(g)  # one number per sample, shared in its group
        feature = s.reshape(n, 1, *([1] * (x.dim() - 2))).expand(n, 1, *x.shape[2:])
        return torch.cat([x, feature.to(x.dtype)], 1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
