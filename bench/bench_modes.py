"""Mode-collapse benchmark on the 2-D mixtures: gan and wgan-gp on ring8 and grid25, several seeds.

    .venv/bin/python bench/bench_modes.py                      # 2 models x 2 datasets x 5 seeds
    .venv/bin/python bench/bench_modes.py --seeds 2 --models wgan-gp --datasets ring8 --set train.steps=2000

Each run goes through genlab.train.Trainer with the model's config plus the toy-data overrides
below (printed), then 2,500 points are sampled (EMA weights, a fixed seed per run) and scored with
the PacGAN protocol (genlab.eval.modes.mixture_metrics: modes captured, % high quality = within
3 std of the nearest centre, reverse KL). Means and population stds over seeds are printed beside
the published rows (PacGAN, Lin et al. 2018, Tables 1-2; GDPP, Elfeki et al. 2019, Tables 1 and 3;
VEEGAN, Srivastava et al. 2017, Table 1). A perfect sampler scores 98.9% HQ, not 100%
(P(chi2_2 <= 9)); published HQ numbers use the same 3-std rule.

Runs use one CPU thread each (--threads) and write their run directories under a temporary
directory (removed at the end; kept with --out DIR); --jobs N runs N of them at once in separate processes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from genlab import config as C
from genlab.data import MIXTURE_STD, mixture_centres
from genlab.eval.modes import chi2_2d_within, mixture_metrics
from genlab.train import Trainer

# Overrides for 2-D toy data (the shipped configs are tuned for MNIST: MLP width 32, a 100-d latent,
# a gradient penalty of 10). Found by measurement (docs/diagnostics.md): a 2-D latent, width 128,
# and for WGAN-GP a gradient penalty of 0.1 (as in the WGAN-GP authors' own toy code), Adam 2e-4
# with betas (0.5, 0.9), and an EMA of the generator weights -- the raw generator jitters around the
# modes by more than the 0.01 std of ring8, the average does not. The GAN keeps its DCGAN optimiser.
TOY_SETS = {
    "gan": ["gan.latent_dim=2", "gan.g_width=128", "gan.d_width=128", "train.steps=5000"],
    "wgan-gp": ["gan.latent_dim=2", "gan.g_width=128", "gan.d_width=128",
                "gan.regularizers=[{name: gradient_penalty, weight: 0.1}]",
                "gan.g_optim.lr=0.0002", "gan.d_optim.lr=0.0002",
                "gan.g_optim.betas=[0.5,0.9]", "gan.d_optim.betas=[0.5,0.9]",
                "train.ema_decay=0.999", "train.steps=5000"],
}
QUIET = ["train.log_every=1000000", "train.sample_every=1000000", "train.checkpoint_every=1000000", "device=cpu"]
N_EVAL = 2500
EVAL_SEED = 20_000  # sampling seed of run s is EVAL_SEED + s

# Published rows: (ring8 modes, HQ%), (grid25 modes, HQ%), source (the papers' tables)
PUBLISHED = [
    ("GAN", (6.3, 98.2), (17.3, 94.8), "PacGAN Tables 1-2"),
    ("PacGAN2", (7.9, 95.6), (23.8, 91.3), "PacGAN"),
    ("WGAN-GP", (6.8, 59.6), (24.2, 28.7), "GDPP Tables 1, 3"),
    ("GDPP", (8.0, 71.7), (24.8, 68.5), "GDPP"),
    ("VEEGAN", (8, 52.9), (24.6, 40), "VEEGAN"),
    ("Unrolled GAN", (7.6, 35.6), (23.6, 16), "VEEGAN"),
]


def run_one(model: str, dataset: str, seed: int, out: Path, threads: int, extra: list[str]) -> dict:
    torch.set_num_threads(threads)
    sets = TOY_SETS[model] + QUIET + [f"data.name={dataset}", f"seed={seed}", f"train.threads={threads}",
                                      f"out={out}", f"name={model}-{dataset}-s{seed}"] + extra
    cfg = C.resolve(model, sets=sets)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, out / cfg.name, show_progress=False)
    trainer.run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with trainer.sampling_context():
        x = trainer.family.sample(N_EVAL, torch.Generator().manual_seed(EVAL_SEED + seed))
    m = mixture_metrics(x, mixture_centres(dataset), MIXTURE_STD[dataset])
    return {**m, "seconds": seconds, "cpu_seconds": cpu, "steps": cfg.train.steps, "model": model, "dataset": dataset, "seed": seed}


def _run_star(job: tuple) -> dict:
    return run_one(*job)


def _report(r: dict, results: dict) -> None:
    results.setdefault((r["model"], r["dataset"]), []).append(r)
    print(f"{r['model']:<8} {r['dataset']:<7} seed {r['seed']}: {r['modes']:>2}/{r['num_modes']} modes, "
          f"HQ {100 * r['hq_rate']:5.1f}%, reverse KL {r['reverse_kl']:.3f}, "
          f"{r['steps']} steps in {r['seconds']:.0f}s ({r['cpu_seconds']:.0f}s CPU)", flush=True)


def _ms(values: list[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:{fmt}}±{std:{fmt}}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--models", default="gan,wgan-gp")
    p.add_argument("--datasets", default="ring8,grid25")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    p.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models, datasets = args.models.split(","), args.datasets.split(",")
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench-modes-")
    out = args.out or Path(tmp.name)
    print("toy-data overrides (on top of configs/<model>.yaml):")
    for m in models:
        print(f"  {m}: {' '.join(TOY_SETS[m] + args.sets)}")
    print(f"evaluation: {N_EVAL} samples per run, HQ = within 3 std (perfect sampler: "
          f"{100 * chi2_2d_within(3):.1f}%), {args.seeds} seeds, {args.threads} thread(s)\n", flush=True)
    results: dict = {}
    t_all = time.perf_counter()
    jobs = [(m, d, s, out, args.threads, args.sets) for m in models for d in datasets for s in range(args.seeds)]
    if args.jobs > 1:  # independent runs in parallel processes, `threads` each
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for r in pool.imap(_run_star, jobs):
                _report(r, results)
            pool.close()
            pool.join()
    else:
        for r in map(_run_star, jobs):
            _report(r, results)
    cpu = sum(r["cpu_seconds"] for rs in results.values() for r in rs)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s wall, {cpu:.0f}s CPU in the runs "
          f"({args.jobs} job(s) x {args.threads} thread(s))\n")
    head = "| method | " + " | ".join(f"{d} modes / HQ%" for d in datasets) + " | source |"
    print(head)
    print("|" + "---|" * (len(datasets) + 2))
    for model in models:
        cells = []
        for ds in datasets:
            rs = results[(model, ds)]
            cells.append(f"{_ms([r['modes'] for r in rs], '.1f')} / {_ms([100 * r['hq_rate'] for r in rs], '.1f')}")
        print(f"| genlab {model} | " + " | ".join(cells) + f" | this bench, {args.seeds} seeds |")
    for name, ring, grid, src in PUBLISHED:
        cols = {"ring8": f"{ring[0]} / {ring[1]}", "grid25": f"{grid[0]} / {grid[1]}"}
        print(f"| {name} | " + " | ".join(cols.get(d, "-") for d in datasets) + f" | {src} |")
    if tmp is None:
        print(f"\nrun directories: {out}", file=sys.stderr)
    else:
        tmp.cleanup()


if __name__ == "__main__":
    main()
