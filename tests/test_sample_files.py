"""Samples out (`genlab sample --format npz|folder`) and in (`genlab eval --fake`): round trips give
exactly the run's own figures, every reader gets the same uint8 images, bad files are one-line errors,
and an eval-only run directory shows up in `genlab compare`."""
import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from genlab import config as C
from genlab import speed
from genlab.cli import app
from genlab.errors import GenlabError
from genlab.runs import load_run
from genlab.samplefiles import NpzWriter, open_samples
from genlab.train import Trainer

N, BATCH, SEED = 300, 128, 3
TINY = ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8", "train.log_every=1",
        "train.sample_every=100", "train.checkpoint_every=100", "train.grid_size=4", "train.steps=2"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path_factory.getbasetemp() / "genlab-cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    Trainer(C.resolve("gan", sets=TINY + [f"out={out}", "name=tiny"]), out / "tiny", show_progress=False).run()
    return out / "tiny"


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def _fail(args) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output, res.output
    return lines[0]


def _metrics(args) -> dict:
    return json.loads(_ok(args + ["--json"]))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    common = ["-n", str(N), "--seed", str(SEED), "--batch-size", str(BATCH)]
    _ok(["sample", str(tiny_run), "--format", "npz", "--out", str(out / "s.npz"), *common])
    _ok(["sample", str(tiny_run), "--format", "folder", "--out", str(out / "dir"), *common])
    return out


@pytest.mark.filterwarnings("ignore:KID subset_size", "ignore:.*covariance is singular")
def test_round_trips_equal_the_runs_own_evaluation(tiny_run, exported):
    common = ["--n", str(N), "--seed", str(SEED), "--batch-size", str(BATCH)]
    own = _metrics(["eval", str(tiny_run), *common, "--no-save"])
    for path in (exported / "s.npz", exported / "dir"):
        rec = _metrics(["eval", "--fake", str(path), *common])
        assert rec["metrics"] == own["metrics"], path  # exactly: the same uint8 images, the same batches
        assert (rec["extractor_fingerprint"], rec["n_real"], rec["ref_dataset"]) == \
            (own["extractor_fingerprint"], own["n_real"], "mnist")  # dataset from the export's genlab.json
        assert rec["kind"] == "imported-samples" and rec["fake"]["n_in_file"] == N
        assert rec["fake"]["made_by"]["step"] == own["step"] and rec["fake"]["made_by"]["seed"] == SEED
        assert rec["fake"]["made_by"]["precision"] == own["precision"]  # both: --precision auto
    digest = hashlib.sha256((exported / "s.npz").read_bytes()).hexdigest()
    assert _metrics(["eval", "--fake", str(exported / "s.npz"), *common])["fake"]["sha256"] == digest


def test_npz_is_the_adm_layout_and_memory_mapped(tiny_run, exported):
    arr = np.load(exported / "s.npz")["arr_0"]
    assert arr.shape == (N, 28, 28, 1) and arr.dtype == np.uint8
    with zipfile.ZipFile(exported / "s.npz") as zf:
        assert zf.getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
    src = open_samples(exported / "s.npz")
    assert isinstance(src.array, np.memmap)
    # the first batch is the eval pass's batch 0: seeded by batch_seed(SEED, 0), EMA weights, the run's
    # sampling precision (--precision auto)
    from genlab.eval.passes import batch_seed
    from genlab.samplefiles import to_uint8

    run = load_run(tiny_run, "last", "cpu")
    with run.sampling(), torch.inference_mode():
        first = speed.draw(run.family, run.sample_amp, BATCH, torch.Generator().manual_seed(batch_seed(SEED, 0)))
    assert torch.equal(to_uint8(first).permute(0, 2, 3, 1), torch.from_numpy(np.array(arr[:BATCH])))
    names = sorted(p.name for p in (exported / "dir").iterdir())
    assert names[0] == "000000.png" and len(names) == N + 1 and "genlab.json" in names


def test_every_reader_sees_the_same_images(exported, tmp_path):
    arr = np.load(exported / "s.npz")["arr_0"]
    np.savez_compressed(tmp_path / "c.npz", arr)  # key arr_0, compressed: read whole
    np.save(tmp_path / "grey.npy", arr[..., 0])  # N x H x W
    torch.save(torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255, tmp_path / "t.pt")  # float NCHW
    torch.save({"images": torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()}, tmp_path / "d.pt")
    want = torch.from_numpy(arr[7:40]).permute(0, 3, 1, 2)
    for path in (exported / "s.npz", exported / "dir", tmp_path / "c.npz", tmp_path / "grey.npy",
                 tmp_path / "t.pt", tmp_path / "d.pt"):
        src = open_samples(path)
        assert (src.n, src.shape) == (N, (1, 28, 28)), path
        got = src.read(7, 33)
        assert got.dtype == torch.uint8 and torch.equal(got, want), path


def test_npz_writer_streams_batches(tmp_path):
    writer = NpzWriter(tmp_path / "x.npz", 5, (2, 3, 1))
    for part in (np.zeros((2, 2, 3, 1), np.uint8), np.full((3, 2, 3, 1), 7, np.uint8)):
        writer.write(part)
    assert not (tmp_path / "x.npz").exists()  # complete files only, under the final name
    writer.close()
    arr = np.load(tmp_path / "x.npz")["arr_0"]
    assert arr.shape == (5, 2, 3, 1) and arr[:2].max() == 0 and (arr[2:] == 7).all()


def test_a_failed_export_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from genlab import sampling

    calls = {"n": 0}
    real = sampling.sample_batches

    def failing(*args, **kwargs):
        for batch in real(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(sampling, "sample_batches", failing)
    for fmt, name in (("npz", "k.npz"), ("folder", "k")):
        calls["n"] = 0
        res = runner.invoke(app, ["sample", str(tiny_run), "-n", "300", "--batch-size", "100", "--format", fmt,
                                  "--out", str(tmp_path / name)])
        assert res.exit_code == 130, res.output
        assert list(tmp_path.iterdir()) == [], fmt


@pytest.mark.filterwarnings("ignore:KID subset_size", "ignore:.*covariance is singular")
@pytest.mark.parametrize("native", [True, False])
def test_sampling_precision_is_chosen_and_recorded(tiny_run, exported, monkeypatch, native):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: native)
    common = ["--n", "100", "--batch-size", "50", "--metrics", "fid", "--no-save"]
    assert _metrics(["eval", str(tiny_run), *common])["precision"] == ("bf16 autocast" if native else "float32")
    assert _metrics(["eval", str(tiny_run), *common, "--precision", "float32"])["precision"] == "float32"
    asked = _metrics(["eval", str(tiny_run), *common, "--precision", "bf16"])["precision"]
    assert asked == "bf16 autocast" if native else asked.startswith("float32 (bf16 asked")
    assert "--precision must be one of auto, float32, bf16" in _fail(["sample", str(tiny_run), "--precision", "fp16"])
    assert "--fake and --real-vs-real sample nothing" in _fail(
        ["eval", "--fake", str(exported / "s.npz"), "--precision", "bf16"])


def test_bad_sample_files_are_one_line_errors(tiny_run, exported, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in _fail(["eval", "--fake", str(tmp_path / "junk.npz")])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"images": Evil()}, tmp_path / "evil.pt")
    assert "cannot read samples" in _fail(["eval", "--fake", str(tmp_path / "evil.pt")])
    np.save(tmp_path / "cifar.npy", np.zeros((10, 32, 32, 3), np.uint8))
    assert "--ref" in _fail(["eval", "--fake", str(tmp_path / "cifar.npy")])
    assert "mnist images 1x28x28" in _fail(["eval", "--fake", str(tmp_path / "cifar.npy"), "--ref", "mnist"])
    np.save(tmp_path / "vec.npy", np.zeros((10, 5), np.float32))
    assert "not images" in _fail(["eval", "--fake", str(tmp_path / "vec.npy")])
    np.save(tmp_path / "big.npy", np.full((10, 28, 28), 2.0, np.float32))
    assert "[0, 1]" in _fail(["eval", "--fake", str(tmp_path / "big.npy"), "--metrics", "fid"])
    assert "holds 300 samples" in _fail(["eval", "--fake", str(exported / "s.npz"), "-n", "301"])
    assert "exists" in _fail(["sample", str(tiny_run), "--format", "npz", "--out", str(exported / "s.npz")])
    assert "does not end in .npz" in _fail(["sample", str(tiny_run), "--format", "npz", "--out", str(tmp_path / "a")])
    assert "one of RUN_DIR" in _fail(["eval", str(tiny_run), "--fake", str(exported / "s.npz")])
    assert "do not apply" in _fail(["eval", "--fake", str(exported / "s.npz"), "--temperature", "0.5"])
    (tmp_path / "mixed").mkdir()
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (32, 32)).save(tmp_path / "mixed" / "b.png")
    assert "one size" in _fail(["eval", "--fake", str(tmp_path / "mixed"), "--metrics", "fid", "-n", "2"])


@pytest.mark.filterwarnings("ignore:KID subset_size", "ignore:.*covariance is singular")
def test_eval_only_run_directory_joins_compare(tiny_run, exported, tmp_path):
    target = tmp_path / "adm"
    _ok(["eval", "--fake", str(exported / "s.npz"), "--metrics", "fid,kid", "--run-dir", str(target)])
    _ok(["eval", "--fake", str(exported / "dir"), "--metrics", "fid", "--run-dir", str(target)])
    records = json.loads((target / "eval.json").read_text())
    assert [r["fake"]["format"] for r in records] == ["npz", "folder"]
    assert (target / "samples" / "step-0.png").is_file()
    assert "imported samples" in _fail(["eval", str(target)])
    assert "trained run" in _fail(["eval", "--fake", str(exported / "s.npz"), "--run-dir", str(tiny_run)])
    _ok(["compare", str(target), str(tiny_run), "--format", "csv", "--out", str(tmp_path / "t.csv")])
    rows = (tmp_path / "t.csv").read_text().splitlines()
    imported = next(r for r in rows if r.split(",")[1] == "adm")
    assert "file:s.npz" in imported and ",imported," in imported  # named by its first file


def test_open_samples_refuses_what_is_not_there(tmp_path):
    with pytest.raises(GenlabError, match="does not exist"):
        open_samples(tmp_path / "nope.npz")
    with pytest.raises(GenlabError, match="unknown sample file type"):
        (tmp_path / "x.txt").write_text("hi")
        open_samples(tmp_path / "x.txt")
