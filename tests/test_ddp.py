"""Data parallelism, for real: `python -m torch.distributed.run --nproc_per_node=2` (gloo, CPU, one
thread per rank) on tiny configs, against the same runs in one process.

One launch trains every parity model, an exact-resume pair and a resumed single-process run (one
process group, tests/ddp_worker.py); the other launches go through the CLI (`-m genlab`)."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from genlab import checkpoint
from genlab import config as C
from genlab.data import DataInfo
from genlab.families import gan
from genlab.families.base import build_family
from genlab.parallel.modules import ComposedSyncBatchNorm, convert_sync_batchnorm
from genlab.train import Trainer
from statedicts import state_tensors  # tests/statedicts.py

HERE = Path(__file__).parent
# float32 and contiguous: the parity checked here is the data parallelism's, not bf16 rounding's
COMMON = ["train.batch_size=8", "train.log_every=1", "train.sample_every=1000", "train.checkpoint_every=1000",
          "train.grid_size=4", "train.amp=off", "train.channels_last=off"]
# Tiny nets on bundled MNIST. gan uses sync_bn (its DCGAN nets have BatchNorm); wgan-gp's critic is
# BN-free (layer norm); vqvae restarts dead codes after 2 idle batches, so restarts happen here.
#
# Adam's epsilon is raised from 1e-8 to 1e-6 for the comparison, and this is why: a bias that feeds
# a BatchNorm (DCGAN's conv and linear layers have one) has a gradient that is mathematically zero
# and numerically float noise of ~1e-10, different in the two runs; Adam divides each element by its
# own RMS, so with eps = 1e-8 that noise becomes full steps of +-lr with random signs, and those
# biases (and the running means after them) cannot agree however exact the data parallelism is. With
# eps = 1e-6 noise of 1e-10 moves nothing, while true gradients (>= 1e-4 here) step as before.
EPS = "eps=1e-4"
TINY = {
    "gan": ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.sync_bn=true",
            f"gan.g_optim.{EPS}", f"gan.d_optim.{EPS}",
            "eval.every=3", "eval.n=128", "eval.batch_size=32", "eval.metrics=fid,kid"],  # periodic eval, sharded
    # the look-ahead's gradients averaged over ranks with autograd (second-order terms included)
    "unrolled-gan": ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "gan.unroll=2", "train.sync_bn=true",
                     f"gan.g_optim.{EPS}", f"gan.d_optim.{EPS}"],
    "wgan-gp": ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "gan.n_critic=2", "train.sync_bn=true",
                f"gan.g_optim.{EPS}", f"gan.d_optim.{EPS}"],
    "vae": ["vae.width=4", "vae.latent_dim=4", "vae.iw_samples=8", "vae.iw_batch=64", f"vae.optim.{EPS}"],
    "vqvae": ["vqvae.width=8", "vqvae.code_dim=4", "vqvae.n_codes=16", "vqvae.res_blocks=1", "vqvae.dead_steps=2",
              f"vqvae.optim.{EPS}"],
    "glow": ["flow.hidden=8", "flow.depth=1", f"flow.optim.{EPS}"],
    "gated-pixelcnn": ["autoregressive.width=4", "autoregressive.layers=2", f"autoregressive.optim.{EPS}"],
}
STEPS = 3


def torchrun(*args: str, nproc: int = 2, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _sets(model: str, steps: int) -> list[str]:
    return [*COMMON, *TINY[model], f"train.steps={steps}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process and 2-rank runs of every TINY model, plus resume runs, all trained once."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = []
    for model in TINY:
        Trainer(C.resolve(model, sets=_sets(model, STEPS)), root / "single" / model, show_progress=False).run()
        jobs.append({"model": model, "sets": _sets(model, STEPS), "run_dir": str(root / "ddp" / model)})
    Trainer(C.resolve("gan", sets=_sets("gan", 2 * STEPS)), root / "single-long", show_progress=False).run()
    Trainer(C.resolve("gan", sets=_sets("gan", STEPS)), root / "from-one", show_progress=False).run()
    jobs += [
        {"model": "gan", "sets": _sets("gan", 2 * STEPS), "run_dir": str(root / "straight")},
        {"model": "gan", "sets": _sets("gan", STEPS), "run_dir": str(root / "halves")},
        {"model": "gan", "sets": _sets("gan", 2 * STEPS), "run_dir": str(root / "halves"), "resume": True},
        {"model": "gan", "sets": _sets("gan", 2 * STEPS), "run_dir": str(root / "from-one"), "resume": True},
    ]
    spec = root / "jobs.json"
    spec.write_text(json.dumps(jobs))
    result = torchrun(str(HERE / "ddp_worker.py"), str(spec))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def _state(run_dir: Path) -> dict:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["family_state"]


def _assert_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    ta, tb = dict(state_tensors(a)), dict(state_tensors(b))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.allclose(ta[key], tb[key], rtol=rtol, atol=atol), (
            f"{key}: max |diff| {(ta[key] - tb[key]).abs().max().item():.3g}")


def _assert_equal(a: dict, b: dict) -> None:
    ta, tb = dict(state_tensors(a)), dict(state_tensors(b))
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize("model", list(TINY))
def test_two_ranks_match_one_process_with_the_same_global_batch(runs, model):
    # Same global batch of 8, split 4 + 4 over two ranks: the weights, optimizer moments and every
    # buffer (BatchNorm statistics with sync_bn, the VQ codebook and its EMA counts, ActNorm's
    # data-dependent initialisation) after 3 steps equal the one-process run to float tolerance:
    # gradient sums are only reassociated across ranks.
    root, _ = runs
    _assert_close(_state(root / "single" / model), _state(root / "ddp" / model), rtol=1e-4, atol=1e-5)


def test_resume_on_two_ranks_is_exact(runs):
    root, _ = runs
    _assert_equal(_state(root / "straight"), _state(root / "halves"))
    assert checkpoint.load(root / "halves" / "checkpoints" / "last.pt")["step"] == 2 * STEPS


def test_single_process_checkpoint_resumes_on_two_ranks(runs):
    root, result = runs
    assert f"{root / 'from-one'} was trained on 1 rank(s), resuming on 2" in result.stderr
    _assert_close(_state(root / "single-long"), _state(root / "from-one"), rtol=1e-4, atol=1e-5)


def test_only_rank_zero_writes_and_logs_global_means(runs):
    root, _ = runs
    def train_lines(run):
        return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"train/' in s]

    lines = train_lines(root / "ddp" / "gan")
    assert [r["step"] for r in lines] == [1, 2, 3]  # one line per logged step, not one per rank
    single = train_lines(root / "single" / "gan")
    for a, b in zip(lines, single):  # losses are means over ranks: the one-process values
        assert a["train/d_loss"] == pytest.approx(b["train/d_loss"], rel=1e-4)


def test_periodic_eval_inside_a_ddp_run_is_sharded_and_rank_independent(runs):
    root, _ = runs

    def evals(run):
        return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"eval/fid"' in s]

    one, two = evals(root / "single" / "gan"), evals(root / "ddp" / "gan")
    assert [r["step"] for r in two] == [3] and len(one) == 1
    # the models agree to float tolerance (above), so their FIDs on the same 128 seeded samples do too
    assert two[0]["eval/fid"] == pytest.approx(one[0]["eval/fid"], rel=1e-3)
    assert two[0]["eval/kid_mean"] == pytest.approx(one[0]["eval/kid_mean"], rel=1e-2, abs=1e-4)


def test_two_rank_checkpoint_is_sampled_in_one_process(runs, tmp_path):
    from typer.testing import CliRunner

    from genlab.cli import app

    root, _ = runs
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(app, ["sample", str(root / "ddp" / "gan"), "-n", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and out.stat().st_size > 0


def test_distributed_eval_equals_single_process_eval(runs, tmp_path):
    from typer.testing import CliRunner

    from genlab.cli import app

    root, _ = runs
    run = root / "ddp" / "vae"  # sample metrics, an IWAE likelihood (stochastic) and reconstruction
    args = ["eval", str(run), "-n", "300", "--n-test", "200", "--batch-size", "64", "--seed", "5",
            "--metrics", "fid,kid,is,pr,dc", "--json", "--no-save"]
    one = CliRunner().invoke(app, args)
    assert one.exit_code == 0, one.output
    two = torchrun("-m", "genlab", *args)
    assert two.returncode == 0, two.stderr[-3000:]
    decode = json.JSONDecoder().raw_decode
    a = decode(one.output[one.output.index("{"):])[0]
    b = decode(two.stdout[two.stdout.index("{"):])[0]  # printed once, by rank 0
    assert two.stdout.count('"kind": "samples"') == 1
    assert a["metrics"].keys() == b["metrics"].keys() and {"fid", "nll_nats", "recon_mse"} <= a["metrics"].keys()
    for key, value in a["metrics"].items():
        assert b["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def _rank_pids(parent: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from /proc)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        rank = [e for e in env if e.startswith(b"RANK=")]
        if ppid == parent and rank:
            out[int(rank[0].split(b"=")[1])] = int(proc.name)
    return out


def test_a_rank_killed_mid_run_leaves_a_loadable_checkpoint_and_a_clear_error(tmp_path):
    run = tmp_path / "runs" / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "genlab",
           "train", "wgan-gp", "--dataset", "ring8", "--steps", "100000", "--out", str(tmp_path / "runs"),
           "--name", "killed", "--no-progress", "--set", "train.checkpoint_every=20", "--set", "train.log_every=20",
           "--set", "train.sample_every=100000", "--set", "gan.g_width=16", "--set", "gan.d_width=16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step-40.pt").exists():
            assert time.time() < deadline and proc.poll() is None, "training did not get going"
            time.sleep(0.2)
        pids = _rank_pids(proc.pid)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    survivor = [line for line in err.splitlines() if line.startswith("error: rank 0/2:")]
    assert survivor, err[-3000:]
    assert "lost contact with another rank" in survivor[0] or "SIGTERM" in survivor[0]
    assert "Traceback" not in "\n".join(ln for ln in err.splitlines() if "genlab" in ln and "site-packages" not in ln)
    ckpt = checkpoint.load(run / "checkpoints" / "last.pt")
    assert ckpt["step"] >= 40 and ckpt["step"] % 20 == 0 and ckpt["world_size"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]
    for v in (t for _, t in state_tensors(ckpt["family_state"])):
        assert math.isfinite(v.sum().item())


def test_exit_process_is_sys_exit_in_a_process_that_never_joined_a_group():
    """In-process callers (tests, notebooks) keep SystemExit; only torchrun ranks take os._exit, and
    every torchrun test above checks such a rank's exit code and complete output."""
    from genlab.parallel import exit_process

    with pytest.raises(SystemExit) as e:
        exit_process(3)
    assert e.value.code == 3


def test_sync_bn_is_made_of_differentiable_ops_where_a_module_is_differentiated_twice():
    """torch's SyncBatchNorm (CUDA) has a backward autograd cannot differentiate again; genlab's own
    is plain ops and differentiable all-reduces (its parity, second order included: unrolled-gan
    above). Only which class each case gets is checked here: nothing is moved to a GPU."""
    def norm(device: str, twice: bool) -> nn.Module:
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        return convert_sync_batchnorm(net, torch.device(device), twice)[1]

    assert type(norm("cuda", False)) is nn.SyncBatchNorm
    assert type(norm("cuda", True)) is ComposedSyncBatchNorm
    assert type(norm("cpu", False)) is ComposedSyncBatchNorm is type(norm("cpu", True))


@pytest.mark.parametrize("model, twice", [("gan", False), ("wgan-gp", True), ("unrolled-gan", True)])
def test_the_gan_asks_for_a_twice_differentiable_discriminator_when_it_needs_one(monkeypatch, model, twice):
    real, asked = gan.prepare_module, []

    def recording(module, train_cfg, device, twice_differentiable=False):
        asked.append(twice_differentiable)
        return real(module, train_cfg, device, twice_differentiable)

    monkeypatch.setattr(gan, "prepare_module", recording)
    cfg = C.resolve(model, sets=["gan.g_width=4", "gan.d_width=4"])
    build_family(cfg, DataInfo("mnist", "image", (1, 28, 28), 10), torch.device("cpu"))
    assert asked == [False, twice]  # G, then D
