"""CycleGAN: history pool, losses, LR schedule, two-domain data, exact resume, and `genlab translate`."""
import copy

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from genlab import config as C
from genlab.cli import app
from genlab.config import DataConfig
from genlab.data import DataInfo, load_dataset
from genlab.data.pairs import load_domains, mnist_b_style, plain_view
from genlab.families.base import build_family
from genlab.families.cyclegan import ImagePool
from genlab.schedules import linear_decay

TINY = ["cyclegan.g_width=4", "cyclegan.d_width=4", "cyclegan.n_blocks=1", "train.batch_size=4"]


def _family(shape=(1, 8, 16), sets=()):
    cfg = C.resolve("cyclegan", sets=[*TINY, *sets])
    torch.manual_seed(0)
    return build_family(cfg, DataInfo("random", "image", shape), torch.device("cpu"))


def test_history_pool_fills_then_mixes_and_is_seeded():
    def run(seed):
        pool = ImagePool(50, seed=seed)
        first = torch.arange(50.0).view(50, 1, 1, 1)
        assert torch.equal(pool.query(first[:30]), first[:30]) and len(pool) == 30
        assert torch.equal(pool.query(first[30:]), first[30:]) and len(pool) == 50  # filling: returned as is
        new = torch.arange(100.0, 140.0).view(40, 1, 1, 1)
        return pool, new, pool.query(new)

    pool, new, out = run(seed=3)
    fresh = (out == new).flatten()
    assert len(pool) == 50  # never grows past its size
    assert 5 < fresh.sum() < 35, "about half new, half from the history"
    assert (out.flatten()[~fresh] < 100).sum() > 0  # some images come from the earlier history
    # nothing is lost or invented: pool after + returned == pool before + new (as multisets)
    assert sorted(pool.images.flatten().tolist() + out.flatten().tolist()) == list(range(50)) + list(range(100, 140))
    assert torch.equal(out, run(seed=3)[2]) and not torch.equal(out, run(seed=4)[2])
    assert torch.equal(ImagePool(0).query(new), new)  # pool_size 0 disables it


def test_cycle_and_identity_losses_are_zero_for_identity_generators():
    fam = _family()
    fam.G_AB, fam.G_BA = nn.Identity(), nn.Identity()
    a, b = torch.rand(3, 1, 8, 8) * 2 - 1, torch.rand(3, 1, 8, 8) * 2 - 1
    _, parts, fake_b, fake_a = fam.generator_losses(a, b)
    assert parts["cycle"].item() == 0.0 and parts["identity"].item() == 0.0
    assert torch.equal(fake_b, a) and torch.equal(fake_a, b)


def test_loss_weights_follow_the_paper():
    fam = _family()
    a, b = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    fam.G_AB = fam.G_BA = _Const(0.5)  # every output is 0.5: each L1 term is 0.5
    _, parts, _, _ = fam.generator_losses(a, b)
    assert parts["cycle"].item() == pytest.approx(10 * (0.5 + 0.5))
    assert parts["identity"].item() == pytest.approx(0.5 * 10 * (0.5 + 0.5))


class _Const(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x):
        return torch.full_like(x, self.v)


def test_lr_is_constant_then_decays_linearly_to_zero():
    assert [linear_decay(s, 100, 0.5) for s in (1, 50, 75, 100)] == [1.0, 1.0, 0.5, 0.0]
    assert linear_decay(30, 100, 0.2) == pytest.approx(1 - 10 / 80)


def test_mnist_pair_domains_are_disjoint_styled_and_labelled():
    cfg = DataConfig(name="mnist-pair")
    test = load_domains(cfg, "test")
    assert test.a.shape == test.b.shape == (5000, 1, 28, 28)
    assert (test.ya >= 0).all() and (test.yb >= 0).all()
    from genlab.data.mnist import mnist
    src = mnist(DataConfig(), "test", "")
    styled = mnist_b_style(src.x)
    # every B image is the B-style of exactly one source image, and no A image is used in B
    a_keys = {bytes(x.numpy()) for x in test.a}
    b_keys = {bytes(x.numpy()) for x in test.b[:50]}
    b_sources = {bytes(src.x[i].numpy()) for i in range(len(src.x)) if bytes(styled[i].numpy()) in b_keys}
    assert b_sources and not (b_sources & a_keys)
    assert test.b.float().mean() > 150 and test.a.float().mean() < 60  # inverted: mostly white
    assert torch.allclose(plain_view("mnist-pair", "B", torch.ones(1)), torch.zeros(1))
    paired = load_dataset(cfg, "test")
    assert paired.info.shape == (1, 28, 56) and len(paired) == 5000
    assert {bytes(x.numpy()) for x in paired.x[:20, ..., :28]} <= a_keys


def _write_pngs(folder, n, size=28, seed=0):
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        px = torch.randint(0, 256, (size, size), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(px, mode="L").save(folder / f"{i}.png")


def _pair_dir(root):
    for split, na, nb in (("train", 3, 2), ("test", 1, 1)):
        _write_pngs(root / f"{split}A", na, size=64, seed=na)
        _write_pngs(root / f"{split}B", nb, size=64, seed=nb + 10)


def test_pair_dir_layout(tmp_path):
    _pair_dir(tmp_path)
    cfg = DataConfig(name=f"pair:{tmp_path}", channels=1)  # resolution 0 -> 64, as for folder:
    data = load_dataset(cfg, "train")
    assert data.x.shape == (3, 1, 64, 128) and (data.y == -1).all()
    domains = load_domains(cfg, "train")
    # the longer domain is walked once, the shorter one cycled: every image appears
    assert {bytes(r.numpy()) for r in data.x[..., :64]} == {bytes(r.numpy()) for r in domains.a}
    assert {bytes(r.numpy()) for r in data.x[..., 64:]} == {bytes(r.numpy()) for r in domains.b}
    (tmp_path / "testB" / "0.png").unlink()
    (tmp_path / "testB").rmdir()
    with pytest.raises(Exception, match="testB"):
        load_dataset(cfg, "test")


def test_pair_data_honours_resolution(tmp_path):
    _pair_dir(tmp_path)
    data = load_dataset(DataConfig(name=f"pair:{tmp_path}", channels=1, resolution=32), "train")
    assert data.x.shape == (3, 1, 32, 64)


def test_resume_is_exact_including_pools():
    batches = [(torch.randint(0, 256, (4, 1, 8, 16), dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
               for _ in range(4)]
    fam = _family(sets=["cyclegan.pool_size=6"])
    for i in range(2):
        fam.train_step(batches[i], i + 1)
    state = copy.deepcopy(fam.state_dict())
    rng = torch.get_rng_state()
    for i in range(2, 4):
        fam.train_step(batches[i], i + 1)
    other = _family(sets=["cyclegan.pool_size=6"])
    other.load_state_dict(state)
    torch.set_rng_state(rng)
    for i in range(2, 4):
        other.train_step(batches[i], i + 1)
    for (k, p), q in zip(fam.G_AB.state_dict().items(), other.G_AB.state_dict().values()):
        assert torch.equal(p, q), k
    assert torch.equal(fam.pool_B.images, other.pool_B.images)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = fam.sample(5, gen())
    assert out.shape == (5, 1, 8, 16) and torch.equal(out, other.sample(5, gen()))
    assert len(fam.bank) == 16  # every A image seen so far (up to bank_size)
    drawn = fam.bank[torch.randperm(16, generator=gen())[:5]].float()
    assert torch.equal((out[..., :8] * 255).round(), drawn)  # left half: the input, right: its translation


def test_translate_through_the_cli(tmp_path):
    runner = CliRunner()
    sets = [x for s in [*TINY, "train.log_every=1", "train.grid_size=4"] for x in ("--set", s)]
    result = runner.invoke(app, ["train", "cyclegan", "--steps", "2", "--out", str(tmp_path), "--name", "run",
                                 "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert Image.open(run / "samples" / "step-2.png").size[0] > Image.open(run / "samples" / "step-2.png").size[1]
    result = runner.invoke(app, ["translate", str(run), "--direction", "BtoA", "-n", "6", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "t").glob("0*.png"))
    assert len(files) == 6 and Image.open(files[0]).size == (28, 28)
    assert Image.open(tmp_path / "t" / "grid.png").size[0] > 2 * 56  # cells of input | output
    _write_pngs(tmp_path / "mine", 3)
    result = runner.invoke(app, ["translate", str(run), "-d", "AtoB", "--input", str(tmp_path / "mine"), "-n", "2",
                                 "--out", str(tmp_path / "t2")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "t2").glob("0*.png"))) == 2 and "folder" in result.output
    bad = runner.invoke(app, ["translate", str(run), "--direction", "sideways"])
    assert bad.exit_code == 2 and "AtoB or BtoA" in bad.output


def test_eval_of_a_cyclegan_run_reports_translation_metrics(tmp_path):
    from genlab.eval.evaluate import read_records

    runner = CliRunner()
    sets = [x for s in TINY for x in ("--set", s)]
    result = runner.invoke(app, ["train", "cyclegan", "--steps", "1", "--out", str(tmp_path), "--name", "run",
                                 "--no-progress", *sets])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), "-n", "40", "--features", "genlab-mnist"])
    assert result.exit_code == 0, result.output
    assert "cycle l1 AtoB" in result.output and "label preservation BtoA" in result.output
    (record,) = read_records(tmp_path / "run")
    assert record["kind"] == "translation" and record["n_A"] == record["n_B"] == 40
    m = record["metrics"]
    assert 0 <= m["label_preservation_AtoB"] <= 1 and m["fid_BtoA"] > 0 and m["cycle_l1_AtoB"] > 0


class _InvertingTranslator:
    """A perfect 'translator' for the colours of mnist-pair: both directions invert the image."""

    domain_shape = (1, 28, 28)
    capabilities = frozenset({"translate"})
    device = torch.device("cpu")

    def translate(self, x, direction):
        assert direction in ("AtoB", "BtoA")
        return 1.0 - x


def test_cyclegan_metrics_on_an_exact_inverter():
    from types import SimpleNamespace

    import contextlib

    from genlab.data import DataInfo
    from genlab.eval.evaluate import evaluate
    from genlab.eval.evaluator import find_weights

    if find_weights("genlab-mnist") is None:
        pytest.skip("genlab-mnist evaluator weights not present")
    run = SimpleNamespace(cfg=C.resolve("cyclegan"), family=_InvertingTranslator(), step=7, checkpoint="last",
                          info=DataInfo("mnist-pair", "image", (1, 28, 56)), sampling=contextlib.nullcontext)
    record = evaluate(run, n=300, seed=0)  # the one evaluation path: the translation measure applies
    assert record["n_A"] == record["n_B"] == 300 and record["split"] == "test"
    assert record["extractor"] == "genlab-mnist" and record["extractor_fingerprint"] and record["extractor_auto"]
    m = record["metrics"]
    assert m["cycle_l1_AtoB"] < 1e-6 and m["cycle_l1_BtoA"] < 1e-6  # inverting twice is the identity
    # A->B output inverted back is the input digit itself, so preservation = evaluator accuracy on A;
    # B->A output is the un-inverted B digit, so preservation = evaluator accuracy on (viewed) B
    assert m["label_preservation_AtoB"] == m["evaluator_acc_A"] > 0.95
    assert m["label_preservation_BtoA"] == m["evaluator_acc_B"] > 0.9
    assert m["fid_AtoB"] > 0 and m["fid_BtoA"] > 0  # thin digits against thick ones, both ways


def test_ema_averages_and_applies_both_generators(tmp_path):
    """With train.ema_decay, both directions sample from averaged weights (ema_modules = [G_AB, G_BA])."""
    from genlab.runs import load_run
    from genlab.train import Trainer

    sets = [*TINY, "train.steps=3", "train.ema_decay=0.5", "train.sample_every=100", "train.grid_size=2",
            f"out={tmp_path}", "name=ema"]
    Trainer(C.resolve("cyclegan", sets=sets), tmp_path / "ema", show_progress=False).run()
    run = load_run(tmp_path / "ema")
    assert run.family.ema_modules == [run.family.G_AB, run.family.G_BA]
    shadow = run.ema.shadow
    x = torch.rand(2, 1, 28, 28)
    raw = {d: run.family.translate(x, d) for d in ("AtoB", "BtoA")}
    with run.sampling():
        for i, g in enumerate((run.family.G_AB, run.family.G_BA)):
            for k, v in g.state_dict().items():
                assert torch.equal(v, shadow[f"{i}.{k}"]), f"generator {i}: {k} is not the average"
        averaged = {d: run.family.translate(x, d) for d in ("AtoB", "BtoA")}
    for d in ("AtoB", "BtoA"):
        assert not torch.equal(raw[d], averaged[d]), f"{d} ignores the EMA"
