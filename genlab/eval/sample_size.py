"""Metrics that are honest about sample size, over the same feature matrices as metrics.py.

- FID-infinity (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to
  find them"): FID is biased upwards by ~c/n. FID is computed on fake subsets of n_points sizes
  evenly spaced from N/10 to N (the paper: 5k..50k of 50k), each against the full reference, fitted
  by least squares as FID(n) = FID_inf + slope / n, and extrapolated to 1/n = 0. The intercept's
  standard error comes from the fit's residuals; the points are kept so the fit can be plotted.
  (The reference's own finite-n bias is not extrapolated away: use the largest reference you can.)
- CMMD (Jayasumana et al. 2024, "Rethinking FID"): squared MMD with a Gaussian RBF kernel,
  sigma = 10, times 1000, on L2-normalised embeddings, with the minimum-variance (V-statistic)
  estimator of the authors' code (google-research/cmmd distance.py), so values match published
  CMMD on CLIP ViT-L/14 features. No Gaussian assumption and no n bias of FID's kind. On other
  extractors it is the same computation on their (normalised) features.
Kernel sums run in row blocks, so 10k x 10k sets never hold a full kernel matrix.
"""
from __future__ import annotations

import numpy as np
import torch

CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
_BLOCK_ELEMS = 1 << 24


def fid_infinity(real, fake, n_points: int = 15, n_min: int | None = None, seed: int = 0) -> dict:
    """-> {fid_inf, fid_inf_se, fid_inf_slope, fid_inf_points: [[n, FID(n)], ...]}."""
    from .metrics import _fid_value, _pair, _sqrtm_psd, feature_stats

    real, fake = _pair(real, fake)
    total = fake.shape[0]
    n_min = max(2, total // 10) if n_min is None else n_min
    sizes = sorted({int(round(v)) for v in np.linspace(n_min, total, n_points)})
    if len(sizes) < 3:
        raise ValueError(f"FID-infinity needs at least 3 distinct sample sizes; {total} samples give {sizes}")
    mu_r, sigma_r = feature_stats(real)
    sqrt_r = _sqrtm_psd(sigma_r)
    gen = torch.Generator().manual_seed(seed)
    points = []
    for n in sizes:
        idx = torch.randperm(total, generator=gen)[:n].to(fake.device)
        mu_f, sigma_f = feature_stats(fake[idx])
        points.append((n, _fid_value(mu_f, sigma_f, mu_r, sigma_r, sqrt_r)))
    intercept, slope, se = linear_fit([1 / n for n, _ in points], [v for _, v in points])
    return {"fid_inf": intercept, "fid_inf_se": se, "fid_inf_slope": slope,
            "fid_inf_points": [[n, v] for n, v in points]}


def linear_fit(x, y) -> tuple[float, float, float]:
    """Least squares y = a + b x -> (a, b, standard error of a)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    design = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = max(1, len(x) - 2)
    cov = np.linalg.inv(design.T @ design) * (resid @ resid) / dof
    return float(coef[0]), float(coef[1]), float(np.sqrt(max(cov[0, 0], 0.0)))


def _rbf_mean(x: torch.Tensor, y: torch.Tensor, gamma: float) -> float:
    """mean over all pairs of exp(-gamma ||x_i - y_j||^2), in row blocks."""
    y_sq = y.square().sum(1)
    rows = max(1, _BLOCK_ELEMS // max(1, y.shape[0]))
    total = 0.0
    for i in range(0, x.shape[0], rows):
        xb = x[i:i + rows]
        d2 = (xb.square().sum(1, keepdim=True) + y_sq[None] - 2 * xb @ y.T).clamp_min(0)
        total += torch.exp(-gamma * d2).sum().item()
    return total / (x.shape[0] * y.shape[0])


def cmmd(real, fake, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """scale * MMD^2 (V-statistic) with k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) on unit-norm features."""
    from .metrics import _pair

    real, fake = _pair(real, fake)
    real = torch.nn.functional.normalize(real.double(), dim=1)
    fake = torch.nn.functional.normalize(fake.double(), dim=1)
    gamma = 1 / (2 * sigma ** 2)
    value = _rbf_mean(real, real, gamma) + _rbf_mean(fake, fake, gamma) - 2 * _rbf_mean(real, fake, gamma)
    return scale * value
