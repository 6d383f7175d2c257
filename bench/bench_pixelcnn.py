"""PixelCNN sampling throughput (images/second): naive full re-evaluation vs the row-cropped sampler
(genlab's sampler before the cache) vs the cached sampler (nets/pixelcnn_sampling.py), on the same
weights, batch and seed; the script checks the three draw identical images.

    python bench/bench_pixelcnn.py [--models gated-pixelcnn,pixelcnn,vqvae-prior] [--n 64] [--repeats 3]
                                   [--slow-repeats 1] [--run RUN_DIR]

Untrained weights of each default config (the cost does not depend on what they learned; the VQ-VAE
prior samples 7x7 code maps of an untrained VQ-VAE); --run measures a trained run instead. The naive
and cropped samplers take minutes per batch of 64, so they are timed --slow-repeats times, the cached
one --repeats times; medians and ratios are printed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab import config as C
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.nets.pixelcnn import raster_sample


def sampler(family):
    """(draw(n, generator, method) -> integer maps, description) for a PixelCNN or a VQ-VAE prior."""
    if hasattr(family, "vq"):  # the prior: code maps of the first stage
        shape = (1, *family.vq.code_shape)
        return (lambda n, g, m: raster_sample(family.net, shape, n, g, lambda c: c, family.device, method=m),
                f"{shape[1]}x{shape[2]} code maps")
    shape = tuple(family.info.shape)
    return (lambda n, g, m: raster_sample(family.net, shape, n, g, lambda t: t.float() / (family.values - 1),
                                          family.device, method=m), f"{shape[1]}x{shape[2]} images")


def timed(fn, repeats: int, n: int) -> tuple[float, torch.Tensor]:
    rates, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gated-pixelcnn,pixelcnn,vqvae-prior")
    ap.add_argument("--run", default=None, help="a trained run directory instead of untrained defaults")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow-repeats", type=int, default=1)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch of {args.n}")
    print(f"{'model':<16}{'what':<18}{'naive':>9}{'cropped':>9}{'cached':>9}{'cached/cropped':>16}"
          f"{'cached/naive':>14}  identical")
    targets = [args.run] if args.run else args.models.split(",")
    for target in targets:
        if args.run:
            from genlab.runs import load_run

            run = load_run(target)
            family, model = run.family, run.cfg.model
        else:
            model = target
            cfg = C.resolve(model, sets=["prior.vqvae=untrained"] if model == "vqvae-prior" else [])
            info = DataInfo(name="mnist", kind="image", shape=(1, 28, 28), num_classes=10,
                            binarized=model != "vqvae-prior")
            torch.manual_seed(0)
            family = build_family(cfg, info, torch.device("cpu"))
        draw, what = sampler(family)
        family.net.eval()
        rates, maps = {}, {}
        for method, reps in (("cached", args.repeats), ("crop", args.slow_repeats), ("naive", args.slow_repeats)):
            rates[method], maps[method] = timed(lambda: draw(args.n, torch.Generator().manual_seed(0), method),
                                                reps, args.n)
        same = torch.equal(maps["cached"], maps["naive"]) and torch.equal(maps["crop"], maps["naive"])
        print(f"{model:<16}{what:<18}{rates['naive']:>9.2f}{rates['crop']:>9.2f}{rates['cached']:>9.1f}"
              f"{rates['cached'] / rates['crop']:>15.1f}x{rates['cached'] / rates['naive']:>13.1f}x  {same}", flush=True)


if __name__ == "__main__":
    main()
