"""Masked-convolution autoregressive nets: PixelCNN (van den Oord et al. 2016a) and Gated PixelCNN
(van den Oord et al. 2016b), shared by the autoregressive family and the VQ-VAE code-map prior.

Raster order over pixels, and within a pixel the colour channels in order (R before G before B).
Every feature map carries that colour structure: feature channel c belongs to colour group
`groups[c]`, and a masked kernel's centre tap lets output group g see input groups < g (mask A,
first layer) or <= g (mask B, later layers).

- `pixelcnn`: a 7x7 mask-A conv, residual blocks of masked 3x3 (mask B) convs, 1x1 head. It has the
  well-known blind spot: pixels up and to the right of the current one never enter its field.
- `gated-pixelcnn`: a vertical stack (rows above, any column) and a horizontal stack (the current
  row, columns to the left), with gated tanh*sigmoid units and the vertical -> horizontal link
  shifted down one row; together they see every earlier pixel (no blind spot). Optional class
  conditioning adds a learned per-class bias inside every gate.

Both nets take (B, in_channels, H, W) floats (or, for the code-map prior, (B, 1, H, W) integer codes
through an embedding) and return logits (B, colours, n_values, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register
from .common import is_channels_last


def channel_groups(n: int, colours: int, halves: int = 1) -> Tensor:
    """Colour group of each of n channels: contiguous blocks per colour, repeated `halves` times
    (a gated conv's output is split into tanh/sigmoid halves that must each carry every colour)."""
    per_half = n // halves
    if per_half * halves != n or per_half % colours:
        raise ValueError(f"{n} channels do not split into {halves} x {colours} colour groups")
    return (torch.arange(n) % per_half) // (per_half // colours)


class MaskedConv2d(nn.Conv2d):
    """A conv whose kernel is masked for raster-and-colour order.

    `rows`: 'causal' masks rows below the centre and, in the centre row, columns right of centre
    (plain PixelCNN); kernels of the gated stacks are already shaped/padded to be causal, and only
    their centre tap needs the colour mask ('centre' = the last row/col of the kernel)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], mask: str, colours: int,
                 padding: tuple[int, int, int, int], centre: tuple[int, int], causal_rows: bool,
                 in_halves: int = 1, out_halves: int = 1):
        left, right, top, bottom = padding
        symmetric = left == right and top == bottom
        # a symmetric pad goes to the conv itself: F.pad would copy every input (twice under bf16,
        # whose CPU convs run channels_last and convert anything else)
        super().__init__(cin, cout, kernel, padding=(top, left) if symmetric else 0)
        self.pad = padding  # (left, right, top, bottom), as F.pad takes it (and the cached sampler)
        self.pads_input = not symmetric
        kh, kw = kernel
        ci, cj = centre
        m = torch.ones(cout, cin, kh, kw)
        if causal_rows:
            m[:, :, ci + 1:, :] = 0
            m[:, :, ci, cj + 1:] = 0
        g_in = channel_groups(cin, colours, in_halves)
        g_out = channel_groups(cout, colours, out_halves)
        allowed = g_out[:, None] > g_in[None, :] if mask == "A" else g_out[:, None] >= g_in[None, :]
        m[:, :, ci, cj] = allowed.float()
        self.register_buffer("mask", m)

    def forward(self, x: Tensor) -> Tensor:
        if self.pads_input:
            x = F.pad(x, self.pad)
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def square_masked(cin, cout, k, mask, colours, in_halves=1, out_halves=1) -> MaskedConv2d:
    return MaskedConv2d(cin, cout, (k, k), mask, colours, (k // 2,) * 4, (k // 2, k // 2), True,
                        in_halves, out_halves)


class InputEmbedding(nn.Module):
    """Images: x in [0,1] -> 2x-1 (colour channels kept as groups). Codes: an embedding per code,
    all features in one colour group (codes are single-channel)."""

    def __init__(self, in_channels: int, n_codes: int = 0, dim: int = 0):
        super().__init__()
        self.embed = nn.Embedding(n_codes, dim) if n_codes else None
        self.channels = dim if n_codes else in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.embed is not None:
            return self.embed(x[:, 0].long()).permute(0, 3, 1, 2)
        return x * 2 - 1


class LogitsHead(nn.Sequential):
    """ReLU -> masked 1x1 -> ReLU -> masked 1x1 to (B, colours, n_values, H, W) logits; shared by both
    nets (a Sequential, so its parameters keep the names head.1 / head.3 in checkpoints)."""

    def __init__(self, width: int, colours: int, n_values: int):
        super().__init__(nn.ReLU(), square_masked(width, width, 1, "B", colours), nn.ReLU(),
                         square_masked(width, colours * n_values, 1, "B", colours))
        self.colours, self.n_values = colours, n_values

    def forward(self, h: Tensor) -> Tensor:
        out = super().forward(h)
        b, _, hh, ww = out.shape
        return out.view(b, self.colours, self.n_values, hh, ww)


@register("net", "pixelcnn", role="autoregressive", data=("image",))
class PixelCNN(nn.Module):
    def __init__(self, colours: int = 1, n_values: int = 256, width: int = 64, layers: int = 7,
                 first_kernel: int = 7, n_codes: int = 0, num_classes: int = 0):
        super().__init__()
        self.colours, self.n_values = colours, n_values
        self.inp = InputEmbedding(colours, n_codes, width if n_codes else 0)
        cin = self.inp.channels
        self.first = square_masked(cin, width, first_kernel, "A", colours)
        self.blocks = nn.ModuleList(square_masked(width, width, 3, "B", colours) for _ in range(layers))
        self.head = LogitsHead(width, colours, n_values)
        self.cond = nn.Embedding(num_classes, width) if num_classes else None

    def stepper(self, n: int, h: int, w: int, device, y: Tensor | None = None):
        """Per-position evaluation with activation caches (nets/pixelcnn_sampling.py)."""
        from .pixelcnn_sampling import PlainStepper

        return PlainStepper(self, n, h, w, device, y)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.first(self.inp(x))
        bias = self.cond(y)[:, :, None, None] if self.cond is not None and y is not None else 0
        for block in self.blocks:
            h = h + block(F.relu(h)) + bias
        return self.head(h)


class GatedLayer(nn.Module):
    """One gated layer: vertical stack (k//2+1 rows x k cols, rows <= current) and horizontal stack
    (1 x k//2+1: columns <= current; the centre tap colour-masked A on the first layer, else B)."""

    def __init__(self, cin: int, width: int, k: int, colours: int, first: bool, num_classes: int):
        super().__init__()
        kv = k // 2 + 1
        self.first = first
        mask = "A" if first else "B"
        # Vertical: output row i sees rows i-kv+1..i; the colour mask is irrelevant there because the
        # horizontal stack only ever receives it shifted down by one row -- no centre taps needed.
        self.v = nn.Conv2d(cin, 2 * width, (kv, k))
        self.v_pad = (k // 2, k // 2, kv - 1, 0)
        self.h = MaskedConv2d(cin, 2 * width, (1, kv), mask, colours, (kv - 1, 0, 0, 0), (0, kv - 1), False,
                              out_halves=2)
        self.v_to_h = MaskedConv2d(2 * width, 2 * width, (1, 1), "B", colours, (0, 0, 0, 0), (0, 0), False,
                                   in_halves=2, out_halves=2)
        # the vertical link carries only earlier rows, so any channel may feed any channel
        self.v_to_h.mask.fill_(1.0)
        self.h_out = MaskedConv2d(width, width, (1, 1), "B", colours, (0, 0, 0, 0), (0, 0), False)
        self.cond = nn.Embedding(num_classes, 2 * width) if num_classes else None

    @staticmethod
    def _gate(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        if is_channels_last(x):
            # a channel half of a channels_last map is strided, and tanh / sigmoid on it run several
            # times slower than on a dense copy (bf16 sigmoid: 3.0 vs 0.6 ms at 64x32x28x28)
            a, b = (t.contiguous(memory_format=torch.channels_last) for t in (a, b))
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v_in: Tensor, h_in: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        v = self.v(F.pad(v_in, self.v_pad))
        shifted = F.pad(v, (0, 0, 1, -1))  # row i gets rows <= i-1 (negative pad crops: stays contiguous)
        h = self.h(h_in) + self.v_to_h(shifted)
        if self.cond is not None and y is not None:
            c = self.cond(y)[:, :, None, None]
            v, h = v + c, h + c
        h_out = self.h_out(self._gate(h))
        return self._gate(v), h_out if self.first else h_out + h_in


@register("net", "gated-pixelcnn", role="autoregressive", data=("image",))
class GatedPixelCNN(nn.Module):
    def __init__(self, colours: int = 1, n_values: int = 256, width: int = 64, layers: int = 10,
                 first_kernel: int = 7, n_codes: int = 0, num_classes: int = 0):
        super().__init__()
        self.colours, self.n_values = colours, n_values
        self.inp = InputEmbedding(colours, n_codes, width if n_codes else 0)
        cin = self.inp.channels
        self.layers = nn.ModuleList(
            GatedLayer(cin if i == 0 else width, width, first_kernel if i == 0 else 3, colours, i == 0, num_classes)
            for i in range(layers))
        self.head = LogitsHead(width, colours, n_values)

    def stepper(self, n: int, h: int, w: int, device, y: Tensor | None = None):
        """Per-position evaluation with activation caches (nets/pixelcnn_sampling.py)."""
        from .pixelcnn_sampling import GatedStepper

        return GatedStepper(self, n, h, w, device, y)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        v = h = self.inp(x)
        for layer in self.layers:
            v, h = layer(v, h, y)
        return self.head(h)


@torch.inference_mode()
def raster_sample(net: nn.Module, shape: tuple[int, int, int], n: int, generator: torch.Generator | None,
                  to_input, device, y: Tensor | None = None, method: str = "cached") -> Tensor:
    """Draw n maps of integer values (n, C, H, W) pixel by pixel (and colour by colour) from `net`,
    the one sampler of both PixelCNN families (images and VQ-VAE code maps).

    `to_input(values)` turns the values drawn so far into the net's input; `net(x, y)` returns
    logits (n, C, V, H, W). Multinomial draws come from the CPU `generator`, so a seed gives the same
    maps on every device, and the three methods give the same maps for the same seed:
        cached   per-layer activation caches, each layer run at the new position only (the default)
        crop     the net on rows [0, i] (output row i depends on input rows <= i only)
        naive    the whole net on the whole image for every draw (the reference)"""
    if method == "cached":
        from .pixelcnn_sampling import cached_sample

        return cached_sample(net, shape, n, generator, to_input, device, y)
    if method not in ("crop", "naive"):
        raise ValueError(f"unknown sampling method {method!r} (cached, crop, naive)")
    c, h, w = shape
    t = torch.zeros(n, c, h, w, dtype=torch.long, device=device)
    for i in range(h):
        rows = slice(0, i + 1) if method == "crop" else slice(0, h)
        for j in range(w):
            for ch in range(c):
                logits = net(to_input(t[:, :, rows]), y)[:, ch, :, i, j]
                probs = torch.softmax(logits.float(), dim=-1).cpu()
                t[:, ch, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(device)
    return t
