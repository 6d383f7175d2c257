"""PixelCNN nets and the autoregressive family: masks checked through gradients."""
import pytest
import torch
import torch.nn.functional as F

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.nets.pixelcnn import MaskedConv2d
from genlab.registry import available, get

NETS = available("net", role="autoregressive")


def _net(name, colours, layers=3, width=12, values=4):
    torch.manual_seed(0)
    return get("net", name)(colours=colours, n_values=values, width=width, layers=layers, first_kernel=5)


def _input_grad(net, x, i, j, ch):
    x = x.clone().requires_grad_(True)
    net(x)[:, ch, :, i, j].sum().backward()
    return x.grad[0].abs()  # (C, H, W)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("colours", [1, 3])
def test_output_never_depends_on_current_or_later_inputs(name, colours):
    """d out(i, j, ch) / d in(p, q, c) == 0 for every (p, q) after (i, j) in raster order, and at
    (i, j) itself for every colour c >= ch."""
    h = w = 5
    net = _net(name, colours)
    x = torch.rand(1, colours, h, w)
    for i in range(h):
        for j in range(w):
            for ch in range(colours):
                g = _input_grad(net, x, i, j, ch)
                for p in range(h):
                    for q in range(w):
                        later = (p, q) > (i, j)
                        for c in range(colours):
                            if later or ((p, q) == (i, j) and c >= ch):
                                assert g[c, p, q] == 0, f"out({i},{j},{ch}) sees in({p},{q},{c})"


@pytest.mark.parametrize("pad", [(2, 2, 2, 2), (1, 1, 0, 0), (2, 0, 0, 0), (1, 1, 1, 0)])
def test_masked_conv_pads_like_f_pad(pad):
    """Symmetric pads go to the conv itself, the others through F.pad: both give the padded conv."""
    torch.manual_seed(0)
    conv = MaskedConv2d(4, 6, (3, 3), "B", 1, pad, (1, 1), True)
    x = torch.randn(2, 4, 5, 7)
    expected = F.conv2d(F.pad(x, pad), conv.weight * conv.mask, conv.bias)
    assert torch.allclose(conv(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", NETS)
def test_channels_last_gives_the_contiguous_logits_and_gradients(name):
    """The nets copy strided channel halves in channels_last (the gates) and pad inside the conv:
    layouts must not change what they compute."""
    grads = {}
    outs = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        net = _net(name, 3).to(memory_format=layout)
        x = torch.rand(2, 3, 6, 6).contiguous(memory_format=layout)
        outs[layout] = out = net(x)
        out.square().sum().backward()
        grads[layout] = [p.grad for p in net.parameters()]
    assert torch.allclose(outs[torch.contiguous_format], outs[torch.channels_last], atol=1e-5)
    for a, b in zip(grads[torch.contiguous_format], grads[torch.channels_last]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _field(net, colours=1, h=6, w=6, i=4, j=2):
    torch.manual_seed(1)
    g = _input_grad(net, torch.rand(1, colours, h, w), i, j, 0)
    earlier = [(p, q) for p in range(h) for q in range(w) if (p, q) < (i, j)]
    return [(p, q) for p, q in earlier if g[:, p, q].sum() == 0]


def test_gated_pixelcnn_has_no_blind_spot_while_pixelcnn_does():
    missing_gated = _field(_net("gated-pixelcnn", 1, layers=4))
    missing_plain = _field(_net("pixelcnn", 1, layers=4))
    assert missing_gated == [], f"gated net misses {missing_gated}"
    # the classic blind spot: pixels up and to the right of the current one
    assert missing_plain and all(q > 2 for _, q in missing_plain), missing_plain


def _family(binarize, model="gated-pixelcnn", shape=(1, 6, 6), extra=()):
    cfg = C.resolve(model, sets=["autoregressive.width=12", "autoregressive.layers=2", *extra])
    info = DataInfo(name="t", kind="image", shape=shape, num_classes=10, binarized=binarize)
    torch.manual_seed(0)
    return build_family(cfg, info, torch.device("cpu"))


@pytest.mark.parametrize("binarize", [True, False])
def test_exact_nll_is_the_sum_of_per_pixel_log_probs(binarize):
    fam = _family(binarize, shape=(3, 5, 5))
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    if binarize:
        x = (x > 127).to(torch.uint8) * 255
    ll = fam.log_likelihood(x)
    t = (x > 127).long() if binarize else x.long()
    with torch.no_grad():
        logits = fam.net(t.float() / (fam.values - 1))
    logp = F.log_softmax(logits, dim=2)  # (B, C, V, H, W)
    manual = torch.zeros(4)
    for b in range(4):
        for c in range(3):
            for i in range(5):
                for j in range(5):
                    manual[b] += logp[b, c, t[b, c, i, j], i, j]
    assert torch.allclose(ll, manual, atol=1e-4)
    assert (ll < 0).all()


@pytest.mark.parametrize("model", ["pixelcnn", "gated-pixelcnn"])
def test_sampling_is_reproducible_and_cropping_changes_nothing(model):
    fam = _family(True, model=model)
    a = fam.sample(3, torch.Generator().manual_seed(5))
    b = fam.sample(3, torch.Generator().manual_seed(5))
    naive = fam.sample(3, torch.Generator().manual_seed(5), method="naive")
    crop = fam.sample(3, torch.Generator().manual_seed(5), method="crop")
    assert torch.equal(a, b)
    assert torch.equal(a, naive) and torch.equal(crop, naive), "cached and row-cropped samplers equal full re-evaluation"
    assert set(a.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("colours, classes, codes", [(1, 0, 0), (3, 0, 0), (1, 10, 0), (1, 0, 7)])
def test_cached_sampler_draws_the_naive_samplers_maps(name, colours, classes, codes):
    """The activation-cache sampler computes every layer at the new position only; it must give the
    same maps as running the whole net for every draw, seed for seed. In float64, so that rounding
    cannot move a multinomial draw across a boundary; RGB colour order, class conditioning and the
    VQ-VAE prior's code embedding included."""
    from genlab.nets.pixelcnn import raster_sample

    torch.manual_seed(1)
    values = codes or 4
    net = get("net", name)(colours=colours, n_values=values, width=12, layers=3, first_kernel=5,
                           num_classes=classes, n_codes=codes).double().eval()
    y = torch.arange(4) % 10 if classes else None
    to_input = (lambda t: t.double()) if codes else (lambda t: t.double() / (values - 1))
    shape = (colours, 6, 5)
    maps = {m: raster_sample(net, shape, 4, torch.Generator().manual_seed(3), to_input, "cpu", y, method=m)
            for m in ("cached", "crop", "naive")}
    assert torch.equal(maps["cached"], maps["naive"]) and torch.equal(maps["crop"], maps["naive"])
    assert maps["naive"].unique().numel() > 1  # the nets are random enough to draw different values


def test_class_conditional_sampling_uses_labels():
    fam = _family(True, extra=["autoregressive.class_conditional=true"])
    x = (torch.rand(8, 1, 6, 6) > 0.5).to(torch.uint8) * 255
    y = torch.arange(8) % 10
    losses = fam.train_step((x, y), 1)
    assert losses["nll_nats"] > 0
    out = fam.sample(2, torch.Generator().manual_seed(0), y=torch.tensor([1, 2]))
    assert out.shape == (2, 1, 6, 6)
