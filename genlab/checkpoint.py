"""Checkpoints: written atomically, read with `weights_only=True`, validated before use.

A checkpoint is a plain dict of tensors and Python primitives (so the safe unpickler accepts it):
    format, version, model, family, step, config, family_state, ema, rng, sampler, wall_time
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .errors import CheckpointError

FORMAT = "genlab-checkpoint"
VERSION = 1


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path: str | Path, model: str | None = None) -> dict:
    """Load and validate a genlab checkpoint; `model` (if given) must match the one saved."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or containing arbitrary objects
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or not a genlab checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a genlab checkpoint (no '{FORMAT}' header)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer genlab (format v{ckpt['version']})")
    if model is not None and ckpt.get("model") != model:
        raise CheckpointError(f"{path} belongs to model {ckpt.get('model')!r}, not {model!r}")
    return ckpt


def resolve(run_dir: str | Path, which: str = "last") -> Path:
    """'last' | 'best' | 'step-N' | a path -> the checkpoint file in RUN_DIR/checkpoints."""
    candidate = Path(which)
    if candidate.suffix == ".pt" and candidate.is_file():
        return candidate
    if not re.fullmatch(r"last|best|step-\d+", which):
        raise CheckpointError(f"--checkpoint must be last, best or step-N, got {which!r}")
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(run_dir) / "checkpoints").glob("*.pt"))
        raise CheckpointError(f"no checkpoint {which!r} in {run_dir} (have: {', '.join(have) or 'none'})")
    return path


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep only the `keep` newest step-N.pt files (last.pt and best.pt are never pruned)."""
    steps = sorted(ckpt_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    for old in steps[: max(0, len(steps) - keep)]:
        old.unlink()
