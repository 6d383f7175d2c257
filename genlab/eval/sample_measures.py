"""The evaluation measures: sample metrics from the one feature pass, likelihood and reconstruction
from real test images. Pure computations live in metrics.py and evaluate.py; this file declares them."""
from __future__ import annotations

import time

from .measures import Figure, Measure, register_measure


def _g(v, _):
    return f"{v:.5g}"


def _with_spread(std_key: str):
    def fmt(v, metrics):
        return f"{v:.5g} ± {metrics[std_key]:.2g}" if std_key in metrics else f"{v:.5g}"
    return fmt


def _fid_text(v, metrics):
    ci = f"  (95% CI {metrics['fid_ci_low']:.5g} .. {metrics['fid_ci_high']:.5g})" if "fid_ci_low" in metrics else ""
    return f"{v:.5g}{ci}"


def _from_feature_pass(*keys):
    def compute(ctx):
        values = ctx.sample_metrics
        return {k: values[k] for k in keys if k in values}
    return compute


def _sample_metric(name, figures, doc, uses_probs=False, optional=False):
    return register_measure(Measure(name, "eval", figures, _from_feature_pass(*(f.key for f in figures)),
                                    needs={"sample"}, selectable=True, cheap=not optional, optional=optional,
                                    uses_probs=uses_probs, doc=doc))


_sample_metric("fid", (Figure("fid", "FID", "lower", fmt=_fid_text, aliases=("fid_score",)),
                       Figure("fid_ci_low", "FID 95% low", "info"), Figure("fid_ci_high", "FID 95% high", "info")),
               "Frechet distance between Gaussians fitted to real and generated features (Heusel et al. 2017)")
_sample_metric("kid", (Figure("kid_mean", "KID", "lower", spread="kid_std", fmt=_with_spread("kid_std"), aliases=("kid",)),
                       Figure("kid_std", "KID std", "info")),
               "unbiased MMD^2, cubic polynomial kernel, 100 subsets (Binkowski et al. 2018)")
_sample_metric("is", (Figure("is_mean", "IS", "higher", spread="is_std", fmt=_with_spread("is_std"),
                             aliases=("is", "inception_score", "inception_score_mean")),
                      Figure("is_std", "IS std", "info", aliases=("inception_score_std",))),
               "Inception score over 10 splits (Salimans et al. 2016)", uses_probs=True)
_sample_metric("pr", (Figure("precision", "precision", "higher", aliases=("pr_precision",)),
                      Figure("recall", "recall", "higher", aliases=("pr_recall",))),
               "improved precision and recall, k = 3 (Kynkaanniemi et al. 2019)")
_sample_metric("dc", (Figure("density", "density", "higher", aliases=("dc_density",)),
                      Figure("coverage", "coverage", "higher", aliases=("dc_coverage",))),
               "density and coverage, k = 5 (Naeem et al. 2020)")
_sample_metric("fid_inf", (Figure("fid_inf", "FID-inf", "lower", fmt=_with_spread("fid_inf_se"), spread="fid_inf_se",
                                  aliases=("fid_infinity",)),
                           Figure("fid_inf_se", "FID-inf s.e.", "info"), Figure("fid_inf_slope", "FID-inf slope", "info"),
                           Figure("fid_inf_points", "FID-inf fit points", "info")),
               "FID extrapolated to n -> infinity: FID of 15 subset sizes N/10..N fitted as a + b/n "
               "(Chong & Forsyth 2020); ask for it with --metrics fid_inf", optional=True)
_sample_metric("cmmd", (Figure("cmmd", "CMMD", "lower", aliases=("cmmd_score",)),),
               "1000 x MMD^2, Gaussian RBF sigma 10 on unit-norm embeddings (Jayasumana et al. 2024; CLIP "
               "features with --features clip-vit-l-14); ask for it with --metrics cmmd", optional=True)


def _nll(ctx) -> dict:
    from .evaluate import likelihood

    images = ctx.test_images
    t0 = time.perf_counter()
    out = likelihood(ctx.family, images, ctx.batch_size, ctx.seed)
    ctx._timed("test_images", t0)
    return out


def _recon(ctx) -> dict:
    from .evaluate import reconstruction

    images = ctx.test_images
    t0 = time.perf_counter()
    out = reconstruction(ctx.family, images, ctx.batch_size)
    ctx._timed("test_images", t0)
    return out


register_measure(Measure(
    "nll", "eval", (Figure("nll_nats", "NLL (nats)", "lower", unit="nats", spread="nll_se",
                           fmt=_with_spread("nll_se"), aliases=("nll",)),
                    Figure("nll_se", "NLL s.e.", "info"),
                    Figure("bits_per_dim", "bits/dim", "lower", unit="bits/dim", spread="bits_per_dim_se",
                           fmt=_with_spread("bits_per_dim_se"), aliases=("bpd", "bits_dim")),
                    Figure("bits_per_dim_se", "bits/dim s.e.", "info")),
    _nll, needs={"log_likelihood"},
    doc="-mean log p(x) on real test images, ± its standard error over the images: exact (flows, PixelCNN), "
        "an IWAE estimate (VAE), a bound (DDPM) or an ODE solve with a Hutchinson divergence (flow matching)"))
register_measure(Measure(
    "recon", "eval", (Figure("recon_mse", "recon MSE", "lower", unit="per pixel, [0, 1]", fmt=_g),),
    _recon, needs={"reconstruct"}, doc="mean squared reconstruction error per pixel on real test images"))
