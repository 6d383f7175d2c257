"""GAN mode-collapse remedies (genlab/families/gan_remedies.py, nets/common.py MinibatchStd): packing
against explicit concatenation, the batch checks, the minibatch-std feature against a hand loop, the
unrolled look-ahead (leaves D alone, k = 0 is the plain GAN, Adam / SGD inner steps against torch and
a hand update), and the remedies training with other losses."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from genlab import config as C
from genlab.data import DataInfo
from genlab.errors import ConfigError
from genlab.families.base import build_family
from genlab.families.gan_remedies import Packing, _adam_steps, _sgd_steps, _start_states, _strided_like, check_batch
from genlab.nets.common import MinibatchStd
from genlab.registry import available, get
from genlab.train import Trainer

TOY = ["data.name=ring8", "gan.g_width=8", "gan.d_width=8", "data.n_points=200", "train.batch_size=8",
       "train.log_every=1", "train.sample_every=1000"]
MNIST_TINY = ["data.name=mnist", "gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8"]
RING8 = DataInfo("ring8", "points", (2,))
MNIST = DataInfo("mnist", "image", (1, 28, 28))
CPU = torch.device("cpu")


def _family(model: str, sets, info=RING8, seed: int = 0):
    cfg = C.resolve(model, sets=list(sets))
    torch.manual_seed(seed)
    return build_family(cfg, info, CPU)


def _first(module: nn.Module, kind: type) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, kind))


def _points_batch(n: int = 8, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.zeros(n, dtype=torch.long)


# ----------------------------------------------------------------------------- 1. packing
@pytest.mark.parametrize("m", [2, 4])
def test_packing_points_concatenates_consecutive_samples(m):
    x = torch.randn(8, 2)
    packed = Packing(m)(x)
    assert packed.shape == (8 // m, 2 * m)
    for i in range(8 // m):
        assert torch.equal(packed[i], torch.cat([x[i * m + j] for j in range(m)]))


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_packing_images_concatenates_along_channels(m, channels_last):
    x = torch.randn(8, 3, 4, 5)
    packed = Packing(m, channels_last=channels_last)(x)
    assert packed.shape == (8 // m, m * 3, 4, 5)
    for i in range(8 // m):
        assert torch.equal(packed[i], torch.cat([x[i * m + j] for j in range(m)], dim=0))
    if channels_last:
        assert packed.is_contiguous(memory_format=torch.channels_last)


def test_packing_identity_errors_and_shape():
    x = torch.randn(6, 2)
    assert Packing(1)(x) is x
    with pytest.raises(ValueError, match="cannot pack 6 samples in packs of 4"):
        Packing(4)(x)
    with pytest.raises(ValueError):
        Packing(4)(torch.randn(6, 1, 2, 2))
    assert Packing(2).shape((3, 8, 8)) == (6, 8, 8)
    assert Packing(3).shape((2,)) == (6,)
    assert Packing(1).shape((3, 8, 8)) == (3, 8, 8)


def test_packed_discriminators_take_m_inputs():
    fam = _family("gan", TOY + ["gan.pack=2"])
    assert _first(fam.D, nn.Linear).in_features == 4
    assert _first(_family("gan", TOY).D, nn.Linear).in_features == 2  # unpacked: the 2-D point
    assert _first(_family("gan", TOY + ["gan.pack=4"]).D, nn.Linear).in_features == 8

    fam = _family("gan", MNIST_TINY + ["gan.pack=2"], info=MNIST)
    assert _first(fam.D, nn.Conv2d).in_channels == 2
    assert _first(_family("gan", MNIST_TINY, info=MNIST).D, nn.Conv2d).in_channels == 1
    # and a step trains on packed images (8 images -> 4 packs for D)
    torch.manual_seed(1)
    batch = (torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    logs = fam.train_step(batch, 1)
    assert all(math.isfinite(float(v)) for v in logs.values())


# ----------------------------------------------------------------------------- 2. batch checks
def test_check_batch():
    with pytest.raises(ConfigError, match="gan.pack = 4"):
        check_batch(6, 1, 4, 0)
    with pytest.raises(ConfigError, match="rows per rank"):
        check_batch(8, 2, 3, 0)  # 4 rows per rank
    with pytest.raises(ConfigError, match="d_minibatch_std = 3"):
        check_batch(8, 1, 2, 3)  # 4 packed rows, groups of 3
    with pytest.raises(ConfigError, match="d_minibatch_std = 4"):
        check_batch(8, 2, 2, 4)  # 2 packed rows per rank, but one process groups all 4
    with pytest.raises(ConfigError, match="d_minibatch_std"):
        check_batch(12, 1, 1, 8)  # 12 rows, groups of 8
    with pytest.raises(ConfigError, match="not a multiple of 8"):
        check_batch(16, 2, 2, 16)  # one process: one group of all 8 packs; a rank holds only 4 of them
    for args in [(8, 1, 1, 0), (8, 1, 2, 0), (8, 1, 4, 0), (8, 1, 8, 0), (8, 1, 2, 4), (8, 1, 1, 4),
                 (8, 1, 2, 2), (16, 2, 2, 4), (16, 4, 2, 2), (8, 1, 2, 16), (12, 1, 3, 4), (32, 2, 2, 8)]:
        check_batch(*args)  # no error
    check_batch(6, 4, 4, 4)  # batch not divisible by the world: left to the sampler's own message


def test_bad_pack_is_a_config_error_when_the_family_is_built():
    cfg = C.resolve("gan", sets=TOY + ["gan.pack=3"])
    with pytest.raises(ConfigError, match="gan.pack = 3"):
        build_family(cfg, RING8, CPU)
    cfg = C.resolve("gan", sets=TOY + ["gan.pack=2", "gan.d_minibatch_std=3"])
    with pytest.raises(ConfigError, match="gan.d_minibatch_std = 3"):
        build_family(cfg, RING8, CPU)


# ----------------------------------------------------------------------------- 3. minibatch std
def _mbstd_by_hand(x: torch.Tensor, group: int) -> torch.Tensor:
    n = x.shape[0]
    feature = torch.empty(n)
    for start in range(0, n, group):
        members = [x[start + j] for j in range(group)]
        stds = []
        for idx in range(members[0].numel()):  # every (c, h, w) or feature position
            values = [float(s.flatten()[idx]) for s in members]
            mean = sum(values) / group
            var = sum((v - mean) ** 2 for v in values) / group  # biased
            stds.append(math.sqrt(var + 1e-8))
        feature[start:start + group] = sum(stds) / len(stds)
    return feature


def test_minibatch_std_matches_a_hand_loop_on_images():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2)
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 4, 2, 2)
    assert torch.equal(out[:, :3], x)
    want = _mbstd_by_hand(x, 4)
    assert not torch.allclose(want[:4], want[4:])  # two groups, two different numbers
    for i in range(8):
        assert torch.allclose(out[i, 3], torch.full((2, 2), float(want[i])), atol=1e-6)
    # strided groups (ProGAN's reshape: sample i with i + n/G) would give other numbers
    strided = _mbstd_by_hand(x.reshape(4, 2, 3, 2, 2).transpose(0, 1).reshape(8, 3, 2, 2), 4)
    assert not torch.allclose(out[0, 3, 0, 0], strided[0], atol=1e-4)


def test_minibatch_std_on_features_whole_batch_and_errors():
    torch.manual_seed(1)
    x = torch.randn(8, 5)
    out = MinibatchStd(2)(x)
    assert out.shape == (8, 6) and torch.equal(out[:, :5], x)
    assert torch.allclose(out[:, 5], _mbstd_by_hand(x, 2), atol=1e-6)
    # a group larger than the batch is the whole batch
    small = torch.randn(3, 2, 2, 2)
    whole = MinibatchStd(16)(small)
    assert whole.shape == (3, 3, 2, 2)
    assert torch.allclose(whole[:, 2], torch.full((3, 2, 2), float(_mbstd_by_hand(small, 3)[0])), atol=1e-6)
    # identical samples: the feature is sqrt(1e-8)
    same = MinibatchStd(4)(torch.ones(4, 3).mul(2.5))
    assert torch.allclose(same[:, 3], torch.full((4,), 1e-4))
    with pytest.raises(ValueError, match="groups of 4"):
        MinibatchStd(4)(torch.randn(6, 3))
    with pytest.raises(ValueError):
        MinibatchStd(0)


@pytest.mark.parametrize("net, shape, extra", [("mlp-d", (2,), 1), ("dcgan-d", (1, 28, 28), 7 * 7)])
def test_minibatch_std_net_keeps_its_state_dict_keys(net, shape, extra):
    """The layer has no parameters: the keys (and every shape but the head's inputs) are the plain
    net's. The head sees one more feature (MLP) or one more feature map (DCGAN, 7 x 7 at 28 x 28)."""
    cls = get("net", net)
    plain, with_std = cls(shape, width=8, norm="none"), cls(shape, width=8, norm="none", minibatch_std=4)
    assert sum(isinstance(m, MinibatchStd) for m in with_std.modules()) == 1
    assert not any(isinstance(m, MinibatchStd) for m in plain.modules())
    heads = [m for m in plain.modules() if isinstance(m, nn.Linear)][-1], \
        [m for m in with_std.modules() if isinstance(m, nn.Linear)][-1]
    assert heads[1].in_features == heads[0].in_features + extra
    a, b = plain.state_dict(), with_std.state_dict()
    assert list(a) == list(b), f"keys differ: {sorted(set(a) ^ set(b))}"
    differing = [k for k in a if a[k].shape != b[k].shape]
    assert len(differing) == 1 and differing[0].endswith("weight")
    assert b[differing[0]].shape[1] == a[differing[0]].shape[1] + extra
    assert with_std(torch.randn(8, *shape)).shape == (8,)


def test_family_puts_minibatch_std_in_the_discriminator():
    fam = _family("gan", TOY + ["gan.d_minibatch_std=4"])
    layers = [m for m in fam.D.modules() if isinstance(m, MinibatchStd)]
    assert len(layers) == 1 and layers[0].group_size == 4
    assert C.resolve("gan", sets=TOY + ["gan.d_minibatch_std=true"]).options.d_minibatch_std == 4
    assert not any(isinstance(m, MinibatchStd) for m in _family("gan", TOY).D.modules())


# ----------------------------------------------------------------------------- 4. unrolled GAN
def _snapshot(fam):
    state = {k: v.detach().clone() for k, v in fam.D.state_dict().items()}
    opt = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
           for p, s in fam.opt_d.opt.state.items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in fam.D.named_parameters()}
    return state, opt, grads


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    return a == b


def test_lookahead_leaves_d_its_buffers_and_optimizer_state_alone():
    # batch norm and spectral norm give D buffers that a forward changes in place
    fam = _family("gan", TOY + ["gan.unroll=3", "gan.d_args={batch_norm: true}", "gan.spectral_norm=true",
                                "gan.d_optim.lr=0.01"])
    fam.train_step(_points_batch(), 1)  # D's Adam has moments now
    assert fam.opt_d.opt.state and any(k.endswith("running_mean") for k in fam.D.state_dict())
    state, opt, grads = _snapshot(fam)

    torch.manual_seed(5)
    real = fam.pack(torch.randn(8, 2))
    fake = torch.randn(8, 2, requires_grad=True)
    critic = fam.lookahead(fam.D, fam.opt_d, real, fake)
    assert critic is not fam.D
    out = critic(fake)
    fam.loss.g_loss(out).backward()

    after_state, after_opt, after_grads = _snapshot(fam)
    assert list(after_state) == list(state)
    for k in state:
        assert torch.equal(after_state[k], state[k]), k
    assert after_opt.keys() == opt.keys()
    for pid in opt:
        assert opt[pid].keys() == after_opt[pid].keys()
        assert all(_same(opt[pid][k], after_opt[pid][k]) for k in opt[pid])
    for n in grads:
        assert _same(grads[n], after_grads[n]), n

    # the look-ahead did something, and the generator's gradient reaches the fakes
    with torch.no_grad():
        plain = fam.D(fake)
    assert not torch.allclose(out.detach(), plain, atol=1e-4)
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0


def test_full_train_step_with_unroll_changes_only_g():
    """One step: D's update comes before G's, so D's parameters are those of the plain GAN (the look-ahead
    in the G update touched nothing), while G learned against the looked-ahead D."""
    plain = _family("gan", TOY + ["gan.d_optim.lr=0.01"])
    unrolled = _family("gan", TOY + ["gan.d_optim.lr=0.01", "gan.unroll=2"])
    for fam in (plain, unrolled):
        torch.manual_seed(3)
        fam.train_step(_points_batch(), 1)
    for (n, a), b in zip(plain.D.state_dict().items(), unrolled.D.state_dict().values()):
        assert torch.equal(a, b), n
    for (pa, sa), (pb, sb) in zip(plain.opt_d.opt.state.items(), unrolled.opt_d.opt.state.items()):
        assert all(_same(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(a, b) for a, b in zip(plain.G.parameters(), unrolled.G.parameters()))


def test_unroll_zero_is_the_plain_gan():
    fam = _family("gan", TOY + ["gan.unroll=0"])
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    assert fam.lookahead(fam.D, fam.opt_d, real, fake) is fam.D

    def trained(extra):
        fam = _family("gan", TOY + extra, seed=7)
        torch.manual_seed(11)
        for step in range(1, 4):
            fam.train_step(_points_batch(seed=step), step)
        return fam.state_dict()

    def flat(state):
        out = []
        for v in state.values():
            if isinstance(v, dict):
                out += flat(v)
            elif torch.is_tensor(v):
                out.append(v)
        return out

    base, zero, one = trained([]), trained(["gan.unroll=0"]), trained(["gan.unroll=1"])
    assert len(flat(base)) == len(flat(zero)) > 0
    assert all(torch.equal(a, b) for a, b in zip(flat(base), flat(zero)))
    # the comparison can fail: one look-ahead step gives another generator
    assert not all(torch.equal(a, b) for a, b in zip(flat(base["G"]), flat(one["G"])))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_steps_match_torch_adam(weight_decay):
    """The look-ahead's written-out Adam (foreach ops over a list of tensors) takes torch.optim.Adam's
    steps, and continues from a copy of its state."""
    torch.manual_seed(0)
    p0 = [torch.randn(6), torch.randn(2, 3)]
    grads = [[torch.randn_like(t) for t in p0] for _ in range(3)]
    grads[0][0][2] = 0.0  # a zero gradient entry (v = 0 after the first step there)
    ps = [nn.Parameter(t.clone()) for t in p0]
    opt = torch.optim.Adam(ps, lr=0.05, betas=(0.5, 0.9), eps=1e-8, weight_decay=weight_decay)
    group = {k: opt.param_groups[0][k] for k in ("lr", "betas", "eps", "weight_decay")}
    qs, state = [t.clone() for t in p0], {"step": 0, "exp_avg": [torch.zeros_like(t) for t in p0],
                                         "exp_avg_sq": [torch.zeros_like(t) for t in p0]}
    for i, gs in enumerate(grads):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        qs, state = _adam_steps(qs, gs, state, group)
        assert state["step"] == i + 1
        for j, p in enumerate(ps):
            assert torch.allclose(qs[j], p.detach(), atol=1e-6), (i, j)
            assert torch.allclose(state["exp_avg"][j], opt.state[p]["exp_avg"], atol=1e-7)
            assert torch.allclose(state["exp_avg_sq"][j], opt.state[p]["exp_avg_sq"], atol=1e-7)
    assert not torch.allclose(qs[0], p0[0], atol=1e-3)

    # continuing from the optimizer's own state (what the look-ahead starts from)
    [(names, start, grp)] = _start_states(opt, {"a": ps[0], "b": ps[1]})
    assert names == ["a", "b"] and grp is opt.param_groups[0] and start["step"] == 3
    assert start["exp_avg"][1] is not opt.state[ps[1]]["exp_avg"]  # a copy
    assert torch.equal(start["exp_avg"][1], opt.state[ps[1]]["exp_avg"])
    gs = [torch.randn_like(t) for t in p0]
    qs, _ = _adam_steps([p.detach().clone() for p in ps], gs, start, grp)
    for p, g in zip(ps, gs):
        p.grad = g
    opt.step()
    assert all(torch.allclose(q, p.detach(), atol=1e-6) for q, p in zip(qs, ps))


def test_the_lookahead_steps_together_only_what_shares_a_group_and_a_step_count():
    stepped, fresh, other = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(1))
    opt = torch.optim.Adam([{"params": [stepped, fresh]}, {"params": [other], "lr": 0.5}])
    stepped.grad = torch.ones(2)
    opt.step()  # only `stepped` has a gradient: `fresh` and `other` keep no state
    lists = _start_states(opt, {"s": stepped, "f": fresh, "o": other})
    by_name = {tuple(names): (state, group) for names, state, group in lists}
    assert set(by_name) == {("s",), ("f",), ("o",)}
    assert by_name[("s",)][0]["step"] == 1 and by_name[("f",)][0]["step"] == 0
    assert torch.equal(by_name[("f",)][0]["exp_avg"][0], torch.zeros(3))
    assert by_name[("o",)][1]["lr"] == 0.5


def test_adam_steps_are_differentiable_at_zero_second_moment():
    p = torch.randn(4, requires_grad=True)
    g = torch.tensor([0.0, 1.0, -2.0, 0.0], requires_grad=True)
    state = {"step": 0, "exp_avg": [torch.zeros(4)], "exp_avg_sq": [torch.zeros(4)]}
    [q], _ = _adam_steps([p], [g], state, {"lr": 0.1, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0.0})
    q.sum().backward()
    assert torch.isfinite(g.grad).all() and torch.isfinite(p.grad).all()
    [q2], st = _sgd_steps([p], [g], state, {"lr": 0.1})
    assert torch.allclose(q2, p - 0.1 * g) and st is state


def test_sgd_lookahead_is_one_gradient_step():
    fam = _family("gan", TOY + ["gan.unroll=1", "gan.unroll_optim=sgd", "gan.d_optim.lr=0.05"])
    lr = fam.opt_d.param_groups[0]["lr"]
    assert lr == 0.05
    torch.manual_seed(2)
    real, fake0, probe = torch.randn(8, 2), torch.randn(8, 2), torch.randn(16, 2)

    fake = fake0.clone().requires_grad_(True)
    critic = fam.lookahead(fam.D, fam.opt_d, real, fake)
    out = critic(probe)

    # by hand: a copy of D, one step p - lr * grad(d_loss)
    D2 = copy.deepcopy(fam.D)
    d_loss = fam.loss.d_loss(D2(real), D2(fake0))
    grads = torch.autograd.grad(d_loss, list(D2.parameters()))
    with torch.no_grad():
        for p, g in zip(D2.parameters(), grads):
            p -= lr * g
        want = D2(probe)
        before = fam.D(probe)
    assert torch.allclose(out.detach(), want, atol=1e-6)
    assert not torch.allclose(want, before, atol=1e-4)

    # and the generator's gradient is second order: through the step, as a function of the fakes
    fam.loss.g_loss(critic(fake)).backward()
    fake_by_hand = fake0.clone().requires_grad_(True)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in fam.D.named_parameters()}
    loss = fam.loss.d_loss(functional_call(fam.D, params, (real,)), functional_call(fam.D, params, (fake_by_hand,)))
    g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    stepped = {n: p - lr * gi for (n, p), gi in zip(params.items(), g)}
    fam.loss.g_loss(functional_call(fam.D, stepped, (fake_by_hand,))).backward()
    assert torch.allclose(fake.grad, fake_by_hand.grad, atol=1e-6)
    first_order = fake0.clone().requires_grad_(True)
    fam.loss.g_loss(functional_call(fam.D, {n: p.detach() for n, p in stepped.items()}, (first_order,))).backward()
    assert not torch.allclose(fake.grad, first_order.grad, atol=1e-7)


def test_strided_like_gives_a_weight_its_strides_and_its_gradient_too():
    """A conv weight of one input channel is contiguous and channels_last at once, told apart by its
    strides only; the look-ahead keeps the stepped weight's and its gradient's strides."""
    like = torch.randn(8, 4, 4, 1).permute(0, 3, 1, 2)  # channels_last strides; .contiguous(...) keeps (16, 16, 4, 1)
    x = torch.randn(8, 1, 4, 4, requires_grad=True)
    assert like.stride() != x.stride()
    y = _strided_like(like, x)
    g = torch.randn(8, 1, 4, 4)
    (gx,) = torch.autograd.grad(y, x, g)
    assert y.stride() == like.stride() and torch.equal(y, x)
    assert gx.stride() == like.stride() and torch.equal(gx, g)


def test_channels_last_lookahead_keeps_every_conv_map_channels_last():
    """The unrolled GAN on images in channels_last: every multi-channel map a convolution returns in
    the look-ahead and in the generator's second-order backward through it is channels_last. A
    contiguous one (the double backward's conv of the 1-channel input with a contiguous-strided
    gradient of the first weight did) mixes layouts, which run torch's slow CPU kernels."""
    from torch.utils._python_dispatch import TorchDispatchMode

    cfg = C.resolve("unrolled-gan", sets=["gan.g_width=8", "gan.d_width=8", "gan.unroll=2", "train.batch_size=4",
                                          "train.channels_last=on", "train.amp=off"])
    torch.manual_seed(0)
    fam = build_family(cfg, DataInfo("mnist", "image", (1, 28, 28), 10), CPU)
    real = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    fake = torch.randn(4, 1, 28, 28, requires_grad=True)

    class ConvLayouts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.maps = []  # per multi-channel conv output: is it channels_last?

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
                for t in (out if isinstance(out, tuple) else (out,)):
                    if torch.is_tensor(t) and t.dim() == 4 and t.shape[0] == 4 and t.shape[1] > 1:
                        self.maps.append(t.is_contiguous(memory_format=torch.channels_last))
            return out

    with ConvLayouts() as seen:
        fam.loss.g_loss(fam.lookahead(fam.D, fam.opt_d, real, fake)(fake)).backward()
    assert len(seen.maps) > 20 and all(seen.maps), f"{seen.maps.count(False)} of {len(seen.maps)} maps contiguous"


# ----------------------------------------------------------------------------- 5. with other losses
@pytest.mark.parametrize("model, extra", [
    ("wgan-gp", ["gan.pack=2"]),  # gradient penalty on packed interpolates
    ("gan", ["gan.d_minibatch_std=4"]),
    ("lsgan", ["gan.unroll=2"]),
    ("wgan-gp", ["gan.unroll=1", "gan.pack=2"]),  # the penalty inside the look-ahead steps too
])
def test_remedies_train_with_other_losses(tmp_path, model, extra):
    cfg = C.resolve(model, sets=TOY + extra + ["train.steps=3", f"out={tmp_path}", "name=r"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, tmp_path / "r", show_progress=False)
    fam = trainer.family
    assert fam.pack.m == cfg.options.pack and fam.lookahead.steps == cfg.options.unroll
    result = trainer.run()
    assert result["step"] == 3
    losses = {k: v for k, v in result.items() if k in ("d_loss", "g_loss", "gp", "d_real", "d_fake")}
    assert {"d_loss", "g_loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values()), losses
    if model == "wgan-gp":
        assert "gp" in losses and losses["gp"] > 0


def test_minibatch_std_on_a_net_without_it_is_a_config_error():
    assert "autoencoder-d" in available("net", role="discriminator")
    assert "minibatch_std" not in (getattr(get("net", "autoencoder-d"), "options", None) or ())
    assert set(available("net", options="minibatch_std")) == {"dcgan-d", "mlp-d"}
    cfg = C.resolve("ebgan", sets=TOY + ["gan.d_minibatch_std=4"])
    assert cfg.options.discriminator == "autoencoder-d"
    with pytest.raises(ConfigError) as err:
        build_family(cfg, RING8, CPU)
    msg = str(err.value)
    assert "\n" not in msg and "gan.d_minibatch_std" in msg and "autoencoder-d" in msg and "mlp-d" in msg


# ----------------------------------------------------------------------------- 6. learning-rate decay
def test_lr_decay_follows_the_linear_schedule_and_is_off_at_its_default():
    """gan.lr_decay_start: both rates are the configured ones up to start * steps, then fall linearly
    to 0 at train.steps; at 1 (the default) they never change."""
    sets = TOY + ["train.steps=10", "gan.g_optim.lr=0.001", "gan.d_optim.lr=0.003"]
    decayed, plain = _family("gan", sets + ["gan.lr_decay_start=0.6"]), _family("gan", sets)
    for step, factor in [(1, 1.0), (6, 1.0), (7, 0.75), (9, 0.25), (10, 0.0)]:
        for fam in (decayed, plain):
            fam.train_step(_points_batch(), step)
        assert decayed.opt_g.param_groups[0]["lr"] == pytest.approx(0.001 * factor)
        assert decayed.opt_d.param_groups[0]["lr"] == pytest.approx(0.003 * factor)
        assert (plain.opt_g.param_groups[0]["lr"], plain.opt_d.param_groups[0]["lr"]) == (0.001, 0.003)
