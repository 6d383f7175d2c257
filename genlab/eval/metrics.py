"""Sample-quality metrics as pure functions over feature matrices (n, d).

No networks here: features come from ``genlab.eval.features`` (one extractor pass serves every
metric, as in torch-fidelity). Statistics, FID and IS are computed in float64; KID's kernel values
and the k-NN distances of precision/recall/density/coverage keep the input dtype (float32 from every
extractor: about half KID's float64 time, half the memory and time of the distances on GPU).

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to features. Biased by n
  (larger n -> lower), so only compare at equal sample counts. tr((S1 S2)^1/2) is taken from the
  eigenvalues of the symmetric PSD matrix S1^1/2 S2 S1^1/2 (same spectrum as S1 S2), which stays
  real and stable when a covariance is singular (n <= d) -- unlike scipy.linalg.sqrtm / eigvals.
- KID (Binkowski et al. 2018): unbiased MMD^2, kernel (gamma x.y + coef)^degree, gamma = 1/d,
  mean and population std over random subsets (torch-fidelity / torchmetrics convention).
- IS (Salimans et al. 2016): exp(E KL(p(y|x) || p(y))) per split, torch-fidelity convention
  (seeded shuffle, splits at i*n//splits, population std).
- Improved precision / recall (Kynkäänniemi et al. 2019), k-th NN radii excluding self, "<=".
- Density / coverage (Naeem et al. 2020), following the authors' `prdc` code (strict "<").
Pairwise distances are computed in row blocks, so 10k x 10k sets never materialise a full matrix.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

# Upper bound on elements of one block of pairwise distances / kernel values (16 MB in float32).
# Measured on 2 cores (10,000 x 10,000 features of 128): 4M-element blocks made precision / recall /
# density / coverage 1.3x and the real k-NN radii 1.8x faster than 16M (the blocks are read several
# times and stay in the last-level cache); 1M and smaller were slower again (small matmuls).
_BLOCK_ELEMS = 1 << 22

DEFAULT_METRICS = ("fid", "kid", "is", "pr", "dc")  # what --metrics auto computes
ALL_METRICS = DEFAULT_METRICS + ("fid_inf", "cmmd")


# ----------------------------------------------------------------------------- input checks
def _features(x, name: str) -> torch.Tensor:
    """Validate a feature matrix: 2-D, real, finite. Returns a tensor (not copied when possible)."""
    x = torch.as_tensor(x)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected real features, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (n, d), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.double()
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(f"{name}: {bad} non-finite (NaN/Inf) entries; refusing to compute a metric")
    return x


def _pair(real, fake) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = _features(real, "real features"), _features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    dtype = torch.promote_types(real.dtype, fake.dtype)
    return real.to(dtype), fake.to(device=real.device, dtype=dtype)


# ----------------------------------------------------------------------------- FID
class RunningStats:
    """Streaming mean / covariance (ddof=1) of features, batch by batch, in float64.

    Accumulates the sum and the sum of outer products of (x - c), with c the mean of the first batch:
    the shift leaves the covariance unchanged but avoids the cancellation of sum(x x^T) - n mu mu^T
    when |mean| >> std. Memory is O(d^2) whatever the number of samples.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift = self._sum = self._outer = None

    def update(self, batch) -> "RunningStats":
        x = _features(batch, "feature batch").double()
        if x.shape[0] == 0:
            return self
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._outer = x.new_zeros(x.shape[1], x.shape[1])
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature batch has dim {x.shape[1]}, expected {self._shift.shape[0]}")
        xc = x.to(self._shift.device) - self._shift
        self._sum += xc.sum(0)
        self._outer += xc.T @ xc
        self.n += x.shape[0]
        return self

    @property
    def dim(self) -> int | None:
        return None if self._shift is None else int(self._shift.shape[0])

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (mu, sigma) in float64, equal to np.mean(axis=0) and np.cov(rowvar=False)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.n}")
        if self.n <= self.dim:
            warnings.warn(
                f"{self.n} samples for {self.dim}-dim features: the covariance is singular "
                "(FID is still finite but strongly biased; use n > d)", stacklevel=2)
        m = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return self._shift + m, (sigma + sigma.T) / 2


def feature_stats(feats, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of features in float64 (unbiased covariance), streamed in row batches."""
    feats = _features(feats, "features")
    stats = RunningStats()
    for i in range(0, feats.shape[0], batch_size):
        stats.update(feats[i:i + batch_size])
    return stats.compute()


def _sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix via eigh (negative round-off eigenvalues -> 0)."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _trace_sqrt_product(sqrt1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)); the latter is symmetric PSD."""
    m = sqrt1 @ sigma2 @ sqrt1
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()


def _stats_args(mu1, sigma1, mu2, sigma2):
    out = []
    for name, t, nd in (("mu1", mu1, 1), ("sigma1", sigma1, 2), ("mu2", mu2, 1), ("sigma2", sigma2, 2)):
        t = torch.as_tensor(t)
        if t.is_complex():
            raise TypeError(f"{name} is complex")
        t = t.double()
        if t.ndim != nd or (nd == 2 and t.shape[0] != t.shape[1]):
            raise ValueError(f"{name}: bad shape {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN/Inf")
        out.append(t.to(out[0].device) if out else t)
    d = out[0].shape[0]
    if any(t.shape[0] != d for t in out):
        raise ValueError(f"inconsistent shapes: {[tuple(t.shape) for t in out]}")
    return out


def _fid_value(mu1, sigma1, mu2, sigma2, sqrt2) -> float:
    """FID given sqrt2 = sigma2^1/2 (precomputed once when sigma2 is a fixed reference)."""
    value = ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace()
             - 2 * _trace_sqrt_product(sqrt2, sigma1)).item()
    if not np.isfinite(value):
        raise FloatingPointError(f"FID evaluated to {value}; check the feature scale")
    # FID is a squared W2 distance, >= 0; only round-off (~1e-12 * trace) can push it below.
    return max(value, 0.0)


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), computed in float64."""
    mu1, sigma1, mu2, sigma2 = _stats_args(mu1, sigma1, mu2, sigma2)
    return _fid_value(mu1, sigma1, mu2, sigma2, _sqrtm_psd(sigma2))


def fid(feats_real, feats_fake) -> float:
    """FID between two feature sets (n_real, d) and (n_fake, d)."""
    real, fake = _pair(feats_real, feats_fake)
    return fid_from_stats(*feature_stats(real), *feature_stats(fake))


def bootstrap_fid(real, fake, n_boot: int = 100, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of FID (default 95%) by resampling the fake features with replacement.

    Real statistics are fixed (the reference set). Caveat: a resample with replacement holds only
    ~63% distinct rows, and FID's small-n bias grows as distinct rows shrink, so when n is not >> d
    the whole interval can sit ABOVE fid(real, fake) (e.g. d=512, n=1000: FID 3042, interval
    4259-4538). Read it as the sampling spread of FID at this n, and compare intervals only at equal n.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    real, fake = _pair(real, fake)
    mu_r, sigma_r = feature_stats(real)
    sqrt_r = _sqrtm_psd(sigma_r)
    n, d = fake.shape
    if n <= d:
        warnings.warn(f"bootstrap over {n} fake samples of dim {d}: singular covariance", stacklevel=2)
    gen = torch.Generator().manual_seed(seed)
    values = []
    with warnings.catch_warnings():  # warned once above, not once per resample
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = torch.randint(n, (n,), generator=gen).to(fake.device)
            mu_f, sigma_f = feature_stats(fake[idx])
            values.append(_fid_value(mu_f, sigma_f, mu_r, sigma_r, sqrt_r))
    alpha = 100 * (1 - level) / 2
    low, high = np.percentile(values, [alpha, 100 - alpha])
    return float(low), float(high)


# ----------------------------------------------------------------------------- KID
def _kernel_sum(x, y, degree, gamma, coef, drop_diag=False) -> torch.Tensor:
    """Sum of k(x_i, y_j) over all pairs, in row blocks: kernel values in x's dtype, each row summed in
    it and the row sums in float64 (one float32 sum of all 1e6 values lost 1e-8 relative, which
    KID's cancellation magnifies; a float64 sum of them all costs a float64 copy); drop_diag removes
    k(x_i, x_i) (x is y)."""
    rows = max(1, _BLOCK_ELEMS // max(1, y.shape[0]))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], rows):
        total += (x[i:i + rows] @ y.T).mul_(gamma).add_(coef).pow_(degree).sum(1).sum(dtype=torch.float64)
    if drop_diag:
        total -= (x.square().sum(1) * gamma + coef).pow(degree).sum(dtype=torch.float64)
    return total


def kid(feats_real, feats_fake, n_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef: float = 1, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with kernel (gamma x.y + coef)^degree (gamma=1/d) -> (mean, std) over subsets.

    Kernel values are computed in the features' precision (float32 from every extractor; float16 /
    bfloat16 are raised to float32) and summed in float64, about half the all-float64 time. Float32
    dot products of dense positive features run ~2e-7 high, so KID can move by up to ~1e-6 x the
    mean kernel value: measured 2e-9 on genlab-mnist features of MNIST (KID 0.004, subset std 0.2),
    9e-6 on a dense synthetic case (tests/test_metrics.py) -- always far below the subset std. On
    CUDA this assumes TF32 matmul is off, torch's default.
    """
    real, fake = _pair(feats_real, feats_fake)
    if real.dtype not in (torch.float32, torch.float64):
        real, fake = real.float(), fake.float()
    n_min = min(real.shape[0], fake.shape[0])
    if n_min < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {real.shape[0]} and {fake.shape[0]}")
    if subset_size > n_min:
        warnings.warn(f"KID subset_size {subset_size} > min(n_real, n_fake) = {n_min}; using {n_min}",
                      stacklevel=2)
        subset_size = n_min
    if subset_size < 2 or n_subsets < 1:
        raise ValueError(f"need subset_size >= 2 and n_subsets >= 1, got {subset_size}, {n_subsets}")
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    gen = torch.Generator().manual_seed(seed)
    m = subset_size
    scores = []
    for _ in range(n_subsets):
        x = real[torch.randperm(real.shape[0], generator=gen)[:m].to(real.device)]
        y = fake[torch.randperm(fake.shape[0], generator=gen)[:m].to(fake.device)]
        kxx = _kernel_sum(x, x, degree, gamma, coef, drop_diag=True)
        kyy = _kernel_sum(y, y, degree, gamma, coef, drop_diag=True)
        kxy = _kernel_sum(x, y, degree, gamma, coef)
        scores.append(((kxx + kyy) / (m * (m - 1)) - 2 * kxy / (m * m)).item())
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- IS
def inception_score(probs, splits: int = 10, shuffle: bool = True, seed: int = 0) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split -> (mean, population std) over splits.

    `probs` are class probabilities (n, C) (softmax already applied). Rows are shuffled with a fixed
    seed first (as torch-fidelity does) so class-ordered samples do not make per-class splits.
    """
    p = _features(probs, "probs").double()
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-3):
        raise ValueError("probs must be non-negative rows summing to 1 (apply softmax to logits)")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, n={n}], got {splits}")
    if shuffle:
        p = p[torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(p.device)]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, py)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- PR / DC
def _blocks(queries, centres):
    """Yield (first row, cdist(query block, centres)) over row blocks of `queries`.

    Convention used throughout: a ball's radius and the tests of who falls in it are read from the
    same side of the matrix -- real balls from its COLUMNS (real-real and fake x real matrices), fake
    balls from its ROWS (fake-fake and the same fake x real matrix). cdist's fast matmul path is not
    bitwise symmetric (d(a, b) != d(b, a) in the last bits), so mixing sides would let a point that
    coincides with a k-th neighbour fall in or out of a ball by round-off (e.g. density != 1 for
    fake == real). One fake x real matrix then serves all four metrics.
    """
    rows = max(1, _BLOCK_ELEMS // max(1, centres.shape[0]))
    for i in range(0, queries.shape[0], rows):
        yield i, torch.cdist(queries[i:i + rows], centres)


def _check_ks(ks, n: int) -> None:
    if min(ks) < 1 or max(ks) >= n:
        raise ValueError(f"k must be in [1, n-1] with n={n}, got {sorted(set(ks))}")


def knn_radii(x, ks) -> dict[int, torch.Tensor]:
    """Distance from each row of x to its k-th nearest other row, for each k in ks (streamed), read
    down the COLUMNS of the distance matrix: the real balls' side (see _blocks)."""
    _check_ks(ks, x.shape[0])
    kmax = max(ks)
    best = x.new_empty(0, x.shape[0])  # running kmax+1 smallest distances to each column point
    for _, d in _blocks(x, x):
        both = torch.cat([best, d])
        best = both.topk(min(kmax + 1, both.shape[0]), dim=0, largest=False).values
    # Self (distance 0) is among the k+1 smallest, so the (k+1)-th smallest is the k-th neighbour.
    return {k: best[k] for k in ks}


def _row_radii(x, k: int) -> torch.Tensor:
    """knn_radii read along the ROWS of the distance matrix: the fake balls' side (see _blocks).
    A row's k+1 smallest lie in one block, and topk along rows is ~2x faster than down columns."""
    _check_ks([k], x.shape[0])
    return torch.cat([d.topk(k + 1, dim=1, largest=False).values[:, k] for _, d in _blocks(x, x)])


def _manifold_metrics(real, fake, pr_k: int | None, dc_k: int | None, real_radii: dict | None = None) -> dict[str, float]:
    """Precision/recall (k=pr_k) and/or density/coverage (k=dc_k) from ONE pass over the fake x real
    distances (plus the k-NN passes for the radii); `real_radii` {k: radii}: the real features' k-NN
    radii when already known (cached with a reference)."""
    real, fake = _pair(real, fake)
    ks = [k for k in (pr_k, dc_k) if k]
    r_rad = {k: v.to(real) for k, v in (real_radii or {}).items() if k in ks}
    if len(r_rad) < len(set(ks)):
        r_rad.update(knn_radii(real, [k for k in ks if k not in r_rad]))
    f_rad = _row_radii(fake, pr_k) if pr_k else None
    in_real = in_dense = 0
    in_fake = torch.zeros_like(real[:, 0], dtype=torch.bool)  # real points inside some fake ball
    nearest_fake = torch.full_like(real[:, 0], float("inf"))
    for i, d in _blocks(fake, real):  # fake rows, real columns
        if pr_k:
            in_real += (d <= r_rad[pr_k]).any(1).sum().item()
            in_fake |= (d <= f_rad[i:i + d.shape[0], None]).any(0)
        if dc_k:
            in_dense += torch.count_nonzero(d < r_rad[dc_k]).item()  # 3x a .sum() of bools
            nearest_fake = torch.minimum(nearest_fake, d.amin(0))
    out = {}
    if pr_k:
        out.update(precision=in_real / fake.shape[0], recall=in_fake.double().mean().item())
    if dc_k:
        coverage = (nearest_fake < r_rad[dc_k]).double().mean().item()
        out.update(density=in_dense / (dc_k * fake.shape[0]), coverage=coverage)
    return out


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019) with k-NN radii."""
    out = _manifold_metrics(real, fake, k, None)
    return out["precision"], out["recall"]


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    """Density / coverage (Naeem et al. 2020) with k-NN radii of the real features."""
    out = _manifold_metrics(real, fake, None, k)
    return out["density"], out["coverage"]


# ----------------------------------------------------------------------------- all at once
def compute_all(real_feats, fake_feats, fake_probs=None, metrics=DEFAULT_METRICS, *,
                kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                pr_k: int = 3, dc_k: int = 5, n_boot: int = 0, seed: int = 0,
                real_radii: dict | None = None) -> dict[str, float]:
    """Every requested metric from one set of features.

    metrics: subset of ALL_METRICS. Keys: fid, kid_mean, kid_std, is_mean, is_std, precision, recall,
    density, coverage, fid_inf (+ fid_inf_se, fid_inf_slope, fid_inf_points), cmmd; plus fid_ci_low /
    fid_ci_high when n_boot > 0 (95% interval). fid_inf and cmmd: eval/sample_size.py.
    """
    metrics = tuple(metrics)
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
    if "is" in metrics and fake_probs is None:
        raise ValueError("'is' requested but fake_probs is None: pass classifier probabilities "
                         "for the fake samples or drop 'is' from metrics")
    if n_boot and "fid" not in metrics:
        raise ValueError("n_boot > 0 asks for a FID interval but 'fid' is not in metrics")
    real, fake = _pair(real_feats, fake_feats)
    out: dict[str, float] = {}
    if "fid" in metrics:
        out["fid"] = fid(real, fake)
        if n_boot:
            out["fid_ci_low"], out["fid_ci_high"] = bootstrap_fid(real, fake, n_boot=n_boot, seed=seed)
    if "kid" in metrics:
        out["kid_mean"], out["kid_std"] = kid(real, fake, n_subsets=kid_subsets,
                                              subset_size=kid_subset_size, seed=seed)
    if "is" in metrics:
        out["is_mean"], out["is_std"] = inception_score(fake_probs, splits=is_splits)
    if "pr" in metrics or "dc" in metrics:
        out.update(_manifold_metrics(real, fake, pr_k if "pr" in metrics else None,
                                     dc_k if "dc" in metrics else None, real_radii))
    if "fid_inf" in metrics or "cmmd" in metrics:
        from .sample_size import cmmd, fid_infinity

        if "fid_inf" in metrics:
            out.update(fid_infinity(real, fake, seed=seed))
        if "cmmd" in metrics:
            out["cmmd"] = cmmd(real, fake)
    return out
