"""Faults injected for real: a second trainer on a locked run, a trainer killed with SIGKILL, many
processes appending records at once, a checkpoint write killed before its rename, a full disk and a
read-only file system."""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from genlab import checkpoint, records
from genlab import config as C
from genlab.cli import main
from genlab.errors import RunError
from genlab.train import Trainer

TOY = ["data.name=ring8", "gan.g_width=8", "gan.d_width=8", "data.n_points=200", "train.batch_size=8",
       "train.log_every=1", "train.sample_every=1000"]


def _cfg(tmp_path, name, steps, *extra):
    return C.resolve("wgan-gp", sets=[*TOY, f"train.steps={steps}", f"out={tmp_path}", f"name={name}", *extra])


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_second_trainer_is_refused_and_a_killed_trainer_leaves_no_stale_lock(tmp_path, capsys):
    run = tmp_path / "live"
    cmd = [sys.executable, "-m", "genlab", "train", "wgan-gp", "--steps", "1000000", "--out", str(tmp_path),
           "--name", "live", "--no-progress", *[x for s in TOY + ["train.checkpoint_every=10"] for x in ("--set", s)]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 90
        while not (run / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "the first trainer did not start"
            time.sleep(0.1)
        msg = _one_line_error(capsys, ["train", "wgan-gp", "--resume", str(run), "--no-progress"])
        assert f"is being trained by PID {proc.pid}" in msg
        assert "already holds a run" in _one_line_error(
            capsys, ["train", "wgan-gp", "--out", str(tmp_path), "--name", "live"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    cfg = C.resolve("wgan-gp", sets=[*TOY, f"train.steps={step + 3}", "train.checkpoint_every=10"])
    result = Trainer(cfg, run, resume=True, show_progress=False).run()  # at once: the kernel dropped the lock
    assert result["step"] == step + 3


def _append_many(path, worker, count):
    for i in range(count):
        records.append_record(path, {"worker": worker, "i": i})


def test_concurrent_appends_keep_every_record(tmp_path):
    path = tmp_path / "eval.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 10)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    got = json.loads(path.read_text())
    assert sorted((r["worker"], r["i"]) for r in got) == [(w, i) for w in range(8) for i in range(10)]
    assert not list(tmp_path.glob(".eval.json.*.tmp")), "no temp file left"


def test_a_record_writer_killed_before_its_rename_leaves_the_file_whole(tmp_path):
    path = tmp_path / "eval.json"
    records.append_record(path, {"n": 1})
    (tmp_path / ".eval.json.abc123.tmp").write_text('[{"n": 1}, {"n": 2')  # what a kill -9 leaves
    assert records.read_records(path) == [{"n": 1}]  # readers never see the partial temp
    records.append_record(path, {"n": 3})
    assert records.read_records(path) == [{"n": 1}, {"n": 3}]
    assert not list(tmp_path.glob(".eval.json.*.tmp")), "the stale temp is removed under the lock"


def test_a_checkpoint_write_killed_before_its_rename(tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", 4, "train.checkpoint_every=2"), run, show_progress=False).run()
    stray = run / "checkpoints" / ".last.pt.tmp-424242"  # a kill between the temp write and the rename
    stray.write_bytes(b"half a checkpoint")
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 4  # the previous one still loads
    result = Trainer(_cfg(tmp_path, "r", 6, "train.checkpoint_every=2"), run, resume=True, show_progress=False).run()
    assert result["step"] == 6 and not stray.exists(), "the stray temp file is removed on resume"


def test_resume_drops_log_lines_of_the_lost_steps(tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", 4, "train.checkpoint_every=2"), run, show_progress=False).run()
    log = run / "metrics.jsonl"
    ckpt = run / "checkpoints"
    (ckpt / "last.pt").unlink()
    (ckpt / "step-2.pt").rename(ckpt / "last.pt")  # as if killed after step 4 was logged, before it was saved
    with open(log, "a") as f:
        f.write('{"step": 5, "train/d_lo')  # and mid-line
    Trainer(_cfg(tmp_path, "r", 4, "train.checkpoint_every=2"), run, resume=True, show_progress=False).run()
    recs = [json.loads(s) for s in log.read_text().splitlines()]
    steps = [r["step"] for r in recs if any(k.startswith("train/") for k in r)]
    assert steps == [1, 2, 3, 4], "steps 3 and 4 appear once, from the resumed run"
    # a 2-D run is also diagnosed at its last step: that line too comes once, from the resumed run
    assert [r["step"] for r in recs if any(k.startswith("diagnose/") for k in r)] == [4]


def _raise_oserror(code, text):
    def fail(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, os.PathLike))), "checkpoints/last.pt")
        raise OSError(code, text, str(path))
    return fail


def test_disk_full_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", 2, "train.checkpoint_every=2"), run, show_progress=False).run()
    monkeypatch.setattr(torch, "save", _raise_oserror(errno.ENOSPC, "No space left on device"))
    msg = _one_line_error(capsys, ["train", "wgan-gp", "--resume", str(run), "--steps", "4", "--no-progress",
                                   "--set", "train.checkpoint_every=1"])
    assert "No space left on device" in msg and "stopped at step 3" in msg and "is intact" in msg
    monkeypatch.undo()
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp" in p.name]


def test_read_only_file_system_on_eval_still_prints_the_figures(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", 2), run, show_progress=False).run()
    monkeypatch.setattr(records, "write_json_atomic", _raise_oserror(errno.EROFS, "Read-only file system"))
    with pytest.raises(SystemExit) as exit_:
        main(["diagnose", str(run), "-n", "200"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "Read-only file system" in err and len(err.strip().splitlines()) == 1


def test_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("genlab.rundir.RunLock.acquire", _raise_oserror(errno.EACCES, "Permission denied"))
    msg = _one_line_error(capsys, ["train", "wgan-gp", "--out", str(tmp_path), "--name", "x", "--no-progress",
                                   *[x for s in TOY for x in ("--set", s)]])
    assert "Permission denied" in msg
    assert not (tmp_path / "x").exists()


def test_resume_refuses_a_changed_architecture_naming_the_keys(tmp_path):
    run = tmp_path / "r"
    Trainer(_cfg(tmp_path, "r", 2), run, show_progress=False).run()
    with pytest.raises(C.ConfigError, match=r"gan\.g_width \(saved 8, now 16\)"):
        Trainer(_cfg(tmp_path, "r", 4, "gan.g_width=16"), run, resume=True, show_progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        Trainer(_cfg(tmp_path, "r", 4), run, show_progress=False)
    Trainer(_cfg(tmp_path, "r", 3), run, show_progress=False, overwrite=True).run()  # --overwrite replaces it
    assert checkpoint.load(run / "checkpoints" / "last.pt")["step"] == 3


def test_co_running_trainers_share_the_cores(tmp_path, monkeypatch):
    """A trainer with train.threads 0 takes cores // (trainers running): another live trainer halves
    its share, and the share comes back when that trainer is gone (even killed with SIGKILL)."""
    from genlab import cores

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "cores", lambda: 4)
    code = ("import time; from genlab.cores import CoreShare; c = CoreShare(0); print('ready', flush=True); "
            "time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "GENLAB_CACHE": str(tmp_path)})
    try:
        assert other.stdout.readline().strip() == "ready"
        me = cores.CoreShare(0)
        assert me.others() == 1 and me.threads() == 2
        assert cores.CoreShare(3).threads() == 3  # a fixed train.threads is used as it is
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=30)
        assert me.others() == 0 and me.threads() == 4
        me.release()
    finally:
        if other.poll() is None:
            other.kill()


def test_a_running_trainer_gives_cores_back_between_log_steps(tmp_path, monkeypatch, tiny_sets):
    """A trainer that started alone halves its threads soon after a second trainer starts, by time
    (cores.RECHECK_SECONDS, 0 here), not at its next log step (never, here: log_every > steps)."""
    from genlab import cores

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "cores", lambda: 2)
    monkeypatch.setattr("genlab.train.RECHECK_SECONDS", 0.0)
    cfg = C.resolve("gan", sets=tiny_sets + ["train.steps=4", "train.log_every=100", f"out={tmp_path}", "name=r"])
    trainer = Trainer(cfg, tmp_path / "r", show_progress=False)
    code = "import time; from genlab.cores import CoreShare; c = CoreShare(0); print('ready', flush=True); time.sleep(60)"
    other, seen, step = None, [], trainer.family.train_step

    def watched(batch, k):
        nonlocal other
        seen.append(torch.get_num_threads())
        if k == 2:  # another trainer starts while this one runs
            other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "GENLAB_CACHE": str(tmp_path)})
            assert other.stdout.readline().strip() == "ready"
        return step(batch, k)

    trainer.family.train_step = watched
    try:
        trainer.run()
    finally:
        torch.set_num_threads(1)  # conftest's setting, for the tests after this one
        if other is not None:
            other.kill()
    assert seen[:2] == [2, 2] and seen[-1] == 1, seen
