"""Mode-collapse benchmark on the 2-D mixtures: every model with a ring8 / grid25 config, 10 seeds.

    .venv/bin/python bench/bench_modes.py                      # the PacGAN / VEEGAN tables, all models
    .venv/bin/python bench/bench_modes.py --models pacgan2,gan --datasets grid25 --seeds 3 --jobs 2
    .venv/bin/python bench/bench_modes.py --seeds 2 --models wgan-gp --set train.steps=2000

The models are discovered, not listed: every configs/<model>.yaml with a `datasets: ring8:` or
`grid25:` section takes part (GAN variants and remedies, ddpm, flow-matching, ...), trained with the
shipped config -- the model file, its dataset section, then any --set (printed at the start). Each
run goes through genlab.train.Trainer; then 2,500 points are sampled (EMA weights where the config
keeps an EMA, a fixed seed per run) and scored with the PacGAN protocol (genlab.eval.modes.
mixture_metrics: modes captured, % high quality = within 3 std of the nearest centre, reverse KL).
Means and population stds over seeds are printed beside the published rows (PacGAN, Lin et al.
2018, Tables 1-2; GDPP, Elfeki et al. 2019, Tables 1 and 3; VEEGAN, Srivastava et al. 2017,
Table 1). A perfect sampler scores 98.9% HQ, not 100% (P(chi2_2 <= 9)); the papers use the same rule.

Runs are independent processes with one CPU thread each (--threads), --jobs at a time (default: the
number of cores); run directories go to a temporary directory (removed at the end; kept with --out
DIR, which also receives results.json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from genlab import config as C
from genlab.cores import cores
from genlab.data import MIXTURE_STD, mixture_centres
from genlab.eval.modes import chi2_2d_within, mixture_metrics
from genlab.registry import available

TOY = ("ring8", "grid25")
QUIET = ["train.log_every=1000000", "train.sample_every=0", "train.checkpoint_every=0", "device=cpu"]
N_EVAL = 2500
EVAL_SEED = 20_000  # sampling seed of run s is EVAL_SEED + s

# Published rows: (ring8 modes, HQ%), (grid25 modes, HQ%), source (the papers' tables)
PUBLISHED = [
    ("GAN", (6.3, 98.2), (17.3, 94.8), "PacGAN Tables 1-2"),
    ("PacGAN2", (7.9, 95.6), (23.8, 91.3), "PacGAN Tables 1-2"),
    ("PacGAN4", (7.8, 95.9), (24.8, 93.6), "PacGAN Tables 1-2"),
    ("WGAN-GP", (6.8, 59.6), (24.2, 28.7), "GDPP Tables 1, 3"),
    ("GDPP", (8.0, 71.7), (24.8, 68.5), "GDPP"),
    ("VEEGAN", (8, 52.9), (24.6, 40), "VEEGAN"),
    ("Unrolled GAN", (7.6, 35.6), (23.6, 16), "VEEGAN"),
]


def toy_models() -> dict[str, list[str]]:
    """{model: the toy datasets its config has a section for}, for every registered model."""
    out = {}
    for model in available("model"):
        sections = C.model_layer(model).get("datasets") or {}
        have = [d for d in TOY if d in sections]
        if have:
            out[model] = have
    return out


def run_one(model: str, dataset: str, seed: int, out: Path, threads: int, extra: list[str]) -> dict:
    from genlab.train import Trainer  # in the worker process

    torch.set_num_threads(threads)
    sets = QUIET + [f"data.name={dataset}", f"seed={seed}", f"train.threads={threads}",
                    f"out={out}", f"name={model}-{dataset}-s{seed}"] + extra
    cfg = C.resolve(model, sets=sets)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out / cfg.name, show_progress=False)
    trainer.run()
    with trainer.sampling_context():
        x = trainer.family.sample(N_EVAL, torch.Generator().manual_seed(EVAL_SEED + seed))
    m = mixture_metrics(x, mixture_centres(dataset), MIXTURE_STD[dataset])
    return {**m, "seconds": time.perf_counter() - t0, "steps": cfg.train.steps, "model": model,
            "dataset": dataset, "seed": seed}


def _run_star(job: tuple) -> dict:
    return run_one(*job)


def _report(r: dict) -> None:
    print(f"{r['model']:<14} {r['dataset']:<7} seed {r['seed']}: {r['modes']:>2}/{r['num_modes']} modes, "
          f"HQ {100 * r['hq_rate']:5.1f}%, reverse KL {r['reverse_kl']:.3f} ({r['steps']} steps)", flush=True)


def _ms(values: list[float], fmt: str) -> str:
    values = [float(v) for v in values]  # pstdev refuses a mix of ints and floats
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{fmt}} ± {std:{fmt}}"


def table(results: dict, models: list[str], datasets: list[str], seeds: int) -> str:
    """Markdown: genlab rows (mean ± std over seeds: modes / HQ%, and reverse KL), then the published rows."""
    head = ("| method | " + " | ".join(f"{d} modes / HQ% | {d} KL" for d in datasets) + " | source |\n"
            + "|" + "---|" * (2 * len(datasets) + 2) + "\n")
    rows = []
    for model in models:
        cells = []
        for ds in datasets:
            rs = results.get((model, ds))
            if not rs:
                cells += ["-", "-"]
                continue
            cells += [f"{_ms([r['modes'] for r in rs], '.1f')} / {_ms([100 * r['hq_rate'] for r in rs], '.1f')}",
                      _ms([r["reverse_kl"] for r in rs], ".3f")]
        rows.append(f"| genlab {model} | " + " | ".join(cells) + f" | this bench, {seeds} seeds |")
    for name, ring, grid, src in PUBLISHED:
        cols = {"ring8": f"{ring[0]} / {ring[1]}", "grid25": f"{grid[0]} / {grid[1]}"}
        rows.append(f"| {name} | " + " | ".join(f"{cols.get(d, '-')} | -" for d in datasets) + f" | {src} |")
    return head + "\n".join(rows)


def _describe(model: str, datasets: list[str], extra: list[str]) -> str:
    sections = C.model_layer(model).get("datasets") or {}
    text = "; ".join(f"{d}: {yaml.safe_dump(sections[d], default_flow_style=True, width=10**6).strip()}"
                     for d in datasets if d in sections)
    return f"  {model}: configs/{model}.yaml + datasets {text}" + (f" + {' '.join(extra)}" if extra else "")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--models", default="all", help="comma-separated, or 'all' (every model with a toy section)")
    p.add_argument("--datasets", default=",".join(TOY))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=cores(), help="runs in parallel (processes); default: the cores")
    p.add_argument("--out", type=Path, default=None, help="keep the run directories (and results.json) here")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    args = p.parse_args(argv)
    found = toy_models()
    datasets = args.datasets.split(",")
    if bad := [d for d in datasets if d not in TOY]:
        p.error(f"unknown toy dataset(s) {', '.join(bad)} (choose from {', '.join(TOY)})")
    models = list(found) if args.models == "all" else args.models.split(",")
    if bad := [m for m in models if m not in found]:
        p.error(f"no ring8/grid25 section in configs/ for {', '.join(bad)} (models that have one: {', '.join(found)})")
    torch.set_num_threads(args.threads)
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="bench-modes-")
    out = args.out or Path(tmp.name)
    print("command:", shlex.join(["python", "bench/bench_modes.py", *argv]))
    print("configs (model file, its dataset section, then --set):")
    for m in models:
        print(_describe(m, datasets, args.sets))
    print(f"evaluation: {N_EVAL} samples per run, HQ = within 3 std (perfect sampler: "
          f"{100 * chi2_2d_within(3):.1f}%), {args.seeds} seeds, {args.jobs} job(s) x {args.threads} thread(s)\n",
          flush=True)
    jobs = [(m, d, s, out, args.threads, args.sets) for m in models for d in datasets if d in found[m]
            for s in range(args.seeds)]
    results: dict = {}
    t_all = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, min(args.jobs, len(jobs)))) as pool:
        for r in pool.imap_unordered(_run_star, jobs):
            results.setdefault((r["model"], r["dataset"]), []).append(r)
            _report(r)
        pool.close()  # let the workers exit cleanly (the with-block alone terminates them)
        pool.join()
    print(f"\n{len(jobs)} runs in {time.perf_counter() - t_all:.0f}s wall\n")
    for rs in results.values():
        rs.sort(key=lambda r: r["seed"])
    print(table(results, models, datasets, args.seeds))
    if tmp is None:
        (out / "results.json").write_text(json.dumps([r for rs in results.values() for r in rs], indent=1))
        print(f"\nrun directories and results.json: {out}", file=sys.stderr)
    else:
        tmp.cleanup()


if __name__ == "__main__":
    main()
