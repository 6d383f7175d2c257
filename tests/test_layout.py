"""Memory-format and speed helpers of the nets (genlab/nets/common.py): layout changes that hand
gradients back in the layout each side saved, the instance norm computed by group norm's kernel, the
transposed convolution whose bias gradient is a separate sum, the batch norm whose second backward
is written out. They must compute exactly what the plain torch ops compute; only the layouts and the
kernels differ."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from genlab.nets.common import BatchNorm2d, ConvTranspose2d, Flatten, is_channels_last, make_norm, to_layout
from genlab.nets.common import _BatchNormTrain, _ConvTransposeSummedBias

CL = torch.channels_last


def _map(channels_last: bool, dtype=torch.float64, shape=(3, 4, 5, 6)) -> torch.Tensor:
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    return x.contiguous(memory_format=CL if channels_last else torch.contiguous_format).requires_grad_()


@pytest.mark.parametrize("src, dst", [(True, False), (False, True)])
def test_to_layout_is_the_identity_twice_differentiable_with_the_gradient_in_the_inputs_layout(src, dst):
    x = _map(src)
    y = to_layout(x, dst)
    assert torch.equal(y, x) and is_channels_last(y) == dst
    (g,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert is_channels_last(g) == src  # what the op that made x saved, so its backward stays vectorised
    # a gradient penalty differentiates the backward again
    assert torch.autograd.gradcheck(lambda t: to_layout(t, dst) * t, (x,))
    assert torch.autograd.gradgradcheck(lambda t: to_layout(t, dst) * t, (x,))


def test_to_layout_leaves_a_tensor_already_so_alone():
    x = _map(False)
    assert to_layout(x, False) is x
    flat = torch.randn(3, 4)
    assert to_layout(flat, True) is flat


@pytest.mark.parametrize("channels_last", [False, True])
def test_flatten_is_nn_flatten_with_the_gradient_in_the_inputs_layout(channels_last):
    x = _map(channels_last)
    w = torch.randn(4 * 5 * 6, dtype=torch.float64)
    ours, theirs = Flatten()(x), nn.Flatten()(x)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs * w).sum(), x)
    assert torch.equal(g_ours, g_theirs) and is_channels_last(g_ours) == channels_last


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_instance_norm_is_torchs_instance_norm(channels_last, amp):
    """make_norm('instance') is group norm with one group per channel: the function, the gradients
    and the state_dict of nn.InstanceNorm2d(affine=True), so older checkpoints load."""
    if amp == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 on this CPU")
    torch.manual_seed(0)
    theirs = nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours = make_norm("instance", 4)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys
    x = _map(channels_last, torch.float32, (8, 4, 7, 7))
    out, grads = {}, {}
    for name, norm in (("ours", ours), ("theirs", theirs)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            y = norm(x.to(torch.bfloat16) if amp == "bf16" else x)  # as a conv's output reaches it
        out[name] = y.float()
        grads[name] = torch.autograd.grad((y.float() * torch.arange(y.numel()).view_as(y).sin()).sum(),
                                          (x, norm.weight, norm.bias))
    tol = dict(rtol=1e-5, atol=1e-5) if amp == "off" else dict(rtol=2e-2, atol=2e-2)
    assert torch.allclose(out["ours"], out["theirs"], **tol)
    for a, b in zip(grads["ours"], grads["theirs"]):
        assert torch.allclose(a.float(), b.float(), **tol)


CONV_T = [dict(kernel_size=4, stride=2, padding=1), dict(kernel_size=3, stride=2, padding=1, output_padding=1)]


@pytest.mark.parametrize("conv", CONV_T)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_transposed_conv_is_torchs_with_its_bias_gradient_summed_in_bf16(conv, channels_last, amp):
    """The same parameters (strict state_dict), outputs and gradients as nn.ConvTranspose2d; in bf16
    the bias gradient comes from the separate sum (the grad_fn says which path ran)."""
    if amp == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 on this CPU")
    torch.manual_seed(0)
    theirs = nn.ConvTranspose2d(6, 5, **conv)
    ours = ConvTranspose2d(6, 5, **conv)
    ours.load_state_dict(theirs.state_dict())
    x = _map(channels_last, torch.float32, (8, 6, 7, 7))
    out, grads = {}, {}
    for name, net in (("ours", ours), ("theirs", theirs)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            y = net(x.to(torch.bfloat16) if amp == "bf16" else x)  # as the layer before hands it over
        out[name] = y
        grads[name] = torch.autograd.grad((y.float() * torch.arange(y.numel()).view_as(y).sin()).sum(),
                                          (x, net.weight, net.bias))
    summed = type(out["ours"].grad_fn).__name__.startswith("_ConvTransposeSummedBias")
    assert summed == (amp == "bf16"), type(out["ours"].grad_fn).__name__
    assert out["ours"].dtype == out["theirs"].dtype and torch.equal(out["ours"], out["theirs"])
    assert is_channels_last(out["ours"]) == is_channels_last(out["theirs"])
    tol = dict(rtol=1e-5, atol=1e-5) if amp == "off" else dict(rtol=1e-2, atol=1e-2)  # bias: sums in bf16
    for a, b in zip(grads["ours"], grads["theirs"]):
        assert a.dtype == b.dtype and torch.allclose(a, b, **tol)
    with torch.no_grad():  # sampling: torch's own path, the bias inside the convolution
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("conv", CONV_T)
def test_the_summed_bias_transposed_conv_is_twice_differentiable(conv):
    """Its backward is made of differentiable ops, so a second backward goes through it."""
    x = _map(False, shape=(2, 3, 4, 4))
    w = torch.randn(3, 2, conv["kernel_size"], conv["kernel_size"], dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    args = (conv["stride"], conv["padding"], conv.get("output_padding", 0), 1, 1)
    f = lambda x, w, b: _ConvTransposeSummedBias.apply(x, w, b, *args)  # noqa: E731
    assert torch.equal(f(x, w, b), nn.functional.conv_transpose2d(x, w, b, args[0], args[1], args[2]))
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def _first_and_second_order(net: nn.Module, x: torch.Tensor, amp: str):
    """The layer's output; its first-order gradients (x, weight, bias) as a training step takes them,
    and again with create_graph; the gradients (x, weight) of a loss on the latter: what the unrolled
    GAN's look-ahead differentiates."""
    w = torch.empty_like(x, dtype=torch.float32).copy_(torch.arange(x.numel()).view_as(x).sin())  # x's layout
    grads = []
    for create_graph in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            y = nn.functional.leaky_relu(net(x.to(torch.bfloat16) if amp == "bf16" else x), 0.2)
            grads.append(torch.autograd.grad((y.float() * w).sum(), (x, net.weight, net.bias),
                                             create_graph=create_graph))
    first, graphed = grads
    second = torch.autograd.grad((graphed[0].float() * w).sum() + (graphed[1] * graphed[1]).sum(), (x, net.weight))
    return y, first, [g.detach() for g in graphed], second


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_batch_norm_is_torchs_with_its_second_backward_written_out(channels_last, amp, momentum):
    """The same parameters and buffers (strict state_dict), outputs, running statistics and first-order
    gradients as nn.BatchNorm2d, bit for bit; the second-order gradients agree to the precision's
    rounding; eval mode is torch's path."""
    torch.manual_seed(0)
    theirs, ours = nn.BatchNorm2d(6, momentum=momentum), BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict())
    x = _map(channels_last, torch.float32, (8, 6, 5, 5))
    runs = {name: _first_and_second_order(net, x, amp) for name, net in (("ours", ours), ("theirs", theirs))}
    (y, first, graphed, second), (y_t, first_t, graphed_t, second_t) = runs["ours"], runs["theirs"]
    assert type(y.grad_fn.next_functions[0][0]).__name__.startswith("_BatchNormTrain")
    assert y.dtype == y_t.dtype and torch.equal(y, y_t) and is_channels_last(y) == is_channels_last(y_t)
    for a, b in zip(first, first_t):  # a training step's backward: torch's kernel
        assert a.dtype == b.dtype and torch.equal(a, b)
    tol = dict(rtol=1e-4, atol=1e-4) if amp == "off" else dict(rtol=0.05, atol=0.05)  # bf16 maps in both
    for a, b in zip([*graphed, *second], [*graphed_t, *second_t]):  # the backward written out, and its own
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), **tol), (a - b).abs().max()
        assert is_channels_last(a) == is_channels_last(b)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert torch.equal(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("affine", [True, False])
def test_the_batch_norm_backward_written_out_is_twice_differentiable(affine):
    """float64 against finite differences, and against torch's batch norm to the second order."""
    x = _map(False, shape=(4, 3, 5, 5))
    w, b = (torch.randn(3, dtype=torch.float64, requires_grad=True) if affine else None for _ in range(2))
    f = lambda x, w, b: _BatchNormTrain.apply(x, w, b, None, None, 0.1, 1e-5)  # noqa: E731
    ref = lambda x, w, b: nn.functional.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)  # noqa: E731
    inputs = (x, w, b) if affine else (x,)
    assert torch.autograd.gradcheck(lambda *t: f(*t, *[None] * (3 - len(t))), inputs)
    assert torch.autograd.gradgradcheck(lambda *t: f(*t, *[None] * (3 - len(t))), inputs)
    gy = torch.randn(x.shape, dtype=torch.float64, requires_grad=True)
    hessians = []
    for fn in (f, ref):
        first = torch.autograd.grad(fn(x, w, b), inputs, gy, create_graph=True)
        hessians.append(torch.autograd.grad(sum((g * g.sin()).sum() for g in first), (*inputs[:2], gy)))
    for a, b_ in zip(*hessians):
        assert torch.allclose(a, b_, rtol=1e-9, atol=1e-10)


class _LayoutsPerOp(TorchDispatchMode):
    """Records each op that gets full-size maps of `shape` in both layouts (channels_last and
    contiguous; broadcast operands aside): where torch's CPU elementwise kernels leave their fast path."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.mixed = torch.Size(shape), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        maps = [a for a in args if isinstance(a, torch.Tensor) and a.shape == self.shape and 0 not in a.stride()]
        if len({is_channels_last(m) for m in maps}) > 1 and func is not torch.ops.aten.copy_.default:  # a layout copy
            self.mixed.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_batch_norm_second_backward_keeps_one_layout(amp):
    """Every op of the layer's create_graph backward and of the backward through it sees a
    channels_last map's full-size operands in one layout (mean()'s backward, for one, would hand over
    a new contiguous map)."""
    x = _map(True, torch.float32, (8, 6, 5, 5))
    with _LayoutsPerOp(x.shape) as seen:
        _first_and_second_order(BatchNorm2d(6), x, amp)
    assert seen.mixed == []
