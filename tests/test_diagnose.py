"""`genlab diagnose`, the training hook's collapse warning, and the stacked-mnist dataset."""
import contextlib
import json
import math
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from genlab import config as C
from genlab.cli import app
from genlab.config import DataConfig
from genlab.data import DataInfo, load_dataset, mixture_centres
from genlab.data.stacked import stack_digits
from genlab.data.toy import sample_mixture
from genlab.eval import diagnose as D
from genlab.train import Trainer

TOY = ["gan.g_width=16", "gan.d_width=16", "gan.latent_dim=2", "train.batch_size=16", "train.log_every=1",
       "train.sample_every=100", "train.checkpoint_every=100", "device=cpu"]


@pytest.fixture(scope="module")
def ring8_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    sets = TOY + ["data.name=ring8", "data.n_points=500", "train.steps=3", f"out={out}", "name=ring"]
    Trainer(C.resolve("gan", sets=sets), out / "ring", show_progress=False).run()
    return out / "ring"


def test_cli_diagnose_writes_json_and_png(ring8_run):
    result = CliRunner().invoke(app, ["diagnose", str(ring8_run), "--n", "400", "--seed", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "modes captured" in result.output and "/ 8" in result.output
    record = json.loads((ring8_run / "diagnostics.json").read_text())[-1]  # strict JSON (inf -> "inf"), newest last
    assert (record["n"], record["seed"], record["checkpoint"], record["step"]) == (400, 3, "last", 3)
    assert record["extractor"] is None and record["dataset"] == "ring8"
    mix = record["diagnostics"]["mixture"]
    assert 0 <= mix["modes"] <= 8 and sum(mix["counts"]) == round(mix["hq_rate"] * 400)
    assert record["plots"] == ["diagnostics-mixture.png"]
    assert (ring8_run / "diagnostics-mixture.png").stat().st_size > 1000


def test_cli_diagnose_bad_checkpoint_is_one_line_error(ring8_run):
    result = CliRunner().invoke(app, ["diagnose", str(ring8_run), "--checkpoint", "step-99"])
    assert result.exit_code == 2 and "no checkpoint 'step-99'" in result.output


class _FakeRun:
    """A LoadedRun-like object whose generator samples the true ring8 mixture."""

    def __init__(self, run_dir, collapsed=False):
        self.run_dir, self.checkpoint, self.step = run_dir, "last", 7
        self.cfg = SimpleNamespace(model="fake", family="fake")
        self.info = DataInfo("ring8", "points", (2,), 8, modes=mixture_centres("ring8"), mode_std=0.01)
        self.family = SimpleNamespace(sample=self.sample, device="cpu", capabilities=frozenset({"sample"}))
        self.collapsed = collapsed
        self.sample_amp, self.sample_precision = "off", "float32"  # what the run samples in (speed.sampling_amp)

    def sample(self, n, generator=None):
        x, _ = sample_mixture("ring8", n, generator)
        return mixture_centres("ring8")[0] + 0.01 * torch.randn(n, 2, generator=generator) if self.collapsed else x

    def sampling(self):
        return contextlib.nullcontext()


def test_diagnose_scores_a_perfect_sampler_and_a_collapsed_one(tmp_path):
    good = D.diagnose(_FakeRun(tmp_path / "a"), seed=0, log=lambda m: None)["diagnostics"]["mixture"]
    assert good["n"] == 2500 and good["modes"] == 8 and abs(good["hq_rate"] - (1 - math.exp(-4.5))) < 0.01
    bad = D.diagnose(_FakeRun(tmp_path / "b", collapsed=True), log=lambda m: None)["diagnostics"]["mixture"]
    assert bad["modes"] == 1 and bad["reverse_kl"] == pytest.approx(math.log(8))


def test_plan_picks_what_fits_the_data():
    ring = DataInfo("ring8", "points", (2,), 8, modes=mixture_centres("ring8"), mode_std=0.01)
    assert D.plan(ring) == ["mixture"]
    assert D.plan(DataInfo("stacked-mnist", "image", (3, 28, 28), 1000)) == ["stacked"]
    assert D.plan(DataInfo("cifar10", "image", (3, 32, 32), 10)) == ["ndb", "memorisation"]
    mnist = D.plan(DataInfo("mnist", "image", (1, 28, 28), 10))
    assert mnist[-2:] == ["ndb", "memorisation"]
    assert mnist[0] == "classes" or D.classifier_for(DataInfo("mnist", "image", (1, 28, 28), 10)) is None


# ----------------------------------------------------------------------------- the training hook
class _FakeTrainer:
    def __init__(self, run_dir):
        self.run = _FakeRun(run_dir)
        self.info, self.device, self.run_dir, self.data = self.run.info, torch.device("cpu"), run_dir, None
        self.cfg, self.step = self.run.cfg, 0
        self.net = torch.nn.Linear(2, 2).train()
        self.family = SimpleNamespace(sample=self.sample, G=self.net, capabilities=frozenset({"sample"}), device="cpu")
        self.sample_amp, self.sample_precision = "off", "float32"

    def sample(self, n, generator=None):
        self.net.eval()  # a careless family: the hook must restore the mode
        torch.rand(3)  # ... and one that draws from the global RNG: the hook must not let it show
        return self.run.sample(n, generator)

    def sampling_context(self):
        return contextlib.nullcontext()


def test_hook_warns_on_a_constructed_collapse(tmp_path, capsys):
    cfg = C.resolve("gan", sets=["data.name=ring8", "diagnose.n=1000", "diagnose.every=10"])
    fn, trainer = D.diagnose_hook(cfg), _FakeTrainer(tmp_path)
    rng = torch.get_rng_state()
    first = fn(trainer, 10)
    assert first["modes"] == 8.0 and first["collapse"] == 0.0 and first["best_modes"] == 8.0
    assert torch.equal(rng, torch.get_rng_state()) and trainer.net.training
    assert all(isinstance(v, float) for v in first.values())
    trainer.run.collapsed = True
    second = fn(trainer, 20)
    assert second["modes"] == 1.0 and second["collapse"] == 1.0 and second["best_modes"] == 8.0
    err = capsys.readouterr().err
    assert "collapse warning: step 20" in err and "modes fell to 1" in err and "best 8 at step 10" in err
    fn(trainer, 30)  # still collapsed at the same level: no repeated warning
    assert "collapse warning" not in capsys.readouterr().err


def test_hook_runs_in_training_and_across_resume(tmp_path):
    def run(name, steps, resume=False):
        sets = TOY + ["data.name=ring8", "data.n_points=500", f"train.steps={steps}", f"out={tmp_path}",
                      f"name={name}", "diagnose.every=1", "diagnose.n=100"]
        Trainer(C.resolve("gan", sets=sets), tmp_path / name, resume=resume, show_progress=False).run()
        return torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["family_state"]["G"]

    full = run("full", 4)
    run("half", 2)
    resumed = run("half", 4, resume=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    logged = [line for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines() if "diagnose/" in line]
    assert len(logged) == 4


def test_collapse_check_rule(monkeypatch):
    state, fired = {}, []
    monkeypatch.setattr(D, "_warn", fired.append)
    flags = [D.collapse_check(state, v, step, "classes_covered")["collapse"]
             for step, v in enumerate([6, 10, 9, 8, 7, 5, 4, 10])]
    assert flags == [0, 0, 0, 0, 1, 1, 1, 0]  # below 75% of the best (10) is < 7.5
    assert len(fired) == 3 and "step 4" in fired[0] and "fell to 7" in fired[0]


# ----------------------------------------------------------------------------- stacked MNIST
def test_stack_digits_labels_match_channels():
    x = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 2)  # image i is filled with i
    y = torch.arange(20) % 10
    images, labels = stack_digits(x, y, 50, torch.Generator().manual_seed(0))
    assert images.shape == (50, 3, 2, 2)
    src = images[:, :, 0, 0].long()  # which digit went into each channel
    assert torch.equal(labels, 100 * (src[:, 0] % 10) + 10 * (src[:, 1] % 10) + src[:, 2] % 10)


def test_stacked_mnist_dataset_is_deterministic_rgb():
    a = load_dataset(DataConfig(name="stacked-mnist"), "test")
    b = load_dataset(DataConfig(name="stacked-mnist"), "test")
    c = load_dataset(DataConfig(name="stacked-mnist", seed=1), "test")
    assert a.x.shape == (10000, 3, 28, 28) and a.x.dtype == torch.uint8 and a.info.num_classes == 1000
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert a.y.min() >= 0 and a.y.max() <= 999 and len(a.y.unique()) > 990


def test_gan_trains_on_stacked_mnist(tmp_path, tiny_sets):
    sets = tiny_sets + ["data.name=stacked-mnist", "train.steps=2", f"out={tmp_path}", "name=s", "device=cpu"]
    result = Trainer(C.resolve("wgan-gp", sets=sets), tmp_path / "s", show_progress=False).run()
    assert result["step"] == 2 and math.isfinite(result["g_loss"])
