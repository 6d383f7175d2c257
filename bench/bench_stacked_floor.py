"""The Stacked MNIST scorer on real data: what `genlab diagnose` reports for a perfect sampler.

    python bench/bench_stacked_floor.py [--n 26000] [--seed 0]

Draws n training triples of `stacked-mnist` (the protocol's 26,000 by default), labels each channel
with the genlab-mnist classifier exactly as the stacked diagnostic does (eval/diagnostics.py), and
prints modes hit and KL(mode histogram || uniform) from the classifier's labels and from the true
labels. The gap between a generator's KL and this floor is the generator's; the floor itself is the
finite sample (about 999 / 2n nats) plus MNIST's slightly uneven digit frequencies.
"""
from __future__ import annotations

import argparse

import torch

from genlab.config import DataConfig
from genlab.data.base import load_dataset
from genlab.eval import modes as M
from genlab.eval.diagnostics import stacked_labels
from genlab.eval.features import get_extractor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=26000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load_dataset(DataConfig(name="stacked-mnist"), "train")
    pick = torch.randperm(len(data.x), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    images, y = data.x[pick], data.y[pick]
    offset = [0]

    def draw(k: int, _gen: torch.Generator) -> torch.Tensor:  # the real triples, in order, in [0, 1]
        batch = images[offset[0]:offset[0] + k].float() / 255
        offset[0] += k
        return batch

    labels, conf = stacked_labels(draw, len(images), get_extractor("genlab-mnist"), torch.Generator())
    truth = torch.stack([y // 100, y // 10 % 10, y % 10], 1)
    for name, lab in (("classifier labels", labels), ("true labels", truth)):
        r = M.stacked_modes(lab)
        print(f"{name:18s} {r['modes']:4d} / {r['num_modes']} modes, KL to uniform {r['kl_uniform']:.4f} nats")
    print(f"channels classified correctly {(labels == truth).double().mean():.2%}, "
          f"confident (p >= {M.CONFIDENT}) {(conf >= M.CONFIDENT).double().mean():.1%}, n = {len(images)}")


if __name__ == "__main__":
    main()
