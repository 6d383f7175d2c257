"""Vector quantiser (nearest code, straight-through, EMA, dead-code restarts), VQ-VAE family and the
vqvae-prior second stage through the CLI."""
import json
import pytest
import torch
from typer.testing import CliRunner

from genlab import config as C
from genlab.cli import app
from genlab.config import ConfigError
from genlab.data import DataInfo
from genlab.families.base import build_family
from genlab.families.vqvae import code_cross_entropy
from genlab.nets.common import is_channels_last
from genlab.nets.quantizer import VectorQuantizer, perplexity


def _vq(**kw):
    torch.manual_seed(0)
    vq = VectorQuantizer(**{"n_codes": 6, "dim": 3, "dead_steps": 0, **kw})
    with torch.no_grad():
        vq.embed.copy_(torch.randn(6, 3))
        vq.embed_sum.copy_(vq.embed)
    return vq


def test_quantizer_picks_the_nearest_code():
    vq = _vq().eval()
    z = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, vq.embed.detach()).argmin(1)
    assert torch.equal(out.codes.flatten(), brute)
    torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1).reshape(-1, 3), vq.embed.detach()[brute])


def test_nearest_code_matches_float64_distances_at_the_default_size():
    """The default codebook (512 x 16) on a batch's 3136 encoder outputs: the one-matmul scores pick
    the float64 brute-force nearest code wherever the two nearest differ by more than float32 noise,
    and a duplicated code loses the tie to its first copy, as argmin does."""
    g = torch.Generator().manual_seed(5)
    vq = VectorQuantizer(n_codes=512, dim=16).eval()
    with torch.no_grad():
        vq.embed.copy_(torch.randn(512, 16, generator=g))
        vq.embed[300] = vq.embed[7]  # a tie: the first minimum (code 7) must win
    flat = torch.randn(3136, 16, generator=g)
    flat[:10] = vq.embed.detach()[7] + 1e-3 * torch.randn(10, 16, generator=g)
    d = torch.cdist(flat.double(), vq.embed.detach().double()) ** 2
    top2 = d.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4 * top2[:, 1]
    codes = vq.nearest(flat)
    assert clear.sum() > 3000 and torch.equal(codes[clear], d.argmin(1)[clear])
    assert torch.equal(codes[:10], torch.full((10,), 7))


def test_quantizer_stays_float32_under_bf16_autocast():
    """Nearest codes and the EMA codebook update are computed in float32 whatever the autocast: bf16
    distances pick other codes for close vectors (many here: 512 codes of 16 dims)."""
    z = torch.randn(8, 16, 7, 7, generator=torch.Generator().manual_seed(3))
    runs = {}
    for amp in (False, True):
        torch.manual_seed(0)
        vq = VectorQuantizer(n_codes=512, dim=16).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = vq(z)
            codes = vq.codes_of(z)
        runs[amp] = (out.codes, codes, vq.embed_sum.clone(), out.z_q.dtype)
    assert torch.equal(runs[False][0], runs[True][0]) and torch.equal(runs[False][1], runs[True][1])
    torch.testing.assert_close(runs[False][2], runs[True][2])
    assert runs[True][3] == torch.float32


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    vq = _vq().eval()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.randn(2, 3, 4, 4)
    (vq(z).z_q * w).sum().backward()
    torch.testing.assert_close(z.grad, w)  # d z_q / d z_e = identity


def test_commitment_and_codebook_losses():
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    vq = _vq(update="loss", beta=0.25).eval()
    out = vq(z)
    zq = vq.embed.detach()[out.codes.flatten()].view(1, 2, 2, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.loss, 1.25 * ((z - zq) ** 2).mean())
    out.loss.backward()
    assert vq.embed.grad is not None and vq.embed.grad.abs().sum() > 0  # the codebook loss moves codes
    assert not _vq(update="ema").embed.requires_grad  # EMA codebooks are not optimised


def test_ema_update_matches_a_hand_computation():
    vq = _vq(decay=0.9, eps=1e-5).train()
    e0 = vq.embed.detach().clone()
    z = torch.randn(1, 3, 2, 4, generator=torch.Generator().manual_seed(2))
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    codes = torch.cdist(flat, e0).argmin(1)
    vq(z)
    size, sums = torch.zeros(6), e0.clone() * 0.9
    for k in range(6):
        n_k = int((codes == k).sum())
        size[k] = 0.1 * n_k
        if n_k:
            sums[k] += 0.1 * flat[codes == k].sum(0)
    n = size.sum()
    smoothed = (size + 1e-5) / (n + 6 * 1e-5) * n
    torch.testing.assert_close(vq.cluster_size, size)
    torch.testing.assert_close(vq.embed_sum, sums)
    torch.testing.assert_close(vq.embed.detach(), sums / smoothed[:, None])


def test_dead_codes_are_restarted_from_encoder_outputs():
    vq = _vq(dead_steps=2).train()
    vq.unused.zero_()
    z = vq.embed.detach()[0].view(1, 3, 1, 1).expand(2, 3, 2, 2) + 0.01 * torch.randn(2, 3, 2, 2)
    first = vq(z.clone())  # only code 0 is used: the others are 1 batch unused
    assert first.stats["dead_codes"] == 0 and vq.restarts == 0
    out = vq(z.clone())  # 2 batches unused: codes 1..5 restart
    assert out.stats["dead_codes"] == 5 and int(vq.restarts) == 5
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for k in range(1, 6):  # every restarted code now sits on one of this batch's encoder outputs
        assert torch.isclose(vq.embed.detach()[k][None], flat, atol=1e-6).all(1).any()
    assert (vq.unused == 0).all() and torch.equal(vq.cluster_size[1:], torch.ones(5))


def test_perplexity():
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4)
    assert perplexity(torch.tensor([7, 0, 0])) == pytest.approx(1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_priors_cross_entropy_is_torchs_over_the_code_dim(channels_last, dtype):
    """Over the rows of channels_last logits or dim 1 of contiguous ones: torch's cross entropy over
    dim 1 in float32, to float32 rounding, values and gradients; the gradient in the logits' layout."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 512, 7, 7, generator=g) * 3).to(dtype)
    logits = logits.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    logits.requires_grad_()
    codes = torch.randint(0, 512, (4, 7, 7), generator=g)
    ours = code_cross_entropy(logits, codes)
    theirs = torch.nn.functional.cross_entropy(logits.float(), codes, reduction="none")
    assert ours.dtype == torch.float32 and ours.shape == codes.shape
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-5)
    weights = torch.rand(codes.shape, generator=g)
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (want,) = torch.autograd.grad((theirs * weights).sum(), logits)
    rtol = 1e-2 if dtype == torch.bfloat16 else 1e-5  # the gradient rounded to the logits' dtype
    assert grad.dtype == dtype and torch.allclose(grad.float(), want.float(), rtol=rtol, atol=1e-6)
    assert is_channels_last(grad) == channels_last


def _vqvae(binarized=False, extra=()):
    cfg = C.resolve("vqvae", sets=["vqvae.width=8", "vqvae.n_codes=16", "vqvae.res_blocks=1", *extra])
    info = DataInfo(name="t", kind="image", shape=(1, 16, 16), num_classes=10, binarized=binarized)
    torch.manual_seed(0)
    return build_family(cfg, info, torch.device("cpu"))


def test_vqvae_trains_encoder_through_the_quantiser_and_reports_its_codebook():
    fam = _vqvae()
    x = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8)
    before = [p.detach().clone() for p in fam.model.encoder.parameters()]
    logs = fam.train_step((x, None), 1)
    assert all(not torch.equal(a, b) for a, b in zip(before, fam.model.encoder.parameters()))
    assert {"recon_mse", "perplexity", "codes_used", "dead_codes", "restarts"} <= set(logs)
    assert fam.encode(x).shape == (16, 4, 4) and fam.reconstruct(x).shape == (16, 1, 16, 16)
    stats = fam.codebook_stats(x)
    assert stats["codes_used"] + stats["dead_codes"] == 16 and 1 <= stats["perplexity"] <= stats["codes_used"]
    torch.testing.assert_close(torch.tensor(stats["recon_mse"]),
                               ((fam.reconstruct(x) - x.float() / 255) ** 2).mean(), rtol=1e-4, atol=1e-6)


def test_too_many_halvings_is_a_config_error():
    with pytest.raises(ConfigError, match="halve"):
        _vqvae(extra=["vqvae.downsample=3"])


def test_prior_needs_a_vqvae_run():
    cfg = C.resolve("vqvae-prior")
    info = DataInfo(name="mnist", kind="image", shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="prior.vqvae=RUN_DIR"):
        build_family(cfg, info, torch.device("cpu"))


TINY_VQ = ["vqvae.width=8", "vqvae.n_codes=16", "vqvae.res_blocks=1", "vqvae.code_dim=4"]
TINY_RUN = ["train.batch_size=8", "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2",
            "train.grid_size=4", "train.threads=1"]


def _sets(items):
    return [arg for s in items for arg in ("--set", s)]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def test_vqvae_prior_second_stage_through_the_cli(tmp_path):
    runner = CliRunner()
    args = ["--steps", "2", "--out", str(tmp_path), "--no-progress"]
    _ok(runner.invoke(app, ["train", "vqvae", *args, "--name", "vq", *_sets(TINY_VQ + TINY_RUN)]))
    vq_dir = tmp_path / "vq"
    _ok(runner.invoke(app, ["sample", str(vq_dir), "--reconstruct", "-n", "4"]))
    assert (vq_dir / "samples" / "recon-last-seed0.png").is_file()
    sets = [f"prior.vqvae={vq_dir}", "prior.width=8", "prior.layers=1"] + TINY_RUN
    _ok(runner.invoke(app, ["train", "vqvae-prior", *args, "--name", "prior", *_sets(sets)]))
    prior_dir = tmp_path / "prior"
    _ok(runner.invoke(app, ["sample", str(prior_dir), "-n", "4"]))
    assert (prior_dir / "samples" / "sample-last-seed0.png").is_file()

    from genlab.runs import load_run

    vq, prior = load_run(vq_dir).family, load_run(prior_dir).family
    for k, v in vq.model.state_dict().items():  # the prior carries the VQ-VAE it was trained against
        assert torch.equal(prior.vq.model.state_dict()[k], v)
    g = torch.Generator().manual_seed(0)
    x = prior.sample(3, g)
    assert x.shape == (3, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    codes = prior.sample_codes(3, torch.Generator().manual_seed(0))
    assert codes.shape == (3, 7, 7) and codes.max() < 16

    # the prior reconstructs nothing itself: its eval record carries no reconstruction figure
    res = runner.invoke(app, ["eval", str(prior_dir), "-n", "20", "--n-test", "10", "--batch-size", "10",
                              "--metrics", "fid", "--json", "--no-save"])
    _ok(res)
    record = json.JSONDecoder().raw_decode(res.output[res.output.index("{"):])[0]
    assert "fid" in record["metrics"] and "recon_mse" not in record["metrics"]
    assert "reconstruct" not in prior.capabilities
    res = runner.invoke(app, ["sample", str(prior_dir), "--reconstruct", "-n", "4"])
    assert res.exit_code == 2 and "does not support --reconstruct" in res.output


def test_prior_refuses_a_vqvae_trained_on_other_data(tmp_path):
    runner = CliRunner()
    args = ["--steps", "2", "--out", str(tmp_path), "--no-progress"]
    _ok(runner.invoke(app, ["train", "vqvae", *args, "--name", "vq", *_sets(TINY_VQ + TINY_RUN)]))
    sets = [f"prior.vqvae={tmp_path / 'vq'}", "prior.width=8", "prior.layers=1", "data.binarize=true"] + TINY_RUN
    res = runner.invoke(app, ["train", "vqvae-prior", *args, "--name", "p", *_sets(sets)])
    assert res.exit_code == 2 and "binarized" in res.output
