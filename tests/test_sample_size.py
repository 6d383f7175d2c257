"""FID-infinity and CMMD (eval/sample_size.py) against constructed cases and independent computations,
and through `genlab eval --metrics fid_inf,cmmd`."""
import math
import statistics

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from genlab.eval.metrics import compute_all
from genlab.eval.sample_size import cmmd, fid_infinity, linear_fit


def _whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """n points whose sample mean is exactly 0 and sample covariance exactly I."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    return x @ torch.linalg.inv(chol).T


def test_linear_fit_recovers_a_line_and_its_error():
    x = np.linspace(0.1, 1, 15)
    a, b, se = linear_fit(x, 3 + 2 * x)
    assert (a, b) == pytest.approx((3, 2)) and se == pytest.approx(0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = 3 + 2 * x + rng.normal(0, 0.1, x.size)
    a, _, se = linear_fit(x, noisy)
    design = np.stack([np.ones_like(x), x], 1)  # the textbook formula, computed independently
    resid = noisy - design @ np.linalg.lstsq(design, noisy, rcond=None)[0]
    expected_se = math.sqrt((resid @ resid) / (x.size - 2) * np.linalg.inv(design.T @ design)[0, 0])
    assert se == pytest.approx(expected_se, rel=1e-10)


def test_fid_infinity_removes_the_small_sample_bias_on_gaussian_features():
    """Real features with exactly N(0, I) statistics; fakes drawn from N(mu, I), so the limit FID is
    |mu|^2 = 0.25 while FID(n) = 0.25 + c / n in expectation (c large in 32 dimensions). Over 20
    independent fake sets, FID-infinity is within 2 standard errors of the mean of 0.25, while plain
    FID at the largest n is biased by more than 10 of them."""
    d, mu = 32, torch.zeros(32, dtype=torch.float64)
    mu[0] = 0.5
    real = _whitened(20000, d, 0)
    estimates, largest_n = [], []
    for seed in range(20):
        fake = torch.randn(10000, d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64) + mu
        out = fid_infinity(real, fake, seed=seed)
        assert [n for n, _ in out["fid_inf_points"]] == sorted({int(round(v)) for v in np.linspace(1000, 10000, 15)})
        assert out["fid_inf_slope"] > 0 and out["fid_inf_se"] > 0
        estimates.append(out["fid_inf"])
        largest_n.append(out["fid_inf_points"][-1][1])
    sem = statistics.stdev(estimates) / math.sqrt(len(estimates))
    assert abs(statistics.mean(estimates) - 0.25) < 2 * sem
    assert statistics.mean(largest_n) - 0.25 > 10 * sem


def test_fid_infinity_needs_three_sample_sizes():
    with pytest.raises(ValueError, match="3 distinct"):
        fid_infinity(torch.randn(50, 2), torch.randn(3, 2))


def test_cmmd_closed_form_for_point_masses():
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, -2.0]])  # unit vectors (0.6, 0.8), (0, -1)
    d2 = (0.6 - 0) ** 2 + (0.8 + 1) ** 2
    expected = 1000 * (2 - 2 * math.exp(-d2 / (2 * 10.0 ** 2)))
    assert cmmd(a.repeat(5, 1), b.repeat(7, 1)) == pytest.approx(expected, rel=1e-12)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    assert cmmd(x, x) == pytest.approx(0, abs=1e-9)


def test_cmmd_against_scipy():
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g) * 1.3 + 0.2
    r = real.double().numpy() / np.linalg.norm(real.double().numpy(), axis=1, keepdims=True)
    f = fake.double().numpy() / np.linalg.norm(fake.double().numpy(), axis=1, keepdims=True)

    def k(x, y):
        return np.exp(-cdist(x, y, "sqeuclidean") / 200).mean()

    expected = 1000 * (k(r, r) + k(f, f) - 2 * k(r, f))
    assert cmmd(real, fake) == pytest.approx(expected, rel=1e-9)
    assert cmmd(fake, real) == pytest.approx(expected, rel=1e-9)


def test_compute_all_adds_them_only_when_asked():
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g) + 0.1
    default = compute_all(real, fake, torch.full((400, 4), 0.25))
    assert "fid" in default and "fid_inf" not in default and "cmmd" not in default
    out = compute_all(real, fake, metrics=("fid", "fid_inf", "cmmd"))
    assert out["cmmd"] == pytest.approx(cmmd(real, fake)) and out["fid_inf"] == fid_infinity(real, fake)["fid_inf"]


def test_fid_inf_through_the_cli_and_the_dashboard(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from genlab.cli import app
    from genlab.config import DataConfig
    from genlab.eval.reference import load_real

    monkeypatch.setenv("GENLAB_CACHE", str(tmp_path / "cache"))
    images = load_real(DataConfig(name="mnist"), "train", 1200, seed=5)[0]  # "samples": real train digits
    np.savez(tmp_path / "digits.npz", images.permute(0, 2, 3, 1).numpy())
    res = CliRunner().invoke(app, ["eval", "--fake", str(tmp_path / "digits.npz"), "--metrics", "fid,fid_inf,cmmd",
                                   "--run-dir", str(tmp_path / "digits"), "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "digits" / "eval.json").read_text())[0]["metrics"]
    assert len(m["fid_inf_points"]) == 15 and m["fid_inf_points"][-1][0] == 1200
    assert m["fid_inf"] < m["fid"] and m["cmmd"] >= 0  # the n-bias removed from real-vs-real FID
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "digits"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert "<h2>FID-infinity</h2>" in page and 'alt="FID-infinity fits"' in page and "FID-inf" in page
