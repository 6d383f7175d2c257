"""How long evaluation takes: `genlab eval -n N` for every default model, and genlab's one feature
pass versus separate torchmetrics metric objects (each re-extracting features), in the same process.

    python bench/bench_eval.py [RUN_DIR] [--n 10000] [--threads 0] [--repeats 3] [--families all|none|gan,...]
                               [--precision auto|float32|bf16]

Part 1 (--families): for each default model, an untrained family of its shipped config (the timing
does not depend on what the weights learned; vqvae-prior on an untrained VQ-VAE, cyclegan on
mnist-pair) evaluated by genlab.eval.evaluate exactly as `genlab eval -n N` does, with the family's
default --n-test; printed: total seconds and the record's own breakdown.

Part 2:

Without RUN_DIR an untrained GAN (`genlab.config.resolve("gan")`) provides the samples: the timing
does not depend on sample quality. Both sides use the genlab-mnist extractor and the same images,
drawn in the sampling precision `genlab eval --precision` would use (auto: bf16 for the GAN where the
CPU has native bf16):

- genlab: sample in batches -> features_and_probs (one forward) -> compute_all(fid, kid, is, pr, dc).
  Timed twice: with the real reference features and their k-NN radii computed in the timed region
  (no cache), and with both from the reference cache (what `genlab eval` does after the first call).
- torchmetrics: the N images are generated once (timed), then FrechetInceptionDistance,
  KernelInceptionDistance(subsets=100, subset_size=min(1000, N)) and InceptionScore(splits=10), each given the
  extractor as its `feature=` module, are updated with real and/or fake images and computed; torchmetrics
  has no precision/recall or density/coverage, so those come from one more feature pass through
  genlab.eval.metrics.precision_recall and density_coverage (the way a separate prdc tool works).
"""
from __future__ import annotations

import argparse
import time
from statistics import median
import warnings

import torch
from torch import nn


def family_table(models: str, n: int) -> None:
    """Part 1: seconds of genlab's evaluation of every default model (see the module docstring)."""
    import contextlib
    from types import SimpleNamespace

    from genlab import config as C
    from genlab.data import load_dataset
    from genlab.eval.evaluate import evaluate
    from genlab.families.base import build_family
    from genlab.registry import available
    from genlab.speed import sampling_amp

    names = available("model") if models == "all" else models.split(",")
    special = {"vqvae-prior": ["prior.vqvae=untrained"]}
    print(f"genlab eval -n {n} (untrained weights of each default config), {torch.get_num_threads()} threads")
    print(f"{'model':<16}{'seconds':>9}  what was measured (record's seconds)")
    for model in names:
        cfg = C.resolve(model, sets=special.get(model, []))
        info = load_dataset(cfg.data, "test").info
        torch.manual_seed(0)
        family = build_family(cfg, info, torch.device("cpu"))
        if "translate" in family.capabilities:  # translation samples come from its bank of A images
            family.train_step(next(iter([_pair_batch(cfg)])), 1)
        amp, label = sampling_amp(type(family), info.kind, family.device)
        run = SimpleNamespace(family=family, info=info, cfg=cfg, step=0, checkpoint="untrained",
                              sampling=contextlib.nullcontext, run_dir=None, sample_amp=amp, sample_precision=label)
        t = time.perf_counter()
        record = evaluate(run, n=n, log=lambda m: None)
        total = time.perf_counter() - t
        parts = ", ".join(f"{k} {v:.1f}" for k, v in record["seconds"].items())
        n_test = record["metrics"].get("n_nll") or record["metrics"].get("n_recon")
        what = f"{', '.join(k for k in record['metrics'] if not k.startswith('n_'))[:60]}"
        print(f"{model:<16}{total:>9.1f}  {what}{f'; n_test {n_test}' if n_test else ''} ({parts})", flush=True)


def _pair_batch(cfg):
    from genlab.data import load_dataset, make_sampler

    data = load_dataset(cfg.data, "train")
    return make_sampler(cfg.data, data, cfg.train.batch_size, 0).next()


class FeatureModule(nn.Module):
    """The extractor as a torchmetrics `feature=` module: features (FID/KID) or logits (IS)."""

    def __init__(self, ext, output: str):
        super().__init__()
        self.ext, self.output = ext, output
        self.num_features = ext.dim if output == "features" else ext.num_classes

    def forward(self, x):
        f, p = self.ext.features_and_probs(x)
        return f if self.output == "features" else p.clamp_min(1e-30).log()  # IS applies softmax again


def genlab_pass(draw, sampling, info, data_cfg, ext, n, bs, seed, use_cache: bool) -> tuple[dict, dict]:
    """What `genlab eval` does, timed by part: (seconds per part, metric values)."""
    from genlab.eval.evaluate import sample_features
    from genlab.eval.metrics import compute_all
    from genlab.eval.reference import get_reference

    t0 = time.perf_counter()
    ref = get_reference(data_cfg, "test", n, ext, batch_size=bs, use_cache=use_cache, log=lambda m: None)
    radii = ref.knn_radii([3, 5])  # as `genlab eval` does: kept in the cache file, computed once
    t1 = time.perf_counter()
    with sampling():
        fake, probs = sample_features(draw, n, ext, bs, seed, info.shape)
    t2 = time.perf_counter()
    out = compute_all(ref.features, fake, probs, seed=seed, real_radii=radii)
    t3 = time.perf_counter()
    return {"reference": t1 - t0, "sample+features": t2 - t1, "metrics": t3 - t2}, out


def separate_objects(draw, sampling, real_images, ext, n, bs, seed) -> tuple[dict, dict]:
    """The same metrics from separate torchmetrics objects (see the module docstring)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    from genlab.eval.metrics import density_coverage, precision_recall

    times, tm = {}, {}
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    with sampling():
        fake_images = torch.cat([draw(min(bs, n - i), gen) for i in range(0, n, bs)])
    real = real_images.float() / 255
    times[f"sampling {n} images once"] = time.perf_counter() - t
    t = time.perf_counter()
    fid = FrechetInceptionDistance(feature=FeatureModule(ext, "features"), normalize=True)
    for i in range(0, n, bs):
        fid.update(real[i:i + bs], real=True)
        fid.update(fake_images[i:i + bs], real=False)
    tm["fid"] = fid.compute().item()
    times["FrechetInceptionDistance"] = time.perf_counter() - t
    t = time.perf_counter()
    kid = KernelInceptionDistance(feature=FeatureModule(ext, "features"), subsets=100,
                                  subset_size=min(1000, n), normalize=True)
    for i in range(0, n, bs):
        kid.update(real[i:i + bs], real=True)
        kid.update(fake_images[i:i + bs], real=False)
    tm["kid_mean"] = kid.compute()[0].item()
    times["KernelInceptionDistance"] = time.perf_counter() - t
    t = time.perf_counter()
    isc = InceptionScore(feature=FeatureModule(ext, "logits"), splits=10, normalize=True)
    for i in range(0, n, bs):
        isc.update(fake_images[i:i + bs])
    tm["is_mean"] = isc.compute()[0].item()
    times["InceptionScore"] = time.perf_counter() - t
    t = time.perf_counter()
    fr, ff = ext.features(real), ext.features(fake_images)
    tm["precision"], tm["recall"] = precision_recall(fr, ff, k=3)
    tm["density"], tm["coverage"] = density_coverage(fr, ff, k=5)
    times["precision/recall + density/coverage (features again)"] = time.perf_counter() - t
    return times, tm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", help="a genlab run directory (default: an untrained GAN)")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="part 2 is run this many times; medians printed")
    ap.add_argument("--families", default="all", help="models for part 1 (all, none, or a list)")
    ap.add_argument("--precision", default="auto", help="part 2's sampling precision (as genlab eval --precision)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.families != "none":
        family_table(args.families, args.n)

    from genlab import config as C
    from genlab.data import DataInfo
    from genlab.eval.features import get_extractor
    from genlab.eval.reference import get_reference, load_real
    from genlab import speed
    from genlab.families.base import build_family
    from genlab.speed import sampling_amp

    if args.run_dir:
        from genlab.runs import load_run

        run = load_run(args.run_dir, "last", "cpu", args.precision)
        family, info, data_cfg, sampling, label = run.family, run.info, run.cfg.data, run.sampling, args.run_dir
        amp, precision = run.sample_amp, run.sample_precision
    else:
        cfg = C.resolve("gan")
        info = DataInfo("mnist", "image", (1, 28, 28), 10)
        family, data_cfg, label = build_family(cfg, info, torch.device("cpu")), cfg.data, "untrained gan"
        amp, precision = sampling_amp(type(family), info.kind, family.device, args.precision)
        from contextlib import nullcontext as sampling

    def draw(k, generator):
        return speed.draw(family, amp, k, generator)
    n, bs, seed = args.n, args.batch_size, 0
    ext = get_extractor("genlab-mnist")
    real_images = load_real(data_cfg, "test", n)[0]
    print(f"samples: {label}; n = {n} fake vs {len(real_images)} real (mnist test); extractor {ext.name} "
          f"{ext.fingerprint}; sampling in {precision} (both sides); threads {torch.get_num_threads()}; medians of {args.repeats} repeats")
    get_reference(data_cfg, "test", n, ext, batch_size=bs, log=lambda m: None).knn_radii([3, 5])  # warm the cache
    runs = {"nocache": [], "cache": [], "separate": []}
    for _ in range(args.repeats):
        runs["nocache"].append(genlab_pass(draw, sampling, info, data_cfg, ext, n, bs, seed, False))
        runs["cache"].append(genlab_pass(draw, sampling, info, data_cfg, ext, n, bs, seed, True))
        runs["separate"].append(separate_objects(draw, sampling, real_images, ext, n, bs, seed))
    total = {k: median(sum(t.values()) for t, _ in v) for k, v in runs.items()}
    ratios = {k: median(sum(s.values()) / sum(g.values()) for (s, _), (g, _) in zip(runs["separate"], runs[k]))
              for k in ("nocache", "cache")}

    def parts(k):
        return ", ".join(f"{p} {median(t[p] for t, _ in runs[k]):.2f}" for p in runs[k][0][0])

    print(f"\n{'genlab, one pass, reference computed (no cache)':<58} {total['nocache']:8.2f} s  ({parts('nocache')})")
    print(f"{'genlab, one pass, reference from cache':<58} {total['cache']:8.2f} s  ({parts('cache')})")
    print(f"{'separate metric objects, total':<58} {total['separate']:8.2f} s")
    for name in runs["separate"][0][0]:
        print(f"  {name:<56} {median(t[name] for t, _ in runs['separate']):8.2f} s")
    print(f"\nratio separate / one pass (median of per-repeat ratios): {ratios['nocache']:.2f}x (no cache), "
          f"{ratios['cache']:.2f}x (cached reference)")
    ours, tm = runs["cache"][0][1], runs["separate"][0][1]
    print("\nvalues (genlab one pass vs separate objects; KID's subsets are drawn differently):")
    for k in ("fid", "kid_mean", "is_mean", "precision", "recall", "density", "coverage"):
        print(f"  {k:<10} {ours[k]:12.6g} {tm[k]:12.6g}")


if __name__ == "__main__":
    main()
