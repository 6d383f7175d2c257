"""A run directory has one writer: names, the trainer's lock, and what is cleaned when it starts.

- `check_name(name)`: a run name is one path component (no separators, '.', '..', control
  characters or absolute paths), at most 100 characters.
- `RunLock(run_dir)`: an exclusive OS file lock (fcntl.flock on RUN_DIR/.genlab-lock) held by
  `genlab train` for the whole run. The kernel drops it when the process dies, so a kill -9 never
  leaves a stale lock that blocks `--resume`. A second trainer is refused with the holder's PID.
- `check_new(run_dir, overwrite)`: a new run refuses a directory that already holds files, unless
  `--overwrite` (then the old files are removed, never following a symlink out of the run).
- `clean_strays(run_dir)`: temp files of checkpoint writes that a kill interrupted are removed
  (they are never loaded: only the renamed file counts).
- `truncate_log(run_dir, step)`: on resume, metrics.jsonl keeps the lines up to the resumed step,
  so curves and `genlab compare` show the history the checkpoint continues, not the lost steps.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path

from .errors import ConfigError, RunError

LOCK_FILE = ".genlab-lock"
MAX_NAME = 100


def check_name(name: str) -> str:
    """`name` if it can name a run directory inside --out, else a one-line ConfigError."""
    if name in ("", ".", "..") or name.strip() != name:
        raise ConfigError(f"run name {name!r} is not a name (give a plain word, e.g. --name wgan-ring8)")
    if "/" in name or "\\" in name or os.path.isabs(name):
        raise ConfigError(f"run name {name!r} must not contain path separators (use --out DIR for the parent)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"run name {name!r} contains control characters")
    if len(name) > MAX_NAME:
        raise ConfigError(f"run name is {len(name)} characters long; the limit is {MAX_NAME}")
    return name


class RunLock:
    """The trainer's exclusive lock on a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunError(f"{self.path.parent} is being trained by {holder}; wait for it to finish, "
                           f"or train under another --name") from None
        f.seek(0)
        f.truncate()
        f.write(f"PID {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # an empty lock file: nobody holds it
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None


def check_new(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse (or, with overwrite, empty) a run directory that already holds files."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} exists and is not a directory")
    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if not held:
        return
    if not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise RunError(f"{run_dir} already holds a run ({shown}); use --resume {run_dir} to continue it, "
                       f"--overwrite to replace it, or another --name")
    for p in run_dir.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()  # a symlink is removed itself; what it points to is left alone


def remove_if_unused(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but the lock file (a run that never started)."""
    if run_dir.is_dir() and [p.name for p in run_dir.iterdir()] in ([], [LOCK_FILE]):
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
        run_dir.rmdir()


def clean_strays(run_dir: Path) -> list[str]:
    """Remove temp files of interrupted checkpoint writes (`.NAME.tmp-PID`); their names."""
    ckpts = run_dir / "checkpoints"
    gone = []
    if ckpts.is_dir():
        for p in ckpts.glob(".*.tmp*"):
            if p.is_file() and not p.is_symlink():
                p.unlink()
                gone.append(p.name)
    return gone


def truncate_log(run_dir: Path, step: int) -> int:
    """Drop metrics.jsonl lines logged after `step` (and a partial last line); how many were dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


_WRITE_ERRORS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def fs_message(e: OSError) -> str:
    """One line: what could not be written (or used) where, and why (permission, read-only, disk full)."""
    where = e.filename or "a file"
    extra = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    verb = "write" if e.errno in _WRITE_ERRORS else "use"
    return f"cannot {verb} {where}{extra}: {e.strerror or e}"


# Config keys a resumed run may change: how long and how it is run, logged, evaluated -- not what
# is trained on what (which the checkpoint's weights and optimizer state depend on).
RESUMABLE = ("train.steps", "train.log_every", "train.sample_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.grid_size", "train.threads", "train.compile", "train.channels_last",
             "train.sync_bn", "device", "eval.", "diagnose.", "description", "out", "name", "data.root", "resolved.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not k.endswith("_args"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_differences(saved: dict, now: dict) -> list[str]:
    """'key (saved X, now Y)' for every key that differs and that a resumed run may not change."""
    a, b = _flat(saved), _flat(now)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE):
            out.append(f"{key} (saved {a.get(key)!r}, now {b.get(key)!r})")
    return out
