"""Feature extractors (the shipped MNIST evaluator, the Inception path) and the reference cache."""
import json
import sys

import pytest
import torch

from genlab.config import DataConfig
from genlab.data import DataInfo, load_dataset
from genlab.errors import GenlabError
from genlab.eval import features as F
from genlab.eval import reference as R
from genlab.eval.evaluator import WEIGHTS_DIR, EvaluatorTrainConfig, random_shift, sha256_file, train_evaluator



@pytest.fixture(scope="module")
def ext():
    return F.get_extractor("genlab-mnist")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- shipped evaluator
def test_shipped_mnist_evaluator_accuracy_and_fingerprint(ext):
    pt, meta = WEIGHTS_DIR / "genlab-mnist.pt", json.loads((WEIGHTS_DIR / "genlab-mnist.json").read_text())
    assert pt.stat().st_size < 2_000_000
    assert meta["sha256"] == sha256_file(pt) and ext.fingerprint == meta["sha256"][:16]
    state = torch.load(pt, weights_only=True)  # plain tensors and primitives only
    assert state["format"] == "genlab-evaluator"
    test = load_dataset(DataConfig(name="mnist"), "test")
    probs = ext.probs(test.x)  # uint8 accepted (same as /255)
    acc = (probs.argmax(1) == test.y).double().mean().item()
    assert acc >= 0.992, acc
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-4)  # the json tells the truth


def test_extractor_contract(ext):
    assert (ext.name, ext.dim, ext.num_classes, ext.input_shape) == ("genlab-mnist", 128, 10, (1, 28, 28))
    x = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    f, p = ext.features_and_probs(x)
    assert f.shape == (37, 128) and p.shape == (37, 10) and f.dtype == p.dtype == torch.float32
    assert torch.allclose(p.sum(1), torch.ones(37), atol=1e-5)
    assert torch.equal(ext.features(x), f) and torch.equal(ext.probs(x), p)
    assert ext.batch_size is None  # rows per forward: genlab.speed.inference_chunk (64 on the CPU)
    ext.batch_size = 8  # internal batching (five forwards here, one above) does not change the result
    try:
        f8 = ext.features(x)
    finally:
        ext.batch_size = None
    assert torch.allclose(f8, f, atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)  # quantisation: float input takes the uint8 path
    assert torch.allclose(ext.features(u8), f, atol=1e-6)


def _with_running_stats(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.3, 3, generator=g)
            m.weight.data.normal_(1, 0.3, generator=g)
            m.bias.data.normal_(0, 0.3, generator=g)
    return net.eval()


def test_fold_batchnorm_keeps_the_function_and_leaves_the_original_alone():
    from torch import nn

    from genlab.nets.common import fold_batchnorm

    net = _with_running_stats(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.BatchNorm2d(4)),
        nn.Flatten(), nn.Linear(4 * 16 * 16, 6), nn.BatchNorm1d(6)))
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(net)
    kinds = [type(m) for m in folded.modules()]
    assert nn.BatchNorm2d not in kinds and nn.BatchNorm1d in kinds  # only conv -> BN2d pairs fold
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2  # the original is untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(net.train())


def test_genlab_extractor_folds_its_batch_norms_and_gives_the_same_features(ext):
    from genlab.eval.evaluator import load_evaluator

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ext.net.modules())
    plain = load_evaluator(ext.path)[0]
    images = load_dataset(DataConfig(name="mnist"), "test").x[:200]
    with torch.inference_mode():
        want, logits = plain.features_and_logits(images.float() / 255)
    got, probs = ext.features_and_probs(images)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert torch.allclose(probs, logits.softmax(1), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.full((2, 1, 28, 28), 1.5), r"\[0, 1\]"),
    (torch.rand(2, 3, 32, 32), "expects 1x28x28"),
])
def test_extractor_rejects_bad_input(ext, bad, match):
    with pytest.raises(GenlabError, match=match):
        ext.features(bad)


def test_pick_extractor():
    assert F.pick_extractor(DataInfo("mnist", "image", (1, 28, 28), 10)) == "genlab-mnist"
    assert F.pick_extractor(DataInfo("cifar10", "image", (3, 32, 32), 10)) == "inception"
    with pytest.raises(GenlabError, match="diagnose"):
        F.pick_extractor(DataInfo("ring8", "points", (2,)))
    with pytest.raises(GenlabError, match="did you mean 'inception'"):
        F.get_extractor("inceptoin")
    assert {"genlab-mnist", "inception"} <= set(F.available_extractors())


def test_evaluator_training_is_reproducible(tmp_path, cache):
    cfg = EvaluatorTrainConfig(epochs=1, width=4, feature_dim=8, batch_size=64, n_train=256, seed=3)
    a = train_evaluator(cfg, tmp_path / "a" / "genlab-x.pt", log=lambda m: None)
    b = train_evaluator(cfg, tmp_path / "b" / "genlab-x.pt", log=lambda m: None)
    assert a["sha256"] == b["sha256"] == sha256_file(tmp_path / "a" / "genlab-x.pt")  # bit-identical weights
    saved = json.loads((tmp_path / "a" / "genlab-x.json").read_text())
    assert saved == a and (saved["dataset"], saved["epochs"], saved["seed"]) == ("mnist", 1, 3)
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and saved["n_test"] == 10000
    state = torch.load(tmp_path / "a" / "genlab-x.pt", weights_only=True)
    assert state["kwargs"] == {"shape": [1, 28, 28], "num_classes": 10, "width": 4, "feature_dim": 8}


def test_user_trained_evaluator_is_found_picked_and_verified(cache):
    folder = cache / "evaluators"
    folder.mkdir(parents=True)
    (folder / "genlab-fashion-mnist.pt").write_bytes((WEIGHTS_DIR / "genlab-mnist.pt").read_bytes())
    meta = json.loads((WEIGHTS_DIR / "genlab-mnist.json").read_text())
    (folder / "genlab-fashion-mnist.json").write_text(json.dumps(meta))
    assert F.pick_extractor(DataInfo("fashion-mnist", "image", (1, 28, 28), 10)) == "genlab-fashion-mnist"
    assert F.pick_extractor(DataInfo("fashion-mnist", "image", (1, 32, 32), 10)) == "inception"  # shape differs
    assert "genlab-fashion-mnist" in F.available_extractors()
    assert F.get_extractor("genlab-fashion-mnist").fingerprint == meta["sha256"][:16]
    (folder / "genlab-fashion-mnist.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(GenlabError, match="do not match"):
        F.get_extractor("genlab-fashion-mnist")


def test_random_shift_moves_pixels_within_bounds():
    x = torch.zeros(50, 1, 7, 7)
    x[:, 0, 3, 3] = 1
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = y[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 7, pos % 7
    assert y.sum() == 50 and rows.min() >= 1 and rows.max() <= 5 and cols.min() >= 1 and cols.max() <= 5
    assert len(set(pos.tolist())) > 5  # really random


# ----------------------------------------------------------------------------- inception
def test_inception_missing_weights_names_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    never = lambda *a, **k: pytest.fail("attempted a download")  # noqa: E731
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", never)
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe
        monkeypatch.setattr(fe, "load_state_dict_from_url", never)
    except ImportError:  # torch-fidelity is optional: the first error is then the install hint
        pass
    expected = tmp_path / "hub" / "checkpoints"
    with pytest.raises(GenlabError) as e:
        F.get_extractor("inception")
    msg = str(e.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(expected) in msg
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    with pytest.raises(GenlabError, match="pip install torch-fidelity") as e:
        F.get_extractor("inception")
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value) and str(expected) in str(e.value)


def test_inception_path_matches_torch_fidelity(tmp_path, monkeypatch):
    """With (random) weights in place, features equal torch-fidelity's own extractor on uint8 RGB,
    including its TF1 bilinear resize, and grey images are replicated to RGB."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    torch.manual_seed(0)
    ref_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    monkeypatch.undo()
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref_net.state_dict(), ckpt / "weights-inception-2015-12-05-6726825d.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.warns(UserWarning, match="sha256"):  # random weights: not the published file
        inc = F.get_extractor("inception")
    assert (inc.dim, inc.num_classes) == (2048, 1008)
    grey = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    f, p = inc.features_and_probs(grey)
    u8 = (grey * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    with torch.no_grad():
        f_ref, logits_ref = ref_net(u8)
    assert torch.allclose(f, f_ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(p, logits_ref.softmax(1), atol=1e-6)


# ----------------------------------------------------------------------------- reference cache
def test_reference_cache_hit_miss_and_invalidation(ext, cache):
    log = []
    data = DataConfig(name="mnist")
    first = R.get_reference(data, "test", 200, ext, log=log.append)
    assert first.status == "computed" and first.path.is_file() and first.path.parent == cache / "ref"
    assert first.features.shape == (200, 128) and first.key["fingerprint"] == ext.fingerprint
    hit = R.get_reference(data, "test", 200, ext, log=log.append)
    assert hit.status == "hit" and torch.equal(hit.features, first.features) and not log
    assert torch.allclose(hit.mu, first.features.double().mean(0))

    other_n = R.get_reference(data, "test", 240, ext, log=log.append)  # n is part of the key
    assert other_n.status == "computed" and other_n.path != first.path and not log

    class Retrained(type(ext)):  # same name, new weights -> new fingerprint
        def __init__(self, base):
            self.__dict__.update(base.__dict__)
            self.fingerprint = "0123456789abcdef"
    stale = R.get_reference(data, "test", 200, Retrained(ext), log=log.append)
    assert stale.status == "recomputed" and stale.path == first.path
    assert len(log) == 1 and "stale" in log[0] and "fingerprint" in log[0]
    assert R.get_reference(data, "test", 200, Retrained(ext), log=log.append).status == "hit"

    log.clear()  # the file records the image data: changed data is detected too
    obj = torch.load(first.path, weights_only=True)
    obj["key"]["data_sha256"] = "f" * 64
    torch.save(obj, first.path)
    assert R.get_reference(data, "test", 200, Retrained(ext), log=log.append).status == "recomputed"
    assert "image data" in log[-1]

    first.path.write_bytes(b"not a torch file")  # corrupt file: reported, recomputed, rewritten
    log.clear()
    again = R.get_reference(data, "test", 200, ext, log=log.append)
    assert again.status == "recomputed" and "corrupt" in log[0]
    assert torch.equal(again.features, first.features)
    assert R.get_reference(data, "test", 200, ext, log=log.append).status == "hit"


def test_reference_subset_is_seeded_and_clamped(ext, cache):
    data = DataConfig(name="mnist")
    a = R.load_real(data, "test", 100, seed=0)[0]
    assert torch.equal(a, R.load_real(data, "test", 100, seed=0)[0])
    assert not torch.equal(a, R.load_real(data, "test", 100, seed=1)[0])
    assert R.load_real(data, "test", 10**6)[0].shape[0] == 10000


def test_reference_keeps_its_knn_radii_and_metrics_do_not_change(ext, cache):
    """The real features' k-NN radii (PR / DC) are computed once and stored with the cached reference;
    precision, recall, density and coverage are the same with them as without."""
    from genlab.eval.metrics import compute_all, knn_radii

    data = DataConfig(name="mnist")
    ref = R.get_reference(data, "test", 300, ext, log=lambda m: None)
    assert ref.radii == {}
    radii = ref.knn_radii([3, 5])
    assert torch.equal(radii[3], knn_radii(ref.features, [3])[3])
    again = R.get_reference(data, "test", 300, ext, log=lambda m: None)  # from the cache file
    assert again.status == "hit" and set(again.radii) == {3, 5} and torch.equal(again.radii[5], radii[5])
    fake = R.get_reference(data, "train", 300, ext, log=lambda m: None).features
    plain = compute_all(ref.features, fake, None, ("pr", "dc"))
    cached = compute_all(ref.features, fake, None, ("pr", "dc"), real_radii=again.radii)
    assert plain == cached
