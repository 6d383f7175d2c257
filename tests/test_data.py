"""Data: bundled MNIST contents, IDX validation, samplers (coverage, exact resume, binarisation),
toy mixtures, image folders, offline torchvision errors and the generic resize path."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from genlab import registry
from genlab.config import DataConfig
from genlab.data import (BatchSampler, DataError, DataInfo, Dataset, StreamingSampler, available_datasets,
                         load_dataset, load_image_dir, make_sampler, mixture_centres)
from genlab.data.mnist import read_idx, read_idx_pair

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_test():
    return load_dataset(DataConfig(name="mnist"), "test")


def points(n: int) -> Dataset:
    """Points whose first coordinate is their own index, so batches reveal which rows they hold."""
    x = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], 1)
    return Dataset(x, torch.arange(n), DataInfo("idx", "points", (2,)))


# ---------------------------------------------------------------------------------- MNIST / IDX


def test_registry_lists_every_dataset():
    assert {"mnist", "fashion-mnist", "cifar10", "svhn", "folder", "ring8", "grid25"} <= set(available_datasets())
    assert registry.get("dataset", "mnist") is not None


def test_bundled_mnist_matches_official_counts(mnist_test):
    train = load_dataset(DataConfig(name="mnist"), "train")
    for data, n, counts in ((train, 60000, MNIST_TRAIN_COUNTS), (mnist_test, 10000, MNIST_TEST_COUNTS)):
        assert data.x.shape == (n, 1, 28, 28) and data.x.dtype == torch.uint8
        assert data.y.dtype == torch.int64 and 0 <= data.y.min() and data.y.max() <= 9
        assert torch.bincount(data.y, minlength=10).tolist() == counts
        assert data.info == DataInfo("mnist", "image", (1, 28, 28), num_classes=10)
    # Real digits, not zeros: the border is background and the centre is mostly ink.
    assert train.x.max() == 255 and train.x[:, :, 0, :].float().mean() < 1
    assert train.x[:, :, 10:18, 10:18].float().mean() > 60


def _write_idx(path, magic: int, dims: tuple[int, ...], payload: bytes, compress=True):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_idx_round_trip_and_corruption(tmp_path):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    good_i, good_l = tmp_path / "i.gz", tmp_path / "l"
    _write_idx(good_i, 2051, (3, 4, 5), imgs.tobytes())
    _write_idx(good_l, 2049, (3,), bytes([7, 0, 9]), compress=False)
    x, y = read_idx_pair(good_i, good_l)
    assert x.shape == (3, 1, 4, 5) and torch.equal(x[:, 0], torch.from_numpy(imgs)) and y.tolist() == [7, 0, 9]

    bad_magic = tmp_path / "bad_magic.gz"
    _write_idx(bad_magic, 2049, (3, 4, 5), imgs.tobytes())
    with pytest.raises(DataError, match="bad_magic.gz.*magic"):
        read_idx(bad_magic, 2051)
    short = tmp_path / "short.gz"
    _write_idx(short, 2051, (3, 4, 5), imgs.tobytes()[:-7])
    with pytest.raises(DataError, match="short.gz.*truncated"):
        read_idx(short, 2051)
    cut_gzip = tmp_path / "cut.gz"
    cut_gzip.write_bytes(good_i.read_bytes()[:-10])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(cut_gzip, 2051)
    few_labels = tmp_path / "few"
    _write_idx(few_labels, 2049, (2,), bytes([1, 2]))
    with pytest.raises(DataError, match="3 images.*2 labels"):
        read_idx_pair(good_i, few_labels)
    with pytest.raises(DataError, match="missing"):
        read_idx(tmp_path / "missing.gz")


def test_resolution_override_resizes_mnist(mnist_test):
    big = load_dataset(DataConfig(name="mnist", resolution=32), "test")
    assert big.x.shape == (10000, 1, 32, 32) and big.x.dtype == torch.uint8
    assert big.info.shape == (1, 32, 32) and torch.equal(big.y, mnist_test.y)
    # Resizing preserves content: the mean intensity barely moves.
    assert abs(big.x.float().mean() - mnist_test.x.float().mean()) < 1.0
    rgb = load_dataset(DataConfig(name="mnist", channels=3), "test")
    assert rgb.x.shape == (10000, 3, 28, 28) and torch.equal(rgb.x[:, 2], mnist_test.x[:, 0])


def test_bad_names_and_options():
    with pytest.raises(DataError, match="did you mean 'mnist'"):
        load_dataset(DataConfig(name="mnst"))
    with pytest.raises(DataError, match="split"):
        load_dataset(DataConfig(name="mnist"), "valid")
    with pytest.raises(DataError, match="binarize applies to image"):
        load_dataset(DataConfig(name="ring8", n_points=10, binarize=True))


# ---------------------------------------------------------------------------------- samplers


def test_sampler_epochs_cover_every_index_once():
    n, bs = 100, 10
    s = BatchSampler(points(n), bs, seed=3, device="cpu")
    epochs = []
    for _ in range(3):
        rows = [s.next() for _ in range(len(s))]
        assert all(x[:, 0].long().tolist() == y.tolist() for x, y in rows)  # x and y stay paired
        epochs.append(torch.cat([y for _, y in rows]))
    for e in epochs:
        assert sorted(e.tolist()) == list(range(n))
    assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    # With a partial last batch it is dropped: 4 full batches of 23 distinct rows, then a new epoch.
    s = BatchSampler(points(100), 23, seed=0)
    seen = torch.cat([s.next()[1] for _ in range(4)])
    assert len(seen.unique()) == 92 and s.epoch == 0
    s.next()
    assert s.epoch == 1 and s.pos == 23


def test_sampler_resume_is_exact(tmp_path):
    data = points(50)
    s = BatchSampler(data, 8, seed=11)
    for _ in range(9):  # past an epoch boundary (6 batches per epoch)
        s.next()
    torch.save(s.state_dict(), tmp_path / "s.pt")
    expected = [s.next()[1] for _ in range(10)]
    resumed = BatchSampler(data, 8, seed=999)  # the seed is overridden by the state
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert all(torch.equal(a, resumed.next()[1]) for a in expected)
    with pytest.raises(DataError, match="batches of"):
        BatchSampler(data, 5, seed=0).load_state_dict(s.state_dict())


def test_dynamic_binarisation():
    levels = torch.tensor([0, 30, 128, 200, 255], dtype=torch.uint8)
    x = levels.view(5, 1, 1, 1).expand(5, 1, 8, 8).contiguous()
    info = DataInfo("grey", "image", (1, 8, 8), binarized=True)
    s = BatchSampler(Dataset(x, torch.arange(5), info), 5, seed=0)
    total, first = torch.zeros(5, 1, 8, 8), None
    for _ in range(400):
        xb, yb = s.next()
        assert xb.dtype == torch.uint8 and set(xb.unique().tolist()) <= {0, 255}
        if first is None:
            first = xb[yb.argsort()]
        total[yb] += xb.float() / 255
    assert not torch.equal(first, xb[yb.argsort()])  # same images, fresh noise
    mean = (total / 400).mean(dim=(1, 2, 3))
    assert torch.allclose(mean, levels.float() / 255, atol=0.02)
    assert mean[0] == 0 and mean[-1] == 1  # 0 and 255 are deterministic
    # Resume reproduces the binarisation noise too.
    state = s.state_dict()
    a = s.next()[0]
    s.load_state_dict(state)
    assert torch.equal(a, s.next()[0])


def test_make_sampler_loads_and_binarizes():
    s = make_sampler(DataConfig(name="ring8", n_points=64), None, 16, seed=0, device="cpu")
    x, y = s.next()
    assert x.shape == (16, 2) and x.dtype == torch.float32 and y.max() < 8
    with pytest.raises(DataError, match="streaming"):
        make_sampler(DataConfig(name="mnist", streaming=True), None, 16, 0)
    with pytest.raises(DataError, match="larger than the dataset"):
        BatchSampler(points(4), 8, seed=0)


# ---------------------------------------------------------------------------------- toy mixtures


def test_mixture_centres_are_the_pacgan_spec():
    ring = mixture_centres("ring8")
    assert ring.shape == (8, 2)
    assert torch.allclose(ring.norm(dim=1), torch.ones(8))
    assert torch.allclose(ring[2], torch.tensor([0.0, 1.0]), atol=1e-6)
    angles = torch.atan2(ring[:, 1], ring[:, 0]).remainder(2 * torch.pi)
    assert torch.allclose(angles, torch.arange(8) * torch.pi / 4, atol=1e-5)
    grid = mixture_centres("grid25")
    assert sorted(map(tuple, grid.tolist())) == [(float(a), float(b)) for a in range(-4, 5, 2) for b in range(-4, 5, 2)]


@pytest.mark.parametrize("name,k,std", [("ring8", 8, 0.01), ("grid25", 25, 0.05)])
def test_toy_mixture_samples(name, k, std):
    cfg = DataConfig(name=name, n_points=20000, seed=5)
    data = load_dataset(cfg)
    info = data.info
    assert (info.kind, info.shape, info.num_classes, info.mode_std) == ("points", (2,), k, std)
    assert torch.equal(info.modes, mixture_centres(name))
    assert data.x.shape == (20000, 2) and data.x.dtype == torch.float32
    counts = torch.bincount(data.y, minlength=k)
    assert counts.min() > 0.7 * 20000 / k  # every mode is populated, roughly uniformly
    resid = data.x - info.modes[data.y]
    for m in range(k):
        per_mode = resid[data.y == m].std(dim=0)
        assert torch.allclose(per_mode, torch.full((2,), std), rtol=0.15)
    assert resid.std() == pytest.approx(std, rel=0.03)
    assert torch.equal(load_dataset(cfg).x, data.x)  # deterministic from the seed
    assert not torch.equal(load_dataset(cfg, "test").x, data.x)  # test split is a different draw


# ---------------------------------------------------------------------------------- folders


@pytest.fixture
def image_dir(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(12):
        w, h = (40, 30) if i % 2 else (30, 30)
        arr = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / ("sub" if i % 3 == 0 else "") / f"im{i:02d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_loads_at_requested_size_and_channels(image_dir):
    grey = load_dataset(DataConfig(name=f"folder:{image_dir}", resolution=16, channels=1))
    assert grey.x.shape == (11, 1, 16, 16) and grey.x.dtype == torch.uint8 and (grey.y == -1).all()
    assert grey.info.name == f"folder:{image_dir}" and grey.info.num_classes == 0
    rgb_test = load_dataset(DataConfig(name=f"folder:{image_dir}"), "test")
    assert rgb_test.x.shape == (1, 3, 64, 64)  # default resolution, 3 channels, 10% held out
    every = load_image_dir(image_dir, 3, 64)
    assert every.shape == (12, 3, 64, 64)
    rgb_train = load_dataset(DataConfig(name=f"folder:{image_dir}"), "train")
    both = torch.cat([rgb_train.x, rgb_test.x]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, every.flatten(1).tolist()))


def test_folder_crops_to_square(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, 10:30] = 255  # the central square is white, the sides black
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = load_image_dir(tmp_path, 1, 20)
    assert x.shape == (1, 1, 20, 20) and (x == 255).all()


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset(DataConfig(name=f"folder:{tmp_path / 'empty'}"))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name=f"folder:{tmp_path / 'nope'}"))
    with pytest.raises(DataError, match="needs a directory"):
        load_dataset(DataConfig(name="folder"))


def test_streaming_matches_in_memory_and_resumes(image_dir):
    cfg = DataConfig(name=f"folder:{image_dir}", resolution=8, streaming=True)
    stream = make_sampler(cfg, None, 3, seed=4, num_workers=0)
    assert isinstance(stream, StreamingSampler) and stream.info.shape == (3, 8, 8)
    memory = BatchSampler(load_dataset(cfg), 3, seed=4)
    for _ in range(5):  # crosses the epoch boundary (11 images -> 3 batches per epoch)
        assert torch.equal(stream.next()[0], memory.next()[0])
    state = stream.state_dict()
    expected = [stream.next()[0] for _ in range(4)]
    stream.load_state_dict(state)
    assert all(torch.equal(e, stream.next()[0]) for e in expected)


# ---------------------------------------------------------------------------------- torchvision


def test_offline_cifar10_explains_where_to_put_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_network(self):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(tvd.CIFAR10, "download", no_network)
    monkeypatch.delenv("GENLAB_DATA", raising=False)
    root = tmp_path / "data-root"
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(root)))
    msg = str(err.value)
    assert str(root) in msg and "cifar-10-python.tar.gz" in msg and "--data-root" in msg
    assert "GENLAB_DATA" in msg and "\n" not in msg
