"""Runs under torchrun for tests/test_ddp.py: a JSON list of training jobs in one process group.

Each job is {"model": ..., "sets": [...], "run_dir": ..., "resume": bool}; the trainer is the
ordinary one, so what is tested is genlab's own data-parallel path (gloo, one thread per rank)."""
import json
import sys

import torch

from genlab import config as C
from genlab import parallel
from genlab.train import Trainer


def main(path: str) -> None:
    torch.set_num_threads(1)
    for job in json.loads(open(path).read()):
        cfg = C.resolve(job["model"], sets=job["sets"])
        Trainer(cfg, job["run_dir"], resume=job.get("resume", False), show_progress=False).run()
    parallel.exit_process(0)  # as the CLI ends a rank


if __name__ == "__main__":
    main(sys.argv[1])
