"""Who am I among the ranks, and which device is mine.

`setup(device)` is idempotent and cheap in a single process (it only picks the device). Under torchrun
it reads RANK / WORLD_SIZE / LOCAL_RANK, joins the default process group once (nccl when this rank
uses CUDA, gloo on CPU) and turns SIGTERM -- what torchrun sends the surviving ranks when one fails --
into an exception, so that `finally` blocks run and no rank leaves a temp file behind.

A rank that joined a process group ends with `exit_process(code)`, not a normal interpreter exit:
with gloo, 2 of 60 exits on a loaded machine aborted ("terminate called without an active exception",
SIGABRT, no Python frame on the stack) after the command had finished and printed its result -- C++
teardown during interpreter finalisation, after destroy_process_group. `os._exit` skips finalisation.
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import GenlabError, RunError


class DistributedError(GenlabError):
    """A rank lost its peers (one crashed or was killed) or the launch environment is inconsistent."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def tag(self) -> str:
        """'rank 1/4: ' under torchrun, '' in one process (prefix of user-facing messages)."""
        return f"rank {self.rank}/{self.size}: " if self.distributed else ""


_WORLD = World()
_JOINED = False  # this process joined a process group at some point (see exit_process)


def world() -> World:
    return _WORLD


def is_main() -> bool:
    return _WORLD.main


def from_env() -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process when unset."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not any(k in os.environ for k in keys):
        return World()
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise DistributedError("RANK and WORLD_SIZE must both be set to integers (as torchrun sets them); "
                               f"got RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}") from None
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        raise DistributedError(f"inconsistent launch environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local}")
    return World(rank, size, local)


def device_for(name: str, w: World | None = None) -> torch.device:
    """--device auto | cpu | cuda | cuda:N, per rank: under torchrun `cuda` means this rank's GPU
    (LOCAL_RANK picks it) and `cuda:N` is refused, since it would put every rank on one GPU."""
    w = w or _WORLD
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise RunError(f"--device {name!r}: genlab runs on cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError("--device cuda was asked for but CUDA is not available on this machine")
        if w.distributed:
            if dev.index is not None:
                raise RunError(f"--device {name} names one GPU for every rank; under torchrun use --device cuda "
                               f"(LOCAL_RANK picks each rank's GPU)")
            dev = torch.device("cuda", w.local_rank)
        if (dev.index or 0) >= torch.cuda.device_count():
            raise RunError(f"--device {dev}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def setup(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun (once per process); return this rank's device."""
    global _WORLD, _JOINED
    w = from_env()
    dev = device_for(device, w)
    if w.distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=w.rank, world_size=w.size, timeout=timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        _JOINED = True
        signal.signal(signal.SIGTERM, _terminated)
    if w.distributed and dist.is_initialized() and dist.get_world_size() != w.size:
        raise DistributedError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {w.size}")
    _WORLD = w
    return dev


def _terminated(signum, frame):
    raise DistributedError("stopped by SIGTERM (another rank failed, or the job was cancelled)")


def exit_process(code: int) -> None:
    """End the process with `code`. In one process: sys.exit. In a torchrun rank that joined a process
    group: leave it, flush what Python buffers, then os._exit -- every file genlab writes is closed (or
    replaced atomically) before its command returns, so finalisation has nothing left to save."""
    if not _JOINED:
        sys.exit(code)
    shutdown()
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(code)


def shutdown() -> None:
    """Leave the process group (end of a command); a no-op in one process."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
