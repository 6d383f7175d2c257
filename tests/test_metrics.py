"""Sample-quality metrics: closed forms, invariants, and agreement with torchmetrics / scipy."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch
from torch import nn

from genlab.eval import metrics as M



def gauss(n, d, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def random_spd(d, seed, cond=10.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.geomspace(1.0, cond, d)) @ q.T


def scipy_fid(mu1, s1, mu2, s2):
    """Textbook formula with scipy.linalg.sqrtm (fine for well-conditioned inputs)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


class Identity(nn.Module):
    """Feature 'extractor' for torchmetrics: the inputs already are the features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d  # lets torchmetrics skip its dummy-image probe

    def forward(self, x):
        return x


# ----------------------------------------------------------------------------- RunningStats / FID
def test_running_stats_equals_numpy_cov_for_any_batch_size():
    x = gauss(301, 7, shift=1e4, seed=1)  # large mean: checks the cancellation-safe accumulation
    ref_mu, ref_cov = x.numpy().mean(0), np.cov(x.numpy(), rowvar=False)
    for bs in (1, 13, 100, 301):
        rs = M.RunningStats()
        for i in range(0, len(x), bs):
            rs.update(x[i:i + bs])
        mu, cov = rs.compute()
        assert rs.n == 301 and mu.dtype == torch.float64
        np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-12)
        np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-9, atol=1e-9)
    mu, cov = M.feature_stats(x.float(), batch_size=50)  # float32 input, float64 stats
    np.testing.assert_allclose(cov.numpy(), np.cov(x.float().double().numpy(), rowvar=False), rtol=1e-9)


def test_fid_of_a_set_with_itself_is_zero():
    x = gauss(500, 16)
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_from_stats_matches_scipy_sqrtm_closed_form():
    d = 12
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(d, 1), random_spd(d, 2)
    assert M.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    # symmetric in its two arguments
    assert M.fid_from_stats(mu2, s2, mu1, s1) == pytest.approx(M.fid_from_stats(mu1, s1, mu2, s2), rel=1e-9)


def test_fid_commuting_covariances_analytic():
    # Commuting S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FID = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    d = 10
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.5, 4, d), rng.uniform(0.5, 4, d)
    mu = rng.standard_normal(d)
    expected = float((mu ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert M.fid_from_stats(mu, np.diag(a), np.zeros(d), np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    assert M.fid_from_stats(mu, s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_gaussian_samples_matches_closed_form_on_their_stats_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    d = 16
    x, y = gauss(2000, d, seed=1), gauss(1500, d, shift=0.3, scale=1.2, seed=2)
    xn, yn = x.numpy(), y.numpy()
    expected = scipy_fid(xn.mean(0), np.cov(xn, rowvar=False), yn.mean(0), np.cov(yn, rowvar=False))
    value = M.fid(x, y)
    assert value == pytest.approx(expected, rel=1e-6)

    tm = FrechetInceptionDistance(feature=Identity(d))
    tm.update(x, real=True)
    tm.update(y, real=False)
    assert value == pytest.approx(tm.compute().item(), rel=1e-4)


def test_fid_invariant_to_sample_order_and_batching():
    x, y = gauss(400, 8, seed=4), gauss(300, 8, shift=0.5, seed=5)
    base = M.fid(x, y)
    g = torch.Generator().manual_seed(0)
    assert M.fid(x[torch.randperm(400, generator=g)], y[torch.randperm(300, generator=g)]) == \
        pytest.approx(base, rel=1e-9)
    for bs in (7, 64):
        assert M.fid_from_stats(*M.feature_stats(x, batch_size=bs), *M.feature_stats(y, batch_size=bs)) == \
            pytest.approx(base, rel=1e-9)


def test_fid_warns_when_fewer_samples_than_dims_and_stays_finite():
    x, y = gauss(20, 64, seed=6), gauss(20, 64, shift=1.0, seed=7)
    with pytest.warns(UserWarning, match="singular"):
        value = M.fid(x, y)
    assert np.isfinite(value) and value > 0
    with pytest.warns(UserWarning, match="singular"):
        # the eigh-based square root stays exact on a rank-19 covariance
        assert M.fid(x, x) == pytest.approx(0.0, abs=1e-8 * x.var(0).sum().item())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises(bad):
    x, y = gauss(50, 4), gauss(50, 4, seed=1)
    y[3, 2] = bad
    for fn in (M.fid, M.kid, M.precision_recall, M.density_coverage):
        with pytest.raises(ValueError, match="non-finite"):
            fn(x, y)
    s = torch.eye(4)
    s[0, 0] = bad
    with pytest.raises(ValueError, match="NaN"):
        M.fid_from_stats(torch.zeros(4), s, torch.zeros(4), torch.eye(4))


def test_bootstrap_fid_interval_is_ordered_deterministic_and_near_the_estimate():
    x, y = gauss(300, 6, seed=8), gauss(300, 6, shift=0.5, seed=9)
    low, high = M.bootstrap_fid(x, y, n_boot=50, seed=0)
    assert 0 < low < high
    assert (low, high) == M.bootstrap_fid(x, y, n_boot=50, seed=0)
    point = M.fid(x, y)
    width = high - low
    assert low - width < point < high + width


# ----------------------------------------------------------------------------- KID
def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    x, y = gauss(600, 16, seed=10), gauss(600, 16, seed=11)
    mean, std = M.kid(x, y, n_subsets=50, subset_size=200)
    assert abs(mean) < std  # unbiased: mean of 50 subsets is within 1 per-subset std of 0
    mean_s, std_s = M.kid(x, gauss(600, 16, shift=0.5, seed=12), n_subsets=50, subset_size=200)
    assert mean_s > 5 * std_s and mean_s > 0.05
    assert (mean, std) == M.kid(x, y, n_subsets=50, subset_size=200)  # seeded


def test_kid_matches_torchmetrics_on_full_subset():
    from torchmetrics.image.kid import KernelInceptionDistance

    d, n = 16, 300
    x, y = gauss(n, d, seed=13), gauss(n, d, shift=0.2, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that it buffers all features
        tm = KernelInceptionDistance(feature=Identity(d), subsets=1, subset_size=n)
    tm.update(x, real=True)
    tm.update(y, real=False)
    # subset_size = n and one subset: the random permutation cannot change the value
    ref = tm.compute()[0].item()
    mean, std = M.kid(x, y, n_subsets=1, subset_size=n)
    assert mean == pytest.approx(ref, rel=1e-9) and std == 0.0


def test_kid_of_float32_features_agrees_with_float64_within_stated_tolerance():
    """KID keeps float32 features in float32 (metrics.kid); the float64 path is the one checked
    against torchmetrics above. Float32 dot products of dense positive features run ~2e-7 high, so
    the stated bound is 1e-6 x the mean kernel value -- here 17, and still 1% of the subset std."""
    base = gauss(1200, 128, seed=30).relu() * 3
    for real, fake in [(base[:600], base[600:] * 1.02), (base[:600], base[600:] * 1.02 + 0.01)]:
        got = M.kid(real.float(), fake.float(), n_subsets=20, subset_size=300)
        ref = M.kid(real.float().double(), fake.float().double(), n_subsets=20, subset_size=300)
        mean_kernel = ((fake @ fake.T) / 128 + 1).pow(3).mean().item()
        assert abs(got[0] - ref[0]) < 1e-6 * mean_kernel and abs(got[0] - ref[0]) < 0.01 * ref[1]
        assert got[1] == pytest.approx(ref[1], rel=1e-3)
    low = M.kid(real.half(), fake.half(), n_subsets=2, subset_size=50)[0]  # half precision -> float32
    assert low == pytest.approx(M.kid(real.half().float(), fake.half().float(), n_subsets=2, subset_size=50)[0])


def test_kid_clips_subset_size_with_warning():
    x, y = gauss(80, 4), gauss(60, 4, seed=1)
    with pytest.warns(UserWarning, match="subset_size"):
        clipped = M.kid(x, y, n_subsets=3, subset_size=1000)
    assert clipped == M.kid(x, y, n_subsets=3, subset_size=60)


# ----------------------------------------------------------------------------- IS
def test_inception_score_confident_balanced_is_num_classes_and_uniform_is_one():
    c, splits = 10, 5
    labels = torch.arange(c).repeat(splits * 4)  # every split holds each class equally often
    onehot = nn.functional.one_hot(labels, c).double()
    mean, std = M.inception_score(onehot, splits=splits, shuffle=False)
    assert mean == pytest.approx(c, rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    assert M.inception_score(onehot, splits=1)[0] == pytest.approx(c, rel=1e-12)
    uniform = torch.full((200, c), 1.0 / c)
    assert M.inception_score(uniform)[0] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        M.inception_score(torch.randn(20, c))


def test_inception_score_matches_torchmetrics():
    from torchmetrics.image.inception import InceptionScore

    logits = gauss(400, 10, scale=3.0, seed=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = InceptionScore(feature=Identity(10), splits=1)  # takes logits, one split: no shuffle effect
    tm.update(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its std over a single split is NaN
        ref = tm.compute()[0].item()
    assert M.inception_score(logits.softmax(1), splits=1)[0] == pytest.approx(ref, rel=1e-9)


# ----------------------------------------------------------------------------- PR / DC
def two_blobs(n, d=2, seed=0, far=20.0):
    x = gauss(n, d, seed=seed)
    x[: n // 2, 0] += far
    return x


def test_precision_recall_extremes_and_subset_support():
    x = gauss(300, 4, seed=16)
    assert M.precision_recall(x, x) == (1.0, 1.0)
    x32 = gauss(400, 32, seed=31).float()
    assert M.precision_recall(x32, x32.clone()) == (1.0, 1.0)
    assert M.precision_recall(x, gauss(300, 4, shift=100.0, seed=17)) == (0.0, 0.0)
    real = two_blobs(600, seed=18)           # half the mass near (20, 0), half near (0, 0)
    fake = gauss(300, 2, seed=19)            # only the blob at the origin
    precision, recall = M.precision_recall(real, fake)
    assert precision > 0.95 and 0.3 < recall < 0.6


def test_density_coverage_extremes(monkeypatch):
    x = gauss(300, 4, seed=20)
    density, coverage = M.density_coverage(x, x)
    # with fake == real every point sits in exactly k real balls (strict "<" drops the k-th neighbour)
    assert coverage == 1.0 and density == pytest.approx(1.0, abs=1e-12)
    monkeypatch.setattr(M, "_BLOCK_ELEMS", 5000)  # also exact with float32, a copy, and many blocks
    x32 = gauss(400, 32, seed=29).float()
    assert M.density_coverage(x32, x32.clone()) == (1.0, 1.0)
    assert M.density_coverage(x, gauss(300, 4, shift=100.0, seed=21)) == (0.0, 0.0)
    density, coverage = M.density_coverage(two_blobs(600, seed=22), gauss(300, 2, seed=23))
    assert density > 0.5 and 0.3 < coverage < 0.6


def brute_force_prdc(real, fake, k_pr, k_dc):
    """Independent full-matrix numpy reference (Kynkäänniemi "<=", prdc "<")."""
    def kth(x, k):
        return np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, k]

    d_rf = scipy.spatial.distance.cdist(real, fake)
    r_pr, f_pr, r_dc = kth(real, k_pr), kth(fake, k_pr), kth(real, k_dc)
    return dict(
        precision=(d_rf <= r_pr[:, None]).any(0).mean(),
        recall=(d_rf <= f_pr[None, :]).any(1).mean(),
        density=(d_rf < r_dc[:, None]).sum(0).mean() / k_dc,
        coverage=(d_rf.min(1) < r_dc).mean(),
    )


def test_row_and_column_radii_agree():
    x = gauss(300, 6, seed=32).float()
    assert torch.allclose(M._row_radii(x, 3), M.knn_radii(x, [3])[3], rtol=1e-5, atol=1e-6)


def test_chunked_pr_dc_match_brute_force(monkeypatch):
    monkeypatch.setattr(M, "_BLOCK_ELEMS", 1000)  # forces many row blocks
    real, fake = gauss(250, 5, seed=24), gauss(200, 5, shift=0.3, scale=1.3, seed=25)
    ref = brute_force_prdc(real.numpy(), fake.numpy(), 3, 5)
    p, r = M.precision_recall(real, fake, k=3)
    dens, cov = M.density_coverage(real, fake, k=5)
    got = dict(precision=p, recall=r, density=dens, coverage=cov)
    assert got == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------- compute_all
def test_compute_all_matches_individual_functions():
    real, fake = gauss(300, 8, seed=26), gauss(250, 8, shift=0.2, seed=27)
    probs = gauss(250, 5, seed=28).softmax(1)
    out = M.compute_all(real, fake, probs, kid_subsets=10, kid_subset_size=100, n_boot=10)
    assert set(out) == {"fid", "fid_ci_low", "fid_ci_high", "kid_mean", "kid_std", "is_mean", "is_std",
                        "precision", "recall", "density", "coverage"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["fid"] == M.fid(real, fake)
    assert (out["fid_ci_low"], out["fid_ci_high"]) == M.bootstrap_fid(real, fake, n_boot=10, seed=0)
    assert (out["kid_mean"], out["kid_std"]) == M.kid(real, fake, n_subsets=10, subset_size=100)
    assert (out["is_mean"], out["is_std"]) == M.inception_score(probs)
    assert (out["precision"], out["recall"]) == M.precision_recall(real, fake)
    assert (out["density"], out["coverage"]) == M.density_coverage(real, fake)
    assert set(M.compute_all(real, fake, metrics=("pr",))) == {"precision", "recall"}


def test_compute_all_rejects_is_without_probs_and_unknown_metrics():
    x = gauss(50, 4)
    with pytest.raises(ValueError, match="fake_probs"):
        M.compute_all(x, x)
    with pytest.raises(ValueError, match="unknown"):
        M.compute_all(x, x, metrics=("fid", "lpips"))
