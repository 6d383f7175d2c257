"""Training throughput (images/second) on MNIST for `gan` and `wgan-gp` on this machine.

genlab's path: the dataset lives in memory as one uint8 tensor and batches are drawn by indexing
a random permutation. The straightforward path: torchvision-style Dataset returning a PIL image
per sample, a per-sample transform (PILToTensor), and a DataLoader that collates. Both feed the
same family (same networks, same update), in the same process, one after the other; the figure
is the median over repeats, and the ratio is what to quote on a noisy machine.

    python bench/bench_train.py [--steps 30] [--repeats 3] [--workers 0]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from genlab import config as C
from genlab.data import BatchSampler, load_dataset
from genlab.families.base import build_family


class PerSampleMNIST(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST does per item: a PIL image, then the transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x.numpy(), y.numpy()
        self.transform = transforms.PILToTensor()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.x[i, 0], mode="L")), int(self.y[i])


def timed(family, next_batch, steps: int, images_per_step: int) -> float:
    family.train_step(next_batch(), 0)  # warm-up
    t = time.perf_counter()
    for s in range(steps):
        family.train_step(next_batch(), s)
    return steps * images_per_step / (time.perf_counter() - t)


def loader_batches(data, batch: int, workers: int):
    loader = DataLoader(PerSampleMNIST(data.x, data.y), batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    while True:
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--models", default="gan,wgan-gp")
    args = ap.parse_args()
    data = load_dataset(C.DataConfig(name="mnist"), "train")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, DataLoader workers={args.workers}")
    print(f"{'model':<10}{'genlab img/s':>14}{'DataLoader img/s':>18}{'ratio':>8}")
    for model in args.models.split(","):
        cfg = C.resolve(model)
        torch.manual_seed(0)
        family = build_family(cfg, data.info, torch.device("cpu"))
        batch = cfg.train.batch_size * getattr(family, "batches_per_step", 1)
        sampler = BatchSampler(data, batch, seed=0)
        stream = loader_batches(data, batch, args.workers)
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleave so drift hits both equally
            ours.append(timed(family, sampler.next, args.steps, batch))
            theirs.append(timed(family, lambda: next(stream), args.steps, batch))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{model:<10}{a:>14.0f}{b:>18.0f}{a / b:>8.2f}x")


if __name__ == "__main__":
    main()
