"""kill -9 trials: `genlab train` killed at random moments, during training steps and during
checkpoint writes, then resumed with `--resume`; prints what survived.

    python bench/kill_trials.py [--trials 20] [--steps 24] [--seed 0]

Every trial trains a fresh run (gan on bundled MNIST, DCGAN nets: checkpoints of a few MB, so a
write takes long enough to be caught), kills it with SIGKILL -- half the trials at a random moment
after the first checkpoint, half the moment a checkpoint temp file appears (a write in progress) --
then checks that last.pt loads, resumes the run to the end in a new process, and compares the final
checkpoint with an uninterrupted run of the same config, tensor by tensor. Printed: kills, kills that
landed during a checkpoint write, corrupt checkpoints (must be 0), resumes that finished, bit-exact
resumes, stray temp files left after the resume (must be 0). One thread per process, so results are
reproducible across processes.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETS = ["gan.g_width=32", "gan.d_width=32", "train.batch_size=32", "train.log_every=1", "train.sample_every=1000",
        "train.checkpoint_every=2", "train.keep_checkpoints=1", "train.threads=1"]


def _train(out: Path, name: str, steps: int, resume: bool = False) -> subprocess.Popen:
    args = ["--resume", str(out / name)] if resume else ["--out", str(out), "--name", name]
    cmd = [sys.executable, "-m", "genlab", "train", "gan", "--steps", str(steps), "--no-progress", *args,
           *[x for s in SETS for x in ("--set", s)]]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _state(path: Path) -> dict:
    from genlab import checkpoint

    ckpt = checkpoint.load(path)
    return {k: ckpt[k] for k in ("family_state", "rng", "sampler", "step")}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def trial(out: Path, name: str, steps: int, during_write: bool, rng: random.Random) -> dict:
    from genlab import checkpoint
    from genlab.errors import CheckpointError

    ckpts = out / name / "checkpoints"
    proc = _train(out, name, steps)
    deadline = time.time() + 300
    while not (ckpts / "last.pt").exists():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{name}: training did not start: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.01)
    wrote = False
    if during_write:  # kill the moment a checkpoint write is in progress
        while proc.poll() is None and time.time() < deadline:
            if any(".tmp" in p.name for p in ckpts.iterdir()):
                wrote = True
                break
            time.sleep(0.0005)
    else:
        time.sleep(rng.uniform(0.0, 1.5))
        wrote = any(".tmp" in p.name for p in ckpts.iterdir())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    try:
        checkpoint.load(ckpts / "last.pt")
        corrupt = False
    except CheckpointError:
        corrupt = True
    resumed = _train(out, name, steps, resume=True)
    resumed.wait()
    finished = resumed.returncode == 0
    strays = [p.name for p in ckpts.iterdir() if ".tmp" in p.name]
    return {"killed": killed, "during_write": wrote, "corrupt": corrupt, "finished": finished,
            "strays": len(strays), "final": ckpts / "last.pt"}


def run(trials: int = 20, steps: int = 24, seed: int = 0, out: Path | None = None) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out or tmp)
        ref = _train(out, "reference", steps)
        if ref.wait() != 0:
            raise SystemExit(f"reference run failed: {ref.stderr.read().decode()[-500:]}")
        reference = _state(out / "reference" / "checkpoints" / "last.pt")
        rows = []
        for i in range(trials):
            r = trial(out, f"trial-{i}", steps, during_write=i % 2 == 1, rng=rng)
            r["exact"] = r["finished"] and _equal(_state(r["final"]), reference)
            rows.append(r)
            print(f"trial {i:2d}: killed {r['killed']}, during a checkpoint write {r['during_write']}, corrupt "
                  f"{r['corrupt']}, resume finished {r['finished']}, bit-exact {r['exact']}, strays {r['strays']}",
                  flush=True)
    summary = {"kills": sum(r["killed"] for r in rows), "during_checkpoint_writes": sum(r["during_write"] for r in rows),
               "corrupt_checkpoints": sum(r["corrupt"] for r in rows), "resumes_finished": sum(r["finished"] for r in rows),
               "bit_exact_resumes": sum(r["exact"] for r in rows), "stray_temp_files": sum(r["strays"] for r in rows)}
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    run(a.trials, a.steps, a.seed)
