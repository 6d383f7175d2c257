"""How many rows an inference forward should take on this machine: images/s of every default model's
sampling and likelihood passes, and of the genlab-mnist features, against the chunk size.

    python bench/bench_inference.py [--models all] [--chunks 32,64,128,256,500] [--n 500] [--repeats 3]

The passes of `genlab eval` / `genlab sample` hand the families batches of 500 rows (--batch-size, the
seeding unit); inside, nets run `genlab.speed.inference_chunk(device)` rows at a time (64 on the CPU).
This script sets that chunk (genlab.speed.CPU_INFERENCE_CHUNK) to each value in turn and times one
batch of --n rows through the same public calls the evaluation makes, on untrained weights of each
shipped config (what is timed does not depend on what the weights learned):

- sample: family.sample(n), fp32 under inference_mode (diffusion / flow matching with 5 sampling steps,
  so a row is a few forwards; PixelCNNs are left out: their cached sampler does not chunk);
- log_likelihood: family.log_likelihood(n test images) where the family declares it (the VAE with 50
  importance samples; flow matching's adaptive ODE solve is left out: minutes per batch);
- features: the genlab-mnist extractor.

Printed: images/s per chunk size (median of --repeats), and the shipped chunk's speed relative to one
forward of the whole batch (the last chunk size). Threads: all cores unless --threads.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab import config as C
from genlab import speed
from genlab.data import load_dataset
from genlab.eval.features import get_extractor
from genlab.families.base import build_family
from genlab.registry import available

SPECIAL = {"vqvae-prior": ["prior.vqvae=untrained"], "vae": ["vae.iw_samples=50"], "cyclegan": ["data.name=mnist-pair"]}
FEW_STEPS = {"diffusion": {"sample_steps": 5}, "flow-matching": {"sample_steps": 5}}
SKIP = {("autoregressive", "sample"), ("prior", "sample"), ("flow-matching", "log_likelihood"),
        ("cyclegan", "sample")}


def passes(model: str, n: int) -> dict:
    """{pass name: a function of no arguments} for one default model."""
    cfg = C.resolve(model, sets=SPECIAL.get(model, []))
    data = load_dataset(cfg.data, "test")
    torch.manual_seed(0)
    family = build_family(cfg, data.info, torch.device("cpu"))
    images = data.x[:n]
    out = {}
    if "sample" in family.capabilities and (cfg.family, "sample") not in SKIP:
        options = FEW_STEPS.get(cfg.family, {})
        out["sample"] = lambda: family.sample(n, torch.Generator().manual_seed(0), **options)
    if "log_likelihood" in family.capabilities and (cfg.family, "log_likelihood") not in SKIP:
        out["log_likelihood"] = lambda: family.log_likelihood(images)
    return out


def rates(fns: dict, chunks: list[int], n: int, repeats: int) -> dict:
    """{(pass, chunk): images/s}, the chunk sizes taking turns within every repeat."""
    times: dict = {(p, c): [] for p in fns for c in chunks}
    for _ in range(repeats):
        for c in chunks:
            speed.CPU_INFERENCE_CHUNK = c
            for p, fn in fns.items():
                with torch.inference_mode():
                    t = time.perf_counter()
                    fn()
                    times[p, c].append(time.perf_counter() - t)
    return {k: n / statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--chunks", default="32,64,128,256,500")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shipped = speed.CPU_INFERENCE_CHUNK
    chunks = [int(c) for c in args.chunks.split(",")]
    models = available("model") if args.models == "all" else args.models.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batches of {args.n} rows; "
          f"shipped CPU chunk {shipped}; images/s per chunk size (medians of {args.repeats})")
    print(f"{'model':<16}{'pass':<16}" + "".join(f"{c:>9}" for c in chunks) + f"  {shipped} vs {chunks[-1]}")
    ext = get_extractor("genlab-mnist")
    x = torch.rand(args.n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rows = [("genlab-mnist", lambda: {"features": lambda: ext.features_and_probs(x)})]
    rows += [(model, lambda model=model: passes(model, args.n)) for model in models]
    for name, make in rows:
        fns = make()
        r = rates(fns, chunks, args.n, args.repeats)
        for p in fns:
            gain = f"{r[p, shipped] / r[p, chunks[-1]]:.2f}x" if shipped in chunks else ""
            print(f"{name:<16}{p:<16}" + "".join(f"{r[p, c]:>9.0f}" for c in chunks) + f"  {gain}", flush=True)
    speed.CPU_INFERENCE_CHUNK = shipped


if __name__ == "__main__":
    main()
