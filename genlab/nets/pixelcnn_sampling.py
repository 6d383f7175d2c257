"""Cached sampling for the PixelCNN nets (Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models"): keep every layer's input activations in a buffer and, for
each new pixel (and colour), compute each layer only at that position, instead of running the whole
net on the image drawn so far.

Why it gives the full forward's numbers: a masked layer's output at (i, j) reads its input only at
(i, j) and at earlier positions (its mask says so), and those were computed -- from complete
inputs -- when their pixels were drawn; positions not yet drawn are never read, so the zeros the
buffers hold there stand in for whatever a full forward would compute. The gated net's vertical
stack at row i reads row i itself (to its right too), but it only reaches the horizontal stack
shifted down one row, so it is computed once per row, after the row is complete.

Per pixel the work is one matrix product per layer at a single position, where the full forward
does H x W of them (784 on MNIST), so a batch costs about one full forward plus Python overhead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _weights(conv: nn.Conv2d) -> Tensor:
    """The conv's effective kernel (masked where it has a mask), as (Cout, Cin * kh * kw)."""
    w = conv.weight * conv.mask if hasattr(conv, "mask") else conv.weight
    return w.reshape(w.shape[0], -1)


class _PointConv:
    """A conv evaluated at one output position from a buffer laid out like its padded input."""

    def __init__(self, conv: nn.Conv2d, pad: tuple[int, int, int, int]):
        self.w = _weights(conv).detach()
        self.b = conv.bias.detach() if conv.bias is not None else None
        self.kh, self.kw = conv.kernel_size
        self.left, self.top = pad[0], pad[2]

    def at(self, buf: Tensor, i: int, j: int) -> Tensor:
        """Output (B, Cout) at (i, j); `buf` is the input padded by (left, right, top, bottom)."""
        window = buf[:, :, i:i + self.kh, j:j + self.kw].reshape(buf.shape[0], -1)
        out = window @ self.w.t()
        return out + self.b if self.b is not None else out

    def row(self, buf: Tensor, i: int) -> Tensor:
        """Outputs (B, Cout, W) of a whole output row i."""
        rows = buf[:, :, i:i + self.kh]  # (B, Cin, kh, W + kw - 1)
        cols = F.unfold(rows, (self.kh, self.kw))  # (B, Cin * kh * kw, W)
        out = torch.einsum("bkw,ok->bow", cols, self.w)
        return out + self.b[None, :, None] if self.b is not None else out


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 (masked) conv on (B, C) features at one position."""
    out = x @ _weights(conv).t()
    return out + conv.bias if conv.bias is not None else out


def _head(head: nn.Sequential, h: Tensor) -> Tensor:
    """LogitsHead at one position: (B, width) -> (B, colours, n_values)."""
    out = _pointwise(head[3], F.relu(_pointwise(head[1], F.relu(h))))
    return out.view(h.shape[0], head.colours, head.n_values)


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PlainStepper:
    """PixelCNN: a mask-A conv, residual mask-B blocks, the logits head -- all at one position."""

    def __init__(self, net, n: int, h: int, w: int, device, y: Tensor | None):
        k, kb = net.first.kernel_size[0], 3
        self.net, self.h, self.w, dt = net, h, w, stepper_dtype(net)
        self.first = _PointConv(net.first, net.first.pad)
        self.blocks = [_PointConv(b, b.pad) for b in net.blocks]
        cin, width = net.inp.channels, net.first.out_channels
        self.x_buf = torch.zeros(n, cin, h + k - 1, w + k - 1, device=device, dtype=dt)
        self.bufs = [torch.zeros(n, width, h + kb - 1, w + kb - 1, device=device, dtype=dt) for _ in net.blocks]
        self.bias = net.cond(y) if net.cond is not None and y is not None else None
        self.p0, self.pb = k // 2, kb // 2

    def set_input(self, i: int, j: int, value: Tensor) -> None:
        """The net's input at (i, j) (B, C) after a colour was drawn there."""
        self.x_buf[:, :, i + self.p0, j + self.p0] = self.net.inp(value[:, :, None, None])[:, :, 0, 0]

    def logits(self, i: int, j: int) -> Tensor:
        h = self.first.at(self.x_buf, i, j)
        for conv, buf in zip(self.blocks, self.bufs):
            buf[:, :, i + self.pb, j + self.pb] = F.relu(h)
            h = h + conv.at(buf, i, j) + (self.bias if self.bias is not None else 0)
        return _head(self.net.head, h)

    def end_row(self, i: int) -> None:
        pass


class GatedStepper:
    """Gated PixelCNN: horizontal stacks at one position per pixel, vertical stacks once per row."""

    def __init__(self, net, n: int, h: int, w: int, device, y: Tensor | None):
        self.net, self.h, self.w, self.layers, dt = net, h, w, list(net.layers), stepper_dtype(net)
        self.v, self.hz, self.v_bufs, self.h_bufs, self.vh = [], [], [], [], []
        for layer in self.layers:
            cin = layer.v.in_channels
            left, right, top, bottom = layer.v_pad
            self.v.append(_PointConv(layer.v, layer.v_pad))
            self.hz.append(_PointConv(layer.h, layer.h.pad))
            self.v_bufs.append(torch.zeros(n, cin, h + top + bottom, w + left + right, device=device, dtype=dt))
            self.h_bufs.append(torch.zeros(n, cin, h, w + layer.h.pad[0], device=device, dtype=dt))
            # v_to_h of the vertical stack's row i - 1 (row 0 sees the zero padding above the image)
            vh = torch.zeros(n, layer.v_to_h.out_channels, h, w, device=device, dtype=dt)
            if layer.v_to_h.bias is not None:
                vh[:, :, 0] = layer.v_to_h.bias[None, :, None]
            self.vh.append(vh)
        self.c = [layer.cond(y) if layer.cond is not None and y is not None else None for layer in self.layers]

    def set_input(self, i: int, j: int, value: Tensor) -> None:
        x = self.net.inp(value[:, :, None, None])[:, :, 0, 0]
        layer0 = self.layers[0]
        self.v_bufs[0][:, :, i + layer0.v_pad[2], j + layer0.v_pad[0]] = x
        self.h_bufs[0][:, :, i, j + layer0.h.pad[0]] = x

    def logits(self, i: int, j: int) -> Tensor:
        h_in = self.h_bufs[0][:, :, i, j + self.layers[0].h.pad[0]]
        for li, layer in enumerate(self.layers):
            if li:
                self.h_bufs[li][:, :, i, j + layer.h.pad[0]] = h_in
            h = self.hz[li].at(self.h_bufs[li], i, j) + self.vh[li][:, :, i, j]
            if self.c[li] is not None:
                h = h + self.c[li]
            h_out = _pointwise(layer.h_out, _gate(h))
            h_in = h_out if layer.first else h_out + h_in
        return _head(self.net.head, h_in)

    def end_row(self, i: int) -> None:
        """Row i is complete: run every vertical stack on it, for the horizontal stacks of row i + 1."""
        for li, layer in enumerate(self.layers):
            v = self.v[li].row(self.v_bufs[li], i)  # (B, 2w, W), before the class bias (as in forward)
            if i + 1 < self.h:
                vh = torch.einsum("bcw,oc->bow", v, _weights(layer.v_to_h))
                if layer.v_to_h.bias is not None:
                    vh = vh + layer.v_to_h.bias[None, :, None]
                self.vh[li][:, :, i + 1] = vh
            if li + 1 < len(self.layers):
                if self.c[li] is not None:
                    v = v + self.c[li][:, :, None]
                nxt = self.layers[li + 1]
                self.v_bufs[li + 1][:, :, i + nxt.v_pad[2], nxt.v_pad[0]:nxt.v_pad[0] + self.w] = _gate(v)


@torch.inference_mode()
def cached_sample(net: nn.Module, shape: tuple[int, int, int], n: int, generator: torch.Generator | None,
                  to_input, device, y: Tensor | None = None) -> Tensor:
    """n maps of integer values (n, C, H, W), drawn pixel by pixel and colour by colour with one
    multinomial per draw from the CPU `generator` -- the draws `raster_sample` makes."""
    c, h, w = shape
    stepper = net.stepper(n, h, w, device, y)
    t = torch.zeros(n, c, h, w, dtype=torch.long, device=device)
    for i in range(h):
        for j in range(w):
            for ch in range(c):
                logits = stepper.logits(i, j)[:, ch]
                probs = torch.softmax(logits.float(), dim=-1).cpu()
                t[:, ch, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
                stepper.set_input(i, j, to_input(t[:, :, i, j]).to(stepper_dtype(net)))
        stepper.end_row(i)
    return t


def stepper_dtype(net: nn.Module) -> torch.dtype:
    return next(net.parameters()).dtype
