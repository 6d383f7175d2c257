"""PixelCNN sampling throughput (28x28 images/second): the shipped sampler versus naive full
re-evaluation of the net for every pixel, in the same run, on the same weights and seed.

The shipped sampler runs under inference mode and feeds the net only rows [0, i] while it fills
row i (output row i depends on input rows <= i only). Both samplers draw identical images; the
script checks that, then prints the medians and the ratio.

    python bench/bench_pixelcnn.py [--model gated-pixelcnn] [--n 16] [--repeats 3] [--run RUN_DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family


def timed(fn) -> tuple[float, torch.Tensor]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gated-pixelcnn")
    ap.add_argument("--run", default=None, help="a trained run directory (default: untrained default config)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.run:
        from genlab.runs import load_run

        family = load_run(args.run).family
    else:
        cfg = C.resolve(args.model)
        info = DataInfo(name="mnist", kind="image", shape=(1, 28, 28), num_classes=10, binarized=True)
        torch.manual_seed(0)
        family = build_family(cfg, info, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, batch of {args.n}")
    fast, naive = [], []
    for r in range(args.repeats):
        t_fast, a = timed(lambda: family.sample(args.n, torch.Generator().manual_seed(r)))
        t_naive, b = timed(lambda: family.sample(args.n, torch.Generator().manual_seed(r), crop=False))
        assert torch.equal(a, b), "the two samplers must draw the same images"
        fast.append(args.n / t_fast)
        naive.append(args.n / t_naive)
    f, s = statistics.median(fast), statistics.median(naive)
    print(f"shipped sampler: {f:.2f} images/s   naive re-evaluation: {s:.2f} images/s   ratio {f / s:.2f}x")


if __name__ == "__main__":
    main()
