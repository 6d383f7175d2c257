"""Mode-collapse diagnostics as pure functions over points, class probabilities and features.

No networks and no sampling here (genlab.eval.diagnose does that); every function takes tensors
and returns plain Python numbers, so each can be tested on constructed inputs with known answers.
Protocols follow the papers that introduced them (PacGAN, Lin et al. 2018, Sec. 5; VEEGAN,
Srivastava et al. 2017, Sec. 5; NDB, Richardson & Weiss 2018):

- 2-D mixtures (PacGAN / VEEGAN): a point is *high quality* if it lies within 3 std of its nearest
  mode centre; a mode is *captured* if it is the nearest mode of at least one high-quality point;
  the *reverse KL* is KL(generated mode histogram over high-quality points || uniform).
  Note: "within 3 std" of a 2-D isotropic Gaussian holds with probability P(chi2_2 <= 9) =
  1 - exp(-4.5) = 98.89%, not the 1-D 99.73%, so a perfect generator scores ~98.9% HQ.
- Class coverage (MNIST-like data): histogram of the classifier's argmax over generated samples,
  KL to uniform and to the training label distribution, and the share of confident predictions.
- Stacked MNIST (PacGAN / VEEGAN): mode = 100 d_R + 10 d_G + d_B from a classifier per channel;
  modes hit (at least one sample) out of 1,000 and KL(generated mode histogram || uniform).
- NDB / JSD (Richardson & Weiss 2018): K-means bins fitted on real samples, two-proportion z-test
  per bin (pooled proportion, two-sided, alpha 0.05), number of statistically different bins and the
  Jensen-Shannon divergence (natural log, so at most log 2) between the two bin histograms.
- Memorisation: nearest-neighbour distances of generated samples to the training set against the
  same distances for held-out test samples. A *near-copy* is a generated sample whose NN distance is
  at most the 1st percentile of the test-to-train NN distances (so ~1% of genuinely new samples
  would be flagged, and exact copies, at distance 0, always are).

All KLs and JSDs are in nats.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

CONFIDENT = 0.9  # a prediction is "confident" when its max class probability is >= this
COVERED_SHARE = 0.1  # class coverage: a class is covered with >= 10% of its uniform share of samples
NEAR_COPY_QUANTILE = 0.01  # near-copy threshold: this quantile of test-to-train NN distances
_BLOCK_ELEMS = 1 << 24  # pairwise-distance blocks of at most this many elements


# ----------------------------------------------------------------------------- histograms and KL
def histogram(labels: Tensor, num_bins: int) -> Tensor:
    """Counts (int64, (num_bins,)) of integer labels in 0..num_bins-1."""
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_bins):
        raise ValueError(f"labels must lie in 0..{num_bins - 1}, got range {labels.min()}..{labels.max()}")
    return torch.bincount(labels, minlength=num_bins)


def kl_divergence(p, q) -> float:
    """KL(p || q) in nats between two histograms (normalised here); 0 log 0 = 0, inf where q = 0 < p."""
    p, q = _normalise(p), _normalise(q)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in length: {p.numel()} vs {q.numel()}")
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float((p[support] * (p[support] / q[support]).log()).sum())


def kl_to_uniform(counts) -> float:
    """KL(counts / sum || uniform) = log K - H(p): 0 for a balanced histogram, log K for one bin."""
    counts = torch.as_tensor(counts)
    return kl_divergence(counts, torch.ones(counts.numel(), dtype=torch.float64))


def js_divergence(p, q) -> float:
    """Jensen-Shannon divergence in nats (in [0, log 2]) between two histograms."""
    p, q = _normalise(p), _normalise(q)
    m = (p + q) / 2
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def _normalise(h) -> Tensor:
    h = torch.as_tensor(h, dtype=torch.float64).reshape(-1).cpu()
    if (h < 0).any() or h.sum() <= 0:
        raise ValueError("a histogram needs non-negative entries and a positive total")
    return h / h.sum()


# ----------------------------------------------------------------------------- 2-D mixtures
def chi2_2d_within(k: float) -> float:
    """P(|x - mu| <= k std) for an isotropic 2-D Gaussian: 1 - exp(-k^2 / 2) (98.89% at k = 3)."""
    return 1.0 - math.exp(-k * k / 2)


def mixture_metrics(points: Tensor, centres: Tensor, std: float, sigmas: float = 3.0) -> dict:
    """PacGAN's protocol on generated 2-D points (n, 2) for a mixture with `centres` (K, 2).

    Returns modes (captured, out of K), num_modes, hq_rate (share of points within `sigmas` std of
    their nearest centre), reverse_kl (KL of the mode histogram of high-quality points to uniform;
    inf if there are none) and counts (high-quality points per mode)."""
    points = torch.as_tensor(points).double().cpu()
    centres = torch.as_tensor(centres).double().cpu()
    if points.ndim != 2 or points.shape[1] != 2 or centres.ndim != 2 or centres.shape[1] != 2:
        raise ValueError(f"expected points (n, 2) and centres (K, 2), got {tuple(points.shape)} and {tuple(centres.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("generated points contain NaN/Inf")
    dist, nearest = torch.cdist(points, centres).min(1)
    hq = dist <= sigmas * std
    counts = histogram(nearest[hq], len(centres))
    return {"modes": int((counts > 0).sum()), "num_modes": len(centres),
            "hq_rate": float(hq.double().mean()) if len(points) else 0.0,
            "reverse_kl": kl_to_uniform(counts) if hq.any() else math.inf,
            "counts": counts.tolist()}


# ----------------------------------------------------------------------------- class coverage
def class_coverage(probs: Tensor, train_labels: Tensor | None = None, confident: float = CONFIDENT,
                   covered_share: float = COVERED_SHARE) -> dict:
    """Class coverage from classifier probabilities (n, C) of generated samples.

    counts: argmax histogram; classes_covered: classes receiving at least `covered_share` of their
    uniform share (n / C) of samples, so a few stray misclassifications do not count as coverage;
    kl_uniform: KL(generated || uniform); kl_train: KL(generated || training label distribution)
    when `train_labels` (int labels, or a float histogram of length C) is given; confident_rate: share of
    samples with max probability >= `confident`."""
    probs = torch.as_tensor(probs).double().cpu()
    if probs.ndim != 2:
        raise ValueError(f"expected probabilities (n, C), got shape {tuple(probs.shape)}")
    n, c = probs.shape
    conf, pred = probs.max(1)
    counts = histogram(pred, c)
    out = {"num_classes": c, "n": n, "counts": counts.tolist(),
           "classes_covered": int((counts >= covered_share * n / c).sum()),
           "kl_uniform": kl_to_uniform(counts), "confident_rate": float((conf >= confident).double().mean()),
           "confident_threshold": confident}
    if train_labels is not None:
        ref = torch.as_tensor(train_labels)
        # float -> already a histogram / distribution over the C classes; int -> raw labels
        out["kl_train"] = kl_divergence(counts, ref if ref.is_floating_point() else histogram(ref, c))
    return out


# ----------------------------------------------------------------------------- stacked MNIST
def stacked_mode_ids(channel_labels: Tensor, base: int = 10) -> Tensor:
    """(n, 3) digit labels (R, G, B) -> mode ids 100 d_R + 10 d_G + d_B."""
    lab = torch.as_tensor(channel_labels).long()
    if lab.ndim != 2:
        raise ValueError(f"expected per-channel labels (n, channels), got shape {tuple(lab.shape)}")
    weights = base ** torch.arange(lab.shape[1] - 1, -1, -1)
    return (lab * weights).sum(1)


def stacked_modes(channel_labels: Tensor, base: int = 10) -> dict:
    """Modes hit (>= 1 sample) out of base^channels and KL(mode histogram || uniform)."""
    lab = torch.as_tensor(channel_labels)
    num = base ** lab.shape[1]
    counts = histogram(stacked_mode_ids(lab, base), num)
    return {"modes": int((counts > 0).sum()), "num_modes": num, "kl_uniform": kl_to_uniform(counts),
            "n": int(lab.shape[0])}


# ----------------------------------------------------------------------------- NDB / JSD
def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)[None]).clamp_min_(0)


def _nearest(x: Tensor, centres: Tensor) -> Tensor:
    rows = max(1, _BLOCK_ELEMS // max(1, len(centres)))
    return torch.cat([_sq_dists(x[i:i + rows], centres).argmin(1) for i in range(0, len(x), rows)])


def kmeans(x: Tensor, k: int, seed: int = 0, iters: int = 100) -> Tensor:
    """Seeded K-means (k-means++ initialisation, Lloyd iterations) -> (k, d) centres.

    Deterministic for a given seed (own CPU generator; the global RNG is not touched). An empty
    cluster is re-seeded with the point farthest from its centre."""
    x = torch.as_tensor(x).float().cpu().reshape(len(x), -1)  # float32: pixel-space inputs can be wide
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means needs 1 <= k <= n, got k={k}, n={len(x)}")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=g)]
    d2 = _sq_dists(x, centres)[:, 0]
    for _ in range(1, k):  # k-means++: next centre drawn with probability proportional to D^2
        p = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        nxt = x[torch.multinomial(p, 1, generator=g)]
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, _sq_dists(x, nxt)[:, 0])
    assign = None
    for _ in range(iters):
        new = _nearest(x, centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        size = torch.bincount(assign, minlength=k)
        centres = torch.where(size[:, None] > 0, sums / size.clamp_min(1)[:, None], centres)
        for j in (size == 0).nonzero().flatten().tolist():
            far = ((x - centres[assign]) ** 2).sum(1).argmax()
            centres[j] = x[far]
            assign[far] = j
    return centres


def ndb_jsd(real: Tensor, fake: Tensor, k: int = 100, alpha: float = 0.05, seed: int = 0,
            centres: Tensor | None = None) -> dict:
    """Number of statistically different bins (Richardson & Weiss 2018) and the bin-histogram JSD.

    K-means (k bins) is fitted on `real` (or `centres` given), both sets are assigned to their
    nearest centre, and each bin's proportions are compared with a two-sided two-proportion z-test
    with pooled variance at level `alpha`. Returns ndb (count), ndb_frac (ndb / k), jsd, the flagged
    bins and both proportion vectors. For two samples of one distribution ndb/k is ~alpha."""
    real = torch.as_tensor(real).float().cpu().reshape(len(real), -1)
    fake = torch.as_tensor(fake).float().cpu().reshape(len(fake), -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    centres = kmeans(real, k, seed) if centres is None else torch.as_tensor(centres).float().cpu()
    k = len(centres)
    n1, n2 = len(real), len(fake)
    p1 = histogram(_nearest(real, centres), k).double() / n1
    p2 = histogram(_nearest(fake, centres), k).double() / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = (pooled * (1 - pooled) * (1 / n1 + 1 / n2)).sqrt()
    z = torch.where(se > 0, (p1 - p2) / se.clamp_min(1e-300), torch.zeros_like(se))
    p_value = torch.erfc(z.abs() / math.sqrt(2))  # two-sided
    different = p_value < alpha
    return {"ndb": int(different.sum()), "k": k, "ndb_frac": float(different.double().mean()),
            "jsd": js_divergence(p1, p2), "alpha": alpha, "n_real": n1, "n_fake": n2,
            "different_bins": different.nonzero().flatten().tolist(),
            "real_props": p1.tolist(), "fake_props": p2.tolist()}


# ----------------------------------------------------------------------------- memorisation
def nn_distances(query: Tensor, ref: Tensor) -> Tensor:
    """Euclidean distance (float64, (n,)) from each query row to its nearest row of `ref`.

    Blocked over both sets, so a uint8 reference (e.g. pixels in 0..255) is converted to float one
    block at a time and never held as a full float copy."""
    q = torch.as_tensor(query).reshape(len(query), -1)
    r = torch.as_tensor(ref).reshape(len(ref), -1).to(q.device)
    dtype = q.dtype if q.is_floating_point() else torch.float32
    q = q.to(dtype)
    best = torch.full((len(q),), math.inf, dtype=dtype, device=q.device)
    q_rows = max(1, min(len(q), 4096))
    r_rows = max(1, _BLOCK_ELEMS // q_rows)
    qq = (q * q).sum(1)
    for j in range(0, len(r), r_rows):
        rb = r[j:j + r_rows].to(dtype)
        rr = (rb * rb).sum(1)
        for i in range(0, len(q), q_rows):
            d2 = (qq[i:i + q_rows, None] - 2 * q[i:i + q_rows] @ rb.T + rr[None]).min(1).values
            best[i:i + q_rows] = torch.minimum(best[i:i + q_rows], d2)
    d = best.clamp_min(0).sqrt().double().cpu()
    # The expansion |q|^2 - 2 q.r + |r|^2 loses precision near 0: recompute exactly where the
    # distance is tiny relative to the norms, so exact copies come out as exactly 0.
    small = (d < 1e-3 * (q.norm(dim=1).double().cpu() + 1)).nonzero().flatten()
    if len(small):
        qs = q[small.to(q.device)].double()
        rows = max(1, _BLOCK_ELEMS // len(qs))
        exact = torch.stack([torch.cdist(qs, r[j:j + rows].double(), compute_mode="donot_use_mm_for_euclid_dist")
                             .min(1).values for j in range(0, len(r), rows)]).min(0).values
        d[small] = exact.cpu()
    return d


def memorisation(gen_to_train: Tensor, test_to_train: Tensor, quantile: float = NEAR_COPY_QUANTILE) -> dict:
    """Compare NN distances to the training set of generated vs held-out test samples.

    near_copy_rate: share of generated samples with NN distance <= threshold, where the threshold is
    the `quantile` of test-to-train distances (so held-out data scores ~`quantile` by construction);
    exact_copy_rate: share at distance 0; median_ratio: median gen distance / median test distance
    (well below 1 suggests the generator reproduces training examples)."""
    g = torch.as_tensor(gen_to_train).double().reshape(-1)
    t = torch.as_tensor(test_to_train).double().reshape(-1)
    threshold = float(torch.quantile(t, quantile))
    t_med = float(t.median())
    return {"near_copy_rate": float((g <= threshold).double().mean()), "threshold": threshold,
            "quantile": quantile, "exact_copy_rate": float((g == 0).double().mean()),
            "gen_median": float(g.median()), "test_median": t_med,
            "median_ratio": float(g.median()) / t_med if t_med > 0 else math.inf,
            "n_gen": len(g), "n_test": len(t)}
