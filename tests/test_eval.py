"""evaluate / `genlab eval` / real-vs-real / periodic evaluation during training."""
import functools
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from genlab import checkpoint, speed
from genlab import config as C
from genlab.cli import app
from genlab.data import DataInfo
from genlab.errors import GenlabError
from genlab.families.base import FamilyBase
from genlab.eval.evaluate import evaluate, real_vs_real, sample_features
from genlab.eval.features import get_extractor
from genlab.eval.metrics import compute_all
from genlab.eval.reference import get_reference
from genlab.runs import LoadedRun, load_run
from genlab.train import Trainer

TINY = ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8", "train.log_every=1",
        "train.sample_every=100", "train.checkpoint_every=100", "train.grid_size=4"]
N = 300  # samples per evaluation in these tests (KID then uses subsets of 300)



@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "genlab-cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = C.resolve("gan", sets=TINY + ["train.steps=2", f"out={out}", "name=tiny"])
    Trainer(cfg, out / "tiny", show_progress=False).run()
    return out / "tiny"


@pytest.mark.filterwarnings("ignore:KID subset_size")
def test_cli_eval_writes_record_equal_to_compute_all(tiny_run):
    res = CliRunner().invoke(app, ["eval", str(tiny_run), "--n", str(N), "--batch-size", "128", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "features: auto -> genlab-mnist" in res.output and "FID" in res.output and "coverage" in res.output
    records = json.loads((tiny_run / "eval.json").read_text())
    assert isinstance(records, list) and len(records) == 1
    rec = records[0]
    for field in ("metrics", "extractor", "extractor_fingerprint", "ref_dataset", "ref_split", "n_real", "n_fake",
                  "seed", "checkpoint", "step", "timestamp", "genlab_version"):
        assert field in rec, field
    assert (rec["extractor"], rec["ref_dataset"], rec["ref_split"]) == ("genlab-mnist", "mnist", "test")
    assert (rec["n_real"], rec["n_fake"], rec["seed"], rec["checkpoint"], rec["step"]) == (N, N, 3, "last", 2)
    # The same numbers from the pieces: cached reference features + one feature pass of the samples.
    ext = get_extractor("genlab-mnist")
    assert rec["extractor_fingerprint"] == ext.fingerprint
    run = load_run(tiny_run, "last", "cpu")
    ref = get_reference(run.cfg.data, "test", N, ext)
    assert ref.status == "hit"
    with run.sampling():
        draw = functools.partial(speed.draw, run.family, run.sample_amp)  # the run's sampling precision
        fake, probs = sample_features(draw, N, ext, 128, 3, run.info.shape)
    expected = compute_all(ref.features, fake, probs, seed=3)
    assert set(rec["metrics"]) == set(expected)
    for k, v in expected.items():
        assert rec["metrics"][k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    assert rec["metrics"]["fid"] > 100  # two training steps: far from the data (real-vs-real is < 10)
    assert any((tiny_run / "tb").iterdir())
    # A second evaluation is appended (newest last).
    res = CliRunner().invoke(app, ["eval", str(tiny_run), "--n", str(N), "--metrics", "fid", "--batch-size", "128"])
    assert res.exit_code == 0, res.output
    records = json.loads((tiny_run / "eval.json").read_text())
    assert len(records) == 2 and set(records[1]["metrics"]) == {"fid"}


def test_cli_eval_user_errors(tiny_run):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(tiny_run), "--metrics", "fid,bogus"])
    assert res.exit_code == 2 and "unknown metric(s) bogus" in res.output
    res = runner.invoke(app, ["eval"])
    assert res.exit_code == 2 and "--real-vs-real" in res.output
    res = runner.invoke(app, ["eval", str(tiny_run), "--checkpoint", "best"])
    assert res.exit_code == 2 and "no checkpoint 'best'" in res.output


@pytest.mark.filterwarnings("ignore:KID subset_size")
def test_real_vs_real_floor_is_small():
    rec = real_vs_real("mnist", n=N, metrics="fid,kid,pr", log=lambda m: None)
    assert rec["kind"] == "real-vs-real" and rec["n_real"] == rec["n_fake"] == N
    # ~5 at n=300 (FID's small-n bias; ~0.4 at n=10,000); a 2-step GAN scores > 100 on the same scale.
    assert rec["metrics"]["fid"] < 10
    assert abs(rec["metrics"]["kid_mean"]) < 2 and min(rec["metrics"]["precision"], rec["metrics"]["recall"]) > 0.8


class UniformFamily(FamilyBase):
    """A fake family: uniform noise images, and the log-likelihood of the uniform 256-level model."""
    device = torch.device("cpu")
    capabilities = frozenset({"sample", "log_likelihood"})

    def sample(self, n, generator=None):
        return torch.rand((n, 1, 28, 28), generator=generator)

    def log_likelihood(self, x):
        assert x.dtype == torch.uint8
        return torch.full((x.shape[0],), -784 * math.log(256.0))


def _fake_run(tmp_path, family, info):
    return LoadedRun(tmp_path, C.resolve("gan"), family, info, 7, "last", None)


def test_evaluate_likelihood_hook_gives_bits_per_dim(tmp_path):
    run = _fake_run(tmp_path, UniformFamily(), DataInfo("mnist", "image", (1, 28, 28), 10))
    rec = evaluate(run, n=200, metrics="fid", batch_size=100, log=lambda m: None)
    assert rec["metrics"]["bits_per_dim"] == pytest.approx(8.0)
    assert rec["metrics"]["nll_nats"] == pytest.approx(784 * math.log(256.0))
    assert rec["metrics"]["fid"] > 0 and rec["step"] == 7


class GreyReconstructor(UniformFamily):
    """A fake 'autoencoder' whose reconstruction is mid-grey whatever the input."""
    capabilities = UniformFamily.capabilities | {"reconstruct"}

    def reconstruct(self, x):
        assert x.dtype == torch.uint8
        return torch.full(x.shape, 0.5)


def test_evaluate_reconstruction_hook_gives_mse_on_the_reference_split(tmp_path):
    from genlab.eval.reference import load_real

    run = _fake_run(tmp_path, GreyReconstructor(), DataInfo("mnist", "image", (1, 28, 28), 10))
    rec = evaluate(run, n=200, metrics="fid", batch_size=64, log=lambda m: None)
    images, _ = load_real(C.resolve("gan").data, "test", 200)  # the same seeded subset evaluate scored
    expected = (images.double() / 255 - 0.5).pow(2).mean().item()
    assert rec["metrics"]["recon_mse"] == pytest.approx(expected, rel=1e-6)
    assert rec["metrics"]["n_recon"] == 200 and "nll_nats" in rec["metrics"]
    assert 0.15 < expected < 0.25  # mostly black pixels: close to 0.25, the mean of (0 - 0.5)^2


def test_metrics_none_scores_test_images_only_and_n_test_is_separate(tmp_path):
    class NoSampling(GreyReconstructor):
        def sample(self, n, generator=None):
            raise AssertionError("--metrics none must not sample")

    run = _fake_run(tmp_path, NoSampling(), DataInfo("mnist", "image", (1, 28, 28), 10))
    rec = evaluate(run, n=50, metrics="none", n_test=120, log=lambda m: None)
    assert rec["metrics"]["n_nll"] == rec["metrics"]["n_recon"] == 120
    assert "fid" not in rec["metrics"] and "extractor" not in rec and rec["test_split"] == "test"
    sampler_only = type("SamplerOnly", (FamilyBase,), {"capabilities": frozenset({"sample"}), "device": torch.device("cpu")})()
    gan = _fake_run(tmp_path, sampler_only, DataInfo("mnist", "image", (1, 28, 28), 10))
    with pytest.raises(GenlabError, match="nothing to measure"):
        evaluate(gan, n=50, metrics="none")


def test_evaluate_refuses_points_data(tmp_path):
    run = _fake_run(tmp_path, UniformFamily(), DataInfo("ring8", "points", (2,)))
    with pytest.raises(GenlabError, match="genlab diagnose"):
        evaluate(run, n=100, metrics="fid")


def test_periodic_eval_keeps_best_and_does_not_change_training(tmp_path):
    def train(name, every):
        sets = TINY + ["train.steps=4", f"out={tmp_path}", f"name={name}", f"eval.every={every}",
                       f"eval.n={N}", "eval.metrics=fid,kid", "eval.batch_size=150"]
        Trainer(C.resolve("gan", sets=sets), tmp_path / name, show_progress=False).run()
        return tmp_path / name

    plain, evaluated = train("plain", 0), train("evaluated", 2)
    assert (evaluated / "checkpoints" / "best.pt").is_file()
    assert not (plain / "checkpoints" / "best.pt").exists()
    lines = [json.loads(line) for line in (evaluated / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "eval/fid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval/fid"] > 0 and "eval/kid_mean" in r for r in evals)
    best = checkpoint.load(evaluated / "checkpoints" / "best.pt")
    assert best["best"]["fid"] == min(r["eval/fid"] for r in evals)
    a, b = (checkpoint.load(r / "checkpoints" / "last.pt") for r in (plain, evaluated))
    for part in ("family_state", "rng", "sampler"):  # weights, BN stats, optimizers, every RNG
        assert_same(a[part], b[part], part)


def assert_same(a, b, path):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
