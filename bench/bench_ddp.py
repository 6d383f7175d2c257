"""Data-parallel throughput: images/s of `genlab train` in one process vs N ranks under torchrun.

Each configuration is a real `genlab train` run (bundled MNIST, the model's default nets, the global
batch fixed), launched the way a user would: `python -m genlab train ...` for one process and
`python -m torch.distributed.run --standalone --nproc_per_node=N -m genlab train ...` for N ranks.
images/s is read from the run's metrics.jsonl (global images per second of each log window, the
first window -- start-up and warm-up -- dropped), median over windows and repeats.

On a CPU machine the ranks share the cores: 1 process x T threads vs T ranks x 1 thread shows what
DDP costs (gloo all-reduces, one copy of the model per rank), not a speed-up. On a GPU machine,
`--device cuda` puts one rank on each GPU (nccl).

    python bench/bench_ddp.py [--models gan,vae] [--steps 120] [--repeats 2] [--ranks 2]
    python bench/bench_ddp.py --device cuda --ranks 8 --batch-size 512     # on a GPU node
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(model: str, ranks: int, threads: int, args, out: Path) -> list[float]:
    name = f"{model}-r{ranks}-t{threads}"
    log_every = max(1, args.steps // 6)
    train = ["-m", "genlab", "train", model, "--steps", str(args.steps), "--out", str(out), "--name", name,
             "--no-progress", "--device", args.device, "--batch-size", str(args.batch_size),
             "--set", f"train.log_every={log_every}", "--set", f"train.sample_every={10 * args.steps}",
             "--set", f"train.checkpoint_every={10 * args.steps}", "--set", f"train.threads={threads}"]
    launcher = ([sys.executable] if ranks == 1 and not args.torchrun_for_one else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run([*launcher, *train], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr[-2000:]}")
    lines = [json.loads(s) for s in (out / name / "metrics.jsonl").read_text().splitlines()]
    return [r["train/images_per_sec"] for r in lines if "train/images_per_sec" in r][1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gan,vae")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (train.batch_size)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--torchrun-for-one", action="store_true", help="launch the 1-rank run under torchrun too")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    if args.device == "cpu":
        # the same cores either way: one process using them all, or one rank per core group
        configs = [(1, cores), (1, max(1, cores // args.ranks)), (args.ranks, max(1, cores // args.ranks))]
    else:
        configs = [(1, 1), (args.ranks, 1)]
    print(f"{cores} CPU cores, device {args.device}, global batch {args.batch_size}, {args.steps} steps, "
          f"{args.repeats} repeats")
    print(f"{'model':<10} {'ranks x threads':>16} {'images/s (median)':>18} {'vs 1 process':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            base = None
            for ranks, threads in configs:
                windows = []
                for r in range(args.repeats):
                    windows += run_once(model, ranks, threads, args, Path(tmp) / f"rep{r}")
                ips = statistics.median(windows)
                base = base or ips  # the first configuration: one process
                ratio = f"{ips / base:.2f}x"
                print(f"{model:<10} {f'{ranks} x {threads}':>16} {ips:>18.1f} {ratio:>13}", flush=True)


if __name__ == "__main__":
    main()
