"""The mode-collapse diagnostics as registered measures (section "diagnose"), and what they share.

Which apply is declared, not planned by hand: by data kind and the dataset's traits
(`mode-centres`: ring8 / grid25; `stacked-digits`: stacked-mnist), the family's capabilities
(`sample`, `codebook`), and one runtime check (a genlab classifier exists for the dataset):
    mixture        2-D mixtures: modes captured, high-quality rate, reverse KL      (n = 2,500)
    stacked        stacked digits: modes hit of 1,000, KL to uniform                (n = 26,000)
    classes        images with a genlab evaluator of their own (mnist): class coverage
    ndb            NDB / JSD of K-means bins (K = 100, fitted on 10,000 training samples)
    memorisation   nearest-neighbour distances to the training set vs held-out test data
    codebook       VQ-VAE codebook health on test images
The sample counts are the published protocols' (PacGAN, Lin et al. 2018; VEEGAN, Srivastava et al.
2017); `--n` overrides them.
NDB and memorisation work in the evaluator's feature space when `classes` applies, else in pixels.
Each returns its record section; what its plot needs goes to ctx.artifacts (drawn by report/).
"""
from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from ..errors import GenlabError
from ..speed import draw
from . import modes as M
from .measures import Figure, Measure, register_measure

MEM_N = 5000  # generated / test samples compared with the training set for memorisation
NDB_REAL = 10000  # training samples K-means is fitted on (and whose bin proportions are tested)
NDB_K = 100


def classifier_for(info) -> str | None:
    """A genlab evaluator trained on this very dataset (genlab-mnist for mnist), if it exists."""
    from .evaluator import evaluator_name, find_weights

    if info.kind != "image" or tuple(info.shape) != (1, 28, 28):
        return None
    name = evaluator_name(info.name)
    return name if find_weights(name) is not None else None


class DiagnoseContext:
    """Samples, classifier and reference data the diagnostics share (each computed once)."""

    def __init__(self, run, n: int, seed: int = 0, log=print, data=None):
        self.run, self.family, self.info, self.n, self.seed, self.log = run, run.family, run.info, n, seed, log
        self.device = getattr(run.family, "device", "cpu")
        self.train_data = data  # the training set when the caller already holds it (the training hook)
        self.artifacts: dict[str, dict] = {}
        self.extractor = None  # the feature extractor used, for the record

    def draw(self, n: int, generator: torch.Generator, chunk: int = 2000) -> Tensor:
        with self.run.sampling():
            x = torch.cat([draw(self.family, self.run.sample_amp, min(chunk, n - i), generator).cpu()
                           for i in range(0, n, chunk)])
        if not torch.isfinite(x).all():
            raise GenlabError("generated samples contain NaN/Inf (did the model diverge?); nothing to diagnose")
        return x

    @cached_property
    def samples(self) -> Tensor:
        return self.draw(self.n, torch.Generator().manual_seed(self.seed))

    @cached_property
    def data_cfg(self):
        from .reference import data_config_for

        return data_config_for(self.run.cfg.data)

    def get_extractor(self, name: str):
        from .features import get_extractor

        self.extractor = get_extractor(name, self.device)
        return self.extractor

    @cached_property
    def classifier(self):
        return self.get_extractor(classifier_for(self.info))

    @cached_property
    def sample_probs_feats(self) -> tuple[Tensor, Tensor]:
        feats, probs = self.classifier.features_and_probs(self.samples)
        return feats, probs

    @cached_property
    def train_labels(self) -> Tensor:
        from ..data import load_dataset

        data = self.train_data if self.train_data is not None else load_dataset(self.data_cfg, "train")
        return data.y

    @cached_property
    def space(self) -> tuple[Tensor, Tensor, Tensor, str, float]:
        """(generated, training, test) in one space for NDB and memorisation: the evaluator's features
        when there is a classifier for this data, else pixels (0..255, reported in [0, 1] units)."""
        from .reference import get_reference, load_real

        if classifier_for(self.info):
            ext = self.classifier
            train = get_reference(self.data_cfg, "train", None, ext, log=self.log)
            test = get_reference(self.data_cfg, "test", MEM_N, ext, log=self.log)
            return self.sample_probs_feats[0], train.features, test.features, f"{ext.name} features", 1.0
        # uint8 scale keeps the real images uint8 (a 50k x 3072 float copy is 600 MB)
        fake = (self.samples.reshape(len(self.samples), -1).float() * 255).round()
        real_train = load_real(self.data_cfg, "train", None)[0].reshape(-1, fake.shape[1])
        real_test = load_real(self.data_cfg, "test", MEM_N)[0].reshape(-1, fake.shape[1])
        return fake, real_train, real_test, "pixels in [0, 1]", 1 / 255


# ----------------------------------------------------------------------------- the measures
def _mixture(ctx: DiagnoseContext) -> dict:
    x, info = ctx.samples, ctx.info
    ctx.artifacts["mixture"] = {"points": x}
    return {**M.mixture_metrics(x, info.modes, info.mode_std), "n": ctx.n, "mode_std": info.mode_std,
            "hq_sigmas": 3.0, "hq_rate_perfect": M.chi2_2d_within(3.0)}


def stacked_labels(sample, n: int, ext, gen: torch.Generator, chunk: int = 1000) -> tuple[Tensor, Tensor]:
    """Digit labels (n, C) of each channel of n generated stacked images, and their max probs."""
    labels, conf = [], []
    for i in range(0, n, chunk):
        x = sample(min(chunk, n - i), gen)
        k, c = x.shape[0], x.shape[1]
        p = ext.probs(x.reshape(k * c, 1, *x.shape[2:]))
        top, arg = p.max(1)
        labels.append(arg.reshape(k, c))
        conf.append(top.reshape(k, c))
    return torch.cat(labels), torch.cat(conf)


def _stacked(ctx: DiagnoseContext) -> dict:
    ext = ctx.get_extractor("genlab-mnist")
    labels, conf = stacked_labels(ctx.draw, ctx.n, ext, torch.Generator().manual_seed(ctx.seed))
    ctx.artifacts["stacked"] = {"labels": labels}
    return {**M.stacked_modes(labels), "confident_rate": float((conf >= M.CONFIDENT).double().mean()),
            "confident_threshold": M.CONFIDENT}


def _classes(ctx: DiagnoseContext) -> dict:
    cc = M.class_coverage(ctx.sample_probs_feats[1], ctx.train_labels, covered_share=M.COVERED_SHARE)
    ctx.artifacts["classes"] = {"train_labels": ctx.train_labels}
    return {**cc, "covered_share": M.COVERED_SHARE}


def _ndb(ctx: DiagnoseContext) -> dict:
    fake, real_train, _, space, _ = ctx.space
    idx = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(ctx.seed))[:NDB_REAL]
    return {**M.ndb_jsd(real_train[idx], fake, k=min(NDB_K, len(idx)), seed=ctx.seed), "space": space}


def _memorisation(ctx: DiagnoseContext) -> dict:
    fake, real_train, real_test, space, unit = ctx.space
    g = M.nn_distances(fake[:MEM_N], real_train) * unit
    t = M.nn_distances(real_test, real_train) * unit
    ctx.artifacts["memorisation"] = {"gen_to_train": g, "test_to_train": t}
    return {**M.memorisation(g, t), "space": space, "n_train": len(real_train)}


def _codebook(ctx: DiagnoseContext) -> dict:
    from .reference import load_real

    x, _ = load_real(ctx.data_cfg, "test", ctx.n)
    return {**ctx.family.codebook_stats(x), "split": "test"}


# ----------------------------------------------------------------------------- declarations
def _pct(v, _):
    return f"{100 * v:.1f}%"


def _rows_mixture(m: dict) -> list[tuple[str, str]]:
    return [("modes captured", f"{m['modes']} / {m['num_modes']}"),
            ("high-quality (<= 3 std)", f"{100 * m['hq_rate']:.1f}%  (perfect sampler: {100 * m['hq_rate_perfect']:.1f}%)"),
            ("reverse KL to uniform", f"{m['reverse_kl']:.4f} nats")]


def _rows_stacked(s: dict) -> list[tuple[str, str]]:
    return [("modes hit", f"{s['modes']} / {s['num_modes']}"), ("KL to uniform", f"{s['kl_uniform']:.4f} nats"),
            (f"confident digits (p >= {s['confident_threshold']})", f"{100 * s['confident_rate']:.1f}%")]


def _rows_classes(c: dict) -> list[tuple[str, str]]:
    rows = [("classes covered", f"{c['classes_covered']} / {c['num_classes']}  (>= {c['covered_share']:.0%} of uniform share)"),
            ("KL(gen || uniform)", f"{c['kl_uniform']:.4f} nats")]
    if "kl_train" in c:
        rows.append(("KL(gen || train labels)", f"{c['kl_train']:.4f} nats"))
    return rows + [(f"confident (max p >= {c['confident_threshold']})", f"{100 * c['confident_rate']:.1f}%")]


def _rows_ndb(b: dict) -> list[tuple[str, str]]:
    return [("NDB (different bins)", f"{b['ndb']} / {b['k']}  (alpha {b['alpha']}; ~{b['alpha'] * b['k']:.0f} expected by chance)"),
            ("JSD of bin histograms", f"{b['jsd']:.5f} nats")]


def _rows_memorisation(m: dict) -> list[tuple[str, str]]:
    return [("near-copies", f"{100 * m['near_copy_rate']:.2f}%  (NN dist <= {m['threshold']:.4g}, the "
                            f"{m['quantile']:g} quantile of test->train; test data scores ~{m['quantile']:.0%})"),
            ("exact copies", f"{100 * m['exact_copy_rate']:.2f}%"),
            ("median NN dist gen / test", f"{m['median_ratio']:.3f}")]


def _rows_codebook(c: dict) -> list[tuple[str, str]]:
    return [("codebook perplexity", f"{c['perplexity']:.1f}  (of {c['n_codes']} codes)"),
            ("codes used / dead", f"{c['codes_used']} / {c['dead_codes']}  ({100 * c['usage']:.1f}% used on "
                                  f"{c['n_images']} {c['split']} images)"),
            ("reconstruction MSE", f"{c['recon_mse']:.5f}  (pixels in [0, 1])")]


def _diagnostic(name: str, compute, figures, rows, **kw) -> Measure:
    return register_measure(Measure(name, "diagnose", tuple(figures), compute, needs=kw.pop("needs", {"sample"}),
                                    rows=rows, **kw))


_NATS = "nats"
_diagnostic("mixture", _mixture, [
    Figure("mixture.modes", "modes captured", "higher", aliases=("modes_captured",)),
    Figure("mixture.hq_rate", "high-quality", "higher", fmt=_pct),
    Figure("mixture.reverse_kl", "reverse KL", "lower", unit=_NATS)],
    _rows_mixture, data=("points",), traits=("mode-centres",), cheap=True, coverage="mixture.modes",
    default_n=2500, doc="PacGAN / VEEGAN protocol: modes captured, high-quality (3 std) rate, reverse KL")
_diagnostic("stacked", _stacked, [
    Figure("stacked.modes", "modes hit", "higher"),
    Figure("stacked.kl_uniform", "KL to uniform", "lower", unit=_NATS),
    Figure("stacked.confident_rate", "confident digits", "higher", fmt=_pct)],
    _rows_stacked, traits=("stacked-digits",), cheap=True, coverage="stacked.modes", default_n=26000,
    doc="Stacked MNIST: modes of 1,000 hit, KL to uniform (a classifier labels each channel)")
_diagnostic("classes", _classes, [
    Figure("classes.classes_covered", "classes covered", "higher", aliases=("class_coverage.classes_covered",)),
    Figure("classes.kl_uniform", "KL(gen || uniform)", "lower", unit=_NATS, aliases=("class_coverage.kl_uniform",)),
    Figure("classes.kl_train", "KL(gen || train labels)", "lower", unit=_NATS, aliases=("class_coverage.kl_train",)),
    Figure("classes.confident_rate", "confident", "higher", fmt=_pct, aliases=("class_coverage.confident_rate",))],
    _rows_classes, excludes=("stacked-digits",), available=classifier_for, cheap=True,
    coverage="classes.classes_covered", default_n=10000,
    doc="class coverage from genlab's evaluator for this dataset: classes covered, KL to uniform / train labels")
_diagnostic("ndb", _ndb, [
    Figure("ndb.ndb", "NDB", "lower"), Figure("ndb.ndb_frac", "NDB share", "lower", fmt=_pct),
    Figure("ndb.jsd", "JSD of bins", "lower", unit=_NATS)],
    _rows_ndb, excludes=("stacked-digits",), default_n=10000,
    doc="number of statistically different K-means bins and their JSD (Richardson & Weiss 2018)")
_diagnostic("memorisation", _memorisation, [
    Figure("memorisation.near_copy_rate", "near-copies", "lower", fmt=_pct),
    Figure("memorisation.exact_copy_rate", "exact copies", "lower", fmt=_pct),
    Figure("memorisation.median_ratio", "median NN dist gen / test", "target", target=1.0),
    Figure("memorisation.gen_median", "median NN dist (generated)", "info")],
    _rows_memorisation, excludes=("stacked-digits",), default_n=10000,
    doc="nearest-neighbour distances to the training set, generated vs held-out test samples")
_diagnostic("codebook", _codebook, [
    Figure("codebook.perplexity", "codebook perplexity", "higher"),
    Figure("codebook.codes_used", "codes used", "higher"), Figure("codebook.dead_codes", "dead codes", "lower"),
    Figure("codebook.usage", "codebook usage", "higher", fmt=_pct),
    Figure("codebook.recon_mse", "test recon MSE", "lower")],
    _rows_codebook, needs={"codebook"}, doc="VQ-VAE codebook health on test images")
