"""The training performance table: every default model, fp32-contiguous vs the shipped default.

    python bench/bench_train.py [--models all] [--steps 20] [--repeats 3] [--variants fp32,default]
    python bench/bench_train.py --variants fp32,cl,bf16,cl+bf16      # what the defaults were chosen from
    python bench/bench_train.py --variants fp32-loop,fp32,default   # also against the issue's baseline

For each model the family is built from its shipped config on bundled MNIST (mnist-pair for
cyclegan; vqvae-prior on an untrained VQ-VAE) and timed on real batches from genlab's sampler, the
way the trainer calls it (autocast, channels_last input). Variants: fp32 (amp off, contiguous),
cl (channels_last), bf16 (bf16 autocast), cl+bf16, default (what configs/<model>.yaml ships), and
fp32-loop: fp32 with torch's default CPU Adam, a loop over the tensors, which every family but the
flows stepped with before genlab's optimizers were fused (the "today" of issue 16's baseline).
Printed per model and variant: images/s (median of --repeats timings of --steps steps, after
warm-up steps), the ratio to the first variant listed, FLOPs per step (torch.utils.flop_counter,
counted on the fp32 step) and the achieved GFLOP/s as a percentage of the fp32 and bf16 matmul
peaks measured in this same run (square matmuls, median of repeats; the bf16 peak only where bf16
is native). Threads: all cores unless --threads.

--kernels adds, per model, how close its default step could come with the kernels it calls: the
step's FLOP-counted calls (convolutions, their backward, matmuls) are recorded with copies of their
arguments and replayed alone, same shapes, layouts, dtypes and threads, against the whole step
(median of --repeats, taking turns): the GFLOP/s the step would reach if everything else (norms,
activations, the optimizer, Python) cost nothing.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import flop_registry

from genlab import config as C
from genlab.data import load_dataset, make_sampler
from genlab.families.base import Update, build_family
from genlab.parallel.modules import to_channels_last
from genlab.registry import available
from genlab.speed import cpu_has_bf16
from genlab.train import autocast

VARIANTS = {"fp32": ["train.amp=off", "train.channels_last=false"],
            "cl": ["train.amp=off", "train.channels_last=true"],
            "bf16": ["train.amp=bf16", "train.channels_last=false"],
            "cl+bf16": ["train.amp=bf16", "train.channels_last=true"],
            "default": [],
            "fp32-loop": ["train.amp=off", "train.channels_last=false"]}
PER_TENSOR_ADAM = {"fp32-loop"}
SPECIAL = {"vqvae-prior": ["prior.vqvae=untrained"], "cyclegan": ["data.name=mnist-pair"]}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a square matmul in `dtype` (median of repeats, after a warm-up)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def setup(model: str, variant: str):
    sets = SPECIAL.get(model, []) + VARIANTS[variant]
    cfg = C.resolve(model, sets=sets)
    data = load_dataset(cfg.data, "train")
    torch.manual_seed(0)
    family = build_family(cfg, data.info, torch.device("cpu"))
    if variant in PER_TENSOR_ADAM:
        unfuse_optimizers(family)
    per_step = family.batches_per_step
    sampler = make_sampler(cfg.data, data, cfg.train.batch_size * per_step, 0)
    return cfg, family, sampler, cfg.train.batch_size * per_step


def unfuse_optimizers(family) -> None:
    """Swap each of the family's fused Adams for torch's CPU default (foreach=False), with the same
    hyperparameters; families that skip non-finite steps (the flows) had fused Adam already."""
    for update in vars(family).values():
        if isinstance(update, Update) and not update.skip_nonfinite:
            d = update.opt.defaults
            update.opt = torch.optim.Adam(update.params, lr=d["lr"], betas=d["betas"], eps=d["eps"],
                                          weight_decay=d["weight_decay"], foreach=False)


def step_fn(cfg, family, sampler):
    state = {"step": 0}

    def one():
        x, y = sampler.next()
        if cfg.train.channels_last == "on":
            x = to_channels_last(x)
        state["step"] += 1
        with autocast(torch.device("cpu"), cfg.train.amp):
            family.train_step((x, y), state["step"])
    return one


class FlopCount(TorchDispatchMode):
    """torch.utils.flop_counter's per-op formulas (flop_registry), summed over every op dispatched --
    without FlopCounterMode's module tracking, whose autograd hooks do not support the gradient
    penalty's autograd.grad."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


def flops_per_step(model: str) -> float:
    cfg, family, sampler, _ = setup(model, "fp32")
    one = step_fn(cfg, family, sampler)
    one()
    with FlopCount() as counter:
        one()
    return float(counter.total)


class KernelCapture(TorchDispatchMode):
    """Records every FLOP-counted call (the ops flop_registry has formulas for) with copies of its
    tensor arguments, for replay()."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket in flop_registry:
            copy = tree_map_only(torch.Tensor, lambda t: t.detach().clone(memory_format=torch.preserve_format),
                                 (args, kwargs))
            self.calls.append((func, *copy))
        return func(*args, **kwargs)

    def replay(self) -> None:
        for func, args, kwargs in self.calls:
            func(*args, **kwargs)


def kernel_bound(model: str, repeats: int, steps: int = 10) -> tuple[float, float]:
    """Seconds of one default step and of its FLOP-counted calls replayed alone (medians of
    `repeats` timings of `steps`, the two taking turns)."""
    cfg, family, sampler, _ = setup(model, "default")
    one = step_fn(cfg, family, sampler)
    for _ in range(3):
        one()
    with KernelCapture() as capture:
        one()
    times: dict = {one: [], capture.replay: []}
    for _ in range(repeats):
        for fn, ts in times.items():
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            ts.append((time.perf_counter() - t) / steps)
    return statistics.median(times[one]), statistics.median(times[capture.replay])


def images_per_sec(model: str, variants: list[str], steps: int, repeats: int, warmup: int = 3) -> dict:
    """Median images/s of each variant; the variants take turns within every repeat, so drift on a
    noisy machine hits them all alike."""
    runs = {}
    for v in variants:
        cfg, family, sampler, images = setup(model, v)
        runs[v] = (step_fn(cfg, family, sampler), images)
        for _ in range(warmup):
            runs[v][0]()
    rates: dict = {v: [] for v in variants}
    for _ in range(repeats):
        for v, (one, images) in runs.items():
            t = time.perf_counter()
            for _ in range(steps):
                one()
            rates[v].append(steps * images / (time.perf_counter() - t))
    return {v: statistics.median(r) for v, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--variants", default="fp32,default")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kernels", action="store_true", help="also replay each default step's convolutions and "
                    "matmuls alone: the GFLOP/s its kernels allow")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = available("model") if args.models == "all" else args.models.split(",")
    native_bf16 = cpu_has_bf16()
    # without native bf16 the 2048^2 bf16 matmul is emulated at under 1 GFLOP/s (an AVX2-only EPYC):
    # its "peak" would take minutes to measure and mean nothing
    fp32_peak = matmul_peak(torch.float32, repeats=9)
    bf16_peak = matmul_peak(torch.bfloat16, repeats=9) if native_bf16 else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peaks measured now: "
          f"fp32 {fp32_peak:.0f} GFLOP/s, bf16 {f'{bf16_peak:.0f} GFLOP/s' if bf16_peak else 'not measured'}; "
          f"native bf16 (genlab.speed): {native_bf16}; oneDNN bf16 (native or emulated): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"{'model':<16}{'variant':<9}{'img/s':>9}{'vs 1st':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}"
          f"{'% fp32 pk':>11}{'% bf16 pk':>11}  shipped default, as resolved here")
    for model in models:
        flops = flops_per_step(model)
        variants = args.variants.split(",")
        rates = images_per_sec(model, variants, args.steps, args.repeats)
        shipped, _, _, images = setup(model, "default")  # what `auto` resolves to on this machine
        base = None
        for variant in variants:
            ips = rates[variant]
            base = base or ips
            gflops = flops * ips / images / 1e9
            of_bf16 = f"{100 * gflops / bf16_peak:>10.0f}%" if bf16_peak else f"{'-':>11}"
            print(f"{model:<16}{variant:<9}{ips:>9.0f}{ips / base:>8.2f}x{flops / 1e9:>12.2f}{gflops:>9.1f}"
                  f"{100 * gflops / fp32_peak:>10.0f}%{of_bf16}  "
                  f"{shipped.resolved['precision']}, channels_last {shipped.train.channels_last}", flush=True)
        if args.kernels:
            step, alone = kernel_bound(model, args.repeats)
            bound = flops / alone / 1e9
            of_bf16 = f", {100 * bound / bf16_peak:.0f}% of the bf16" if bf16_peak else ""
            print(f"{'':<16}kernels: default step {1e3 * step:.1f} ms, {flops / step / 1e9:.0f} GFLOP/s; its "
                  f"convolutions and matmuls alone {1e3 * alone:.1f} ms ({100 * alone / step:.0f}% of it): "
                  f"{bound:.0f} GFLOP/s, {100 * bound / fp32_peak:.0f}% of the fp32 peak{of_bf16}", flush=True)


if __name__ == "__main__":
    main()
