"""Bad input, tried as a user would, through the real console entry point (`genlab.cli.main`): every
case exits with code 2 and ONE line on stderr, prints no traceback, and leaves every file of an
existing run exactly as it was."""
import hashlib
import shutil

import pytest

from genlab import config as C
from genlab.cli import main
from genlab.train import Trainer

TOY = ["--dataset", "ring8", "--set", "gan.g_width=8", "--set", "gan.d_width=8", "--set", "data.n_points=200",
       "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    sets = ["data.name=ring8", "gan.g_width=8", "gan.d_width=8", "data.n_points=200", "train.batch_size=8",
            "train.steps=4", "train.checkpoint_every=2", "train.log_every=1", f"out={root / 'runs'}", "name=base"]
    Trainer(C.resolve("wgan-gp", sets=sets), root / "runs" / "base", show_progress=False).run()
    (root / "afile").write_text("not a directory")
    (root / "corrupt.yaml").write_text("train: [unclosed\n")
    broken = root / "runs" / "broken"
    shutil.copytree(root / "runs" / "base", broken)
    (broken / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    return root


def _fingerprint(run):
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


RUN, FILE, ROOT = "{RUN}", "{FILE}", "{ROOT}"
CASES = {
    # config values out of range, of the wrong type, unknown
    "steps 0": ["train", "wgan-gp", *TOY, "--set", "train.steps=0"],
    "batch 0": ["train", "wgan-gp", *TOY, "--set", "train.batch_size=0"],
    "log_every 0": ["train", "wgan-gp", *TOY, "--set", "train.log_every=0"],
    "sample_every -1": ["train", "wgan-gp", *TOY, "--set", "train.sample_every=-1"],
    "checkpoint_every -1": ["train", "wgan-gp", *TOY, "--set", "train.checkpoint_every=-1"],
    "keep -1": ["train", "wgan-gp", *TOY, "--set", "train.keep_checkpoints=-1"],
    "grid 0": ["train", "wgan-gp", *TOY, "--set", "train.grid_size=0"],
    "ema 1": ["train", "wgan-gp", *TOY, "--set", "train.ema_decay=1"],
    "ema -0.1": ["train", "wgan-gp", *TOY, "--set", "train.ema_decay=-0.1"],
    "threads -2": ["train", "wgan-gp", *TOY, "--set", "train.threads=-2"],
    "amp fp8": ["train", "wgan-gp", *TOY, "--set", "train.amp=fp8"],
    "lr 0": ["train", "wgan-gp", *TOY, "--set", "gan.g_optim.lr=0"],
    "lr -1": ["train", "wgan-gp", *TOY, "--set", "gan.d_optim.lr=-1"],
    "betas 1": ["train", "wgan-gp", *TOY, "--set", "gan.d_optim.betas=[1.0, 0.9]"],
    "betas one value": ["train", "wgan-gp", *TOY, "--set", "gan.d_optim.betas=[0.5]"],
    "n_critic 0": ["train", "wgan-gp", *TOY, "--set", "gan.n_critic=0"],
    "latent 0": ["train", "wgan-gp", *TOY, "--set", "gan.latent_dim=0"],
    "width 0": ["train", "wgan-gp", *TOY, "--set", "gan.g_width=0"],
    "norm": ["train", "wgan-gp", *TOY, "--set", "gan.g_norm=sparkly"],
    "eval.n 1": ["train", "wgan-gp", *TOY, "--set", "eval.n=1"],
    "eval.every -1": ["train", "wgan-gp", *TOY, "--set", "eval.every=-1"],
    "diagnose.n 1": ["train", "wgan-gp", *TOY, "--set", "diagnose.n=1"],
    "channels 2": ["train", "gan", "--set", "data.channels=2"],
    "resolution -1": ["train", "gan", "--set", "data.resolution=-1"],
    "seed -1": ["train", "wgan-gp", *TOY, "--set", "seed=-1"],
    "unknown key": ["train", "wgan-gp", *TOY, "--set", "train.stepz=3"],
    "unknown loss": ["train", "wgan-gp", *TOY, "--set", "gan.loss=nope"],
    "steps abc": ["train", "wgan-gp", *TOY, "--set", "train.steps=abc"],
    "vae iw 0": ["train", "vae", "--set", "vae.iw_samples=0"],
    "flow bits 9": ["train", "glow", "--set", "flow.n_bits=9"],
    "vq decay 1": ["train", "vqvae", "--set", "vqvae.decay=1"],
    "incompatible parts": ["train", "ebgan", "--set", "gan.regularizers=[{name: r1}]"],
    # CLI options
    "--steps 0": ["train", "wgan-gp", *TOY, "--steps", "0"],
    "--batch-size 0": ["train", "wgan-gp", *TOY, "--batch-size", "0"],
    "--seed -1": ["train", "wgan-gp", *TOY, "--seed", "-1"],
    "--device foo": ["train", "wgan-gp", *TOY, "--device", "foo"],
    "--device cuda": ["train", "wgan-gp", *TOY, "--device", "cuda"],
    "--dataset nope": ["train", "wgan-gp", "--dataset", "nope"],
    "unknown model": ["train", "wgn-gp"],
    "missing model": ["train"],
    "unknown command": ["trian", "gan"],
    "unknown option": ["train", "gan", "--stepz", "3"],
    "eval -n 1": ["eval", RUN, "-n", "1"],
    "eval -n abc": ["eval", RUN, "-n", "abc"],
    "eval batch 0": ["eval", RUN, "--batch-size", "0"],
    "eval bootstrap -1": ["eval", RUN, "--bootstrap", "-1"],
    "eval n-test 0": ["eval", RUN, "--n-test", "0"],
    "eval metrics nope": ["eval", RUN, "--metrics", "nope"],
    "eval fid on points": ["eval", RUN, "--metrics", "fid"],
    "eval checkpoint": ["eval", RUN, "--checkpoint", "bogus"],
    "eval device": ["eval", RUN, "--device", "foo"],
    "eval temperature gan": ["eval", RUN, "--temperature", "0.5"],
    "sample -n 0": ["sample", RUN, "-n", "0"],
    "sample steps 1": ["sample", RUN, "--interpolate", "--steps", "1"],
    "sample temperature gan": ["sample", RUN, "--temperature", "0.7"],
    "sample both": ["sample", RUN, "--interpolate", "--reconstruct"],
    "sample reconstruct gan": ["sample", RUN, "--reconstruct"],
    "sample step-99": ["sample", RUN, "--checkpoint", "step-99"],
    "diagnose -n 1": ["diagnose", RUN, "-n", "1"],
    "diagnose checkpoint": ["diagnose", RUN, "--checkpoint", "step-99"],
    "translate not a translator": ["translate", RUN, "-d", "AtoB"],
    "translate direction": ["translate", RUN, "-d", "sideways"],
    "ref unknown": ["ref", "nope"],
    "ref channels": ["ref", "mnist", "--channels", "2"],
    "evaluator epochs 0": ["evaluator", "train", "mnist", "--epochs", "0"],
    "evaluator out": ["evaluator", "train", "mnist", "--out", "x.txt"],
    "compare nothing": ["compare", "/nonexistent/runs"],
    "compare format": ["compare", RUN, "--format", "pdf"],
    "compare sort": ["compare", RUN, "--sort", "nonsense"],
    "list nope": ["list", "nope"],
    # paths
    "--out is a file": ["train", "wgan-gp", *TOY, "--out", FILE, "--name", "x"],
    "config missing": ["train", "wgan-gp", "--config", "/nonexistent.yaml"],
    "config corrupt": ["train", "wgan-gp", "--config", f"{ROOT}/corrupt.yaml"],
    "eval no run": ["eval", "/nonexistent/run"],
    "sample no run": ["sample", "/nonexistent/run"],
    "sample out under a file": ["sample", RUN, "--out", f"{FILE}/grid.png"],
    "diagnose out is a file": ["diagnose", RUN, "--out", FILE],
    "compare out under a file": ["compare", RUN, "--out", f"{FILE}/report.html"],
    "translate out is a file": ["translate", RUN, "-d", "AtoB", "--out", FILE],
    # names
    "name ../../x": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "../../x"],
    "name absolute": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "/abs"],
    "name a/b": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "a/b"],
    "name .": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "."],
    "name ..": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", ".."],
    "name control": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "a\x07b"],
    "name long": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", "x" * 300],
    "name spaces": ["train", "wgan-gp", *TOY, "--out", ROOT, "--name", " padded "],
    # resumes and existing runs
    "new run into a run": ["train", "wgan-gp", *TOY, "--out", f"{ROOT}/runs", "--name", "base"],
    "resume finished": ["train", "wgan-gp", "--resume", RUN],
    "resume other model": ["train", "gan", "--resume", RUN],
    "resume new width": ["train", "wgan-gp", "--resume", RUN, "--steps", "8", "--set", "gan.g_width=16"],
    "resume new dataset": ["train", "wgan-gp", "--resume", RUN, "--steps", "8", "--dataset", "grid25"],
    "resume new loss": ["train", "wgan-gp", "--resume", RUN, "--steps", "8", "--set", "gan.loss=hinge"],
    "resume and overwrite": ["train", "wgan-gp", "--resume", RUN, "--overwrite"],
    "resume nothing": ["train", "wgan-gp", "--resume", "/nonexistent/run"],
    "resume corrupt": ["train", "wgan-gp", "--resume", f"{ROOT}/runs/broken", "--steps", "8"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(world, case, capsys):
    args = [a.replace(RUN, str(world / "runs" / "base")).replace(FILE, str(world / "afile")).replace(ROOT, str(world))
            for a in CASES[case]]
    before = _fingerprint(world / "runs" / "base")
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert exit_.value.code == 2, (case, err, out)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, err)
    assert "Traceback" not in err + out
    assert _fingerprint(world / "runs" / "base") == before, f"{case} changed the existing run"
    for stray in ("x", "a", "abs"):
        assert not (world / stray).exists()


def test_the_table_is_large_and_every_case_is_distinct():
    assert len(CASES) >= 90 and len({tuple(v) for v in CASES.values()}) == len(CASES)


def test_resume_ignores_out_and_name_with_a_warning(world, capsys, tmp_path):
    run = world / "runs" / "resumable"
    shutil.copytree(world / "runs" / "base", run)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "wgan-gp", "--resume", str(run), "--steps", "6", "--no-progress", "--name", "elsewhere",
              "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 0 and "--out / --name are ignored with --resume" in err
    saved = C.load_run_config(run)
    assert (saved.out, saved.name) == (str(run.parent), "resumable") and not (tmp_path / "elsewhere").exists()
