"""Records written by evaluate, diagnose and the evaluator trainer: timestamps, JSON encoding, and
atomic, serialised writes.

`append_record(path, record)` adds one record to a JSON list under an exclusive OS lock on a sidecar
file (`.<name>.lock`, fcntl), through a unique temp file in the same directory and an atomic rename:
N concurrent writers keep all N records, and a reader never sees a partial file. The lock dies with
its process, so a killed writer never blocks the next one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import GenlabError


def now() -> str:
    """UTC timestamp to the second, ISO 8601 (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def json_default(o):
    """json.dumps default= for tensors and paths."""
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finite(o: Any) -> Any:
    """Non-finite floats -> "inf" / "nan" strings (as metrics.jsonl does), so files are strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def dumps(obj: Any) -> str:
    return json.dumps(finite(obj), indent=2, default=json_default) + "\n"


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON to `path` via a unique temp file + rename (the old file stays whole until then)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(obj))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def locked(path: str | Path):
    """An exclusive OS lock tied to `path` (on the sidecar `.<name>.lock`), released on exit or death."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_records(path: str | Path) -> list[dict]:
    """The JSON list of records in `path` ([] when absent); a damaged file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GenlabError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); move it away to start afresh") from None
    if isinstance(records, dict):  # a single record (older diagnostics.json files held one)
        records = [records]
    if not isinstance(records, list):
        raise GenlabError(f"{path} should hold a JSON list of records")
    return records


def append_record(path: str | Path, record: dict) -> Path:
    """Append `record` to the JSON list in `path` (newest last), serialised with other writers."""
    path = Path(path)
    with locked(path):
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a writer killed before its rename
            stale.unlink(missing_ok=True)  # (we hold the lock: no live writer owns one)
        return write_json_atomic(path, read_records(path) + [record])
