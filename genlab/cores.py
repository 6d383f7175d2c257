"""Sharing the CPU cores between genlab trainers on one machine.

Two trainers that each take every core thrash (measured on 2 cores: two runs at 2 threads each fell
to 53 images/s against 327 at 1 thread each). So every `genlab train` registers itself while it runs
(`$GENLAB_CACHE/trainers/<pid>.lock`, an OS file lock that dies with the process), and with
`train.threads: 0` (the default) uses its share of the cores: cores // (trainers running), re-checked
every RECHECK_SECONDS of training, so a trainer that started alone gives cores back when another one
starts.
OMP_NUM_THREADS, when set, and a non-zero train.threads are taken as they are.
"""
from __future__ import annotations

import fcntl
import os
from .paths import cache_root


# By time, not per log step: thrashing steps are slow, so "at the next log step" can be minutes away
# (measured: a vqvae-prior run that started alone ran 1.4-1.5 s/step for its first 100 steps once a
# second trainer took a core, against 0.18 s/step at its share). A check costs one flock per trainer.
RECHECK_SECONDS = 5.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CoreShare:
    """This process's registration among the trainers of this machine (see the module docstring)."""

    def __init__(self, threads: int):
        self.fixed = threads or (int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit()
                                 else 0)
        self.dir = cache_root() / "trainers"
        self._file = None
        if not self.fixed:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._file = open(self.dir / f"{os.getpid()}.lock", "w")
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            except OSError:  # an unwritable cache: share nothing, use the cores as torch does
                self._file = None

    def others(self) -> int:
        """Other live trainers (their lock is held); dead ones' files are removed on the way."""
        if self._file is None:
            return 0
        alive = 0
        for p in self.dir.glob("*.lock"):
            if p.name == f"{os.getpid()}.lock":
                continue
            try:
                with open(p) as f:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                p.unlink(missing_ok=True)  # we got its lock: its trainer is gone
            except BlockingIOError:
                alive += 1
            except OSError:
                continue
        return alive

    def threads(self) -> int:
        """The intra-op threads to use now."""
        if self.fixed:
            return self.fixed
        return max(1, cores() // (self.others() + 1))

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            (self.dir / f"{os.getpid()}.lock").unlink(missing_ok=True)
            self._file = None


def describe(threads: int, others: int) -> str:
    return (f"{others} other genlab trainer(s) on this machine: using {threads} of {cores()} cores "
            f"(set train.threads to choose)")

