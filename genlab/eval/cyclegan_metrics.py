"""CycleGAN's own metrics, on held-out (test split) images of both domains.

    cycle_l1_{AtoB,BtoA}     mean |G_BA(G_AB(a)) - a| (resp. |G_AB(G_BA(b)) - b|), pixels in [0, 1]
    identity_l1_{A,B}        mean |G_BA(a) - a| and |G_AB(b) - b| (what the identity loss asks)
    fid_{AtoB,BtoA}          FID between translations and real held-out images of the target domain,
                             n vs n, on the features of the evaluator CNN (genlab-mnist for 1x28x28);
                             both sides are seen through `plain_view` (mnist-pair's B inverted back)
    label_preservation_{AtoB,BtoA}   where both domains are labelled (mnist-pair): share of inputs
                             whose evaluator class after translation equals their true label. The
                             evaluator is trained on plain digits, so a B-style output (A->B) is
                             inverted back before classifying; a B->A output is already plain.
    evaluator_acc_{A,B}      the evaluator's accuracy on the real held-out images of each domain
                             (through the same view): the ceiling the preservation figures compare to
                             (thick B digits are slightly out of the evaluator's training distribution).

Inputs are a seeded random subset of n test images per domain (n capped at the split's size); the
record names the extractor, its weights fingerprint, the split and n, as every genlab metric does.
"""
from __future__ import annotations

import torch

from ..data.pairs import load_domains, plain_view
from .metrics import fid


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator):
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    return x[idx].float().div(255), y[idx]


def _batched(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch]).cpu() for i in range(0, len(x), batch)])


def default_extractor(domain_shape: tuple[int, ...]):
    """The evaluator CNN for 1x28x28 digits; None (FID and label metrics skipped) otherwise."""
    if tuple(domain_shape) != (1, 28, 28):
        return None
    from .features import get_extractor

    return get_extractor("genlab-mnist")


@torch.no_grad()
def cyclegan_metrics(run, n: int = 2000, seed: int = 0, extractor=None) -> dict:
    """Metrics of a loaded cyclegan run (`genlab.runs.load_run`). `extractor` (optional) must offer
    .features(x) and .probs(x) on float [0, 1] images; default: genlab-mnist for 1x28x28 domains."""
    fam, data_name = run.family, run.cfg.data.name
    test = load_domains(run.cfg.data, "test")
    g = torch.Generator().manual_seed(seed)
    a, ya = _subset(test.a, test.ya, n, g)
    b, yb = _subset(test.b, test.yb, n, g)
    fake_b, fake_a = fam.translate(a, "AtoB").cpu(), fam.translate(b, "BtoA").cpu()
    out: dict = {"family": "cyclegan", "dataset": data_name, "split": "test", "n_A": len(a), "n_B": len(b),
                 "seed": seed, "step": run.step,
                 "cycle_l1_AtoB": (fam.translate(fake_b, "BtoA").cpu() - a).abs().mean().item(),
                 "cycle_l1_BtoA": (fam.translate(fake_a, "AtoB").cpu() - b).abs().mean().item(),
                 "identity_l1_A": (fam.translate(a, "BtoA").cpu() - a).abs().mean().item(),
                 "identity_l1_B": (fam.translate(b, "AtoB").cpu() - b).abs().mean().item()}
    ext = extractor if extractor is not None else default_extractor(fam.domain_shape)
    if ext is None:
        out["note"] = "no evaluator for this image shape: FID and label preservation skipped"
        return out
    out["features"] = getattr(ext, "name", "genlab-mnist")
    out["features_fingerprint"] = getattr(ext, "fingerprint", None)
    view = lambda domain, x: plain_view(data_name, domain, x)  # noqa: E731
    fb, rb = _batched(ext.features, view("B", fake_b)), _batched(ext.features, view("B", b))
    fa, ra = _batched(ext.features, view("A", fake_a)), _batched(ext.features, view("A", a))
    out["fid_AtoB"], out["fid_BtoA"] = fid(rb, fb), fid(ra, fa)
    if (ya >= 0).all() and (yb >= 0).all() and len(ya) and len(yb):
        cls = lambda domain, x: _batched(ext.probs, view(domain, x)).argmax(1)  # noqa: E731
        out["label_preservation_AtoB"] = (cls("B", fake_b) == ya).float().mean().item()
        out["label_preservation_BtoA"] = (cls("A", fake_a) == yb).float().mean().item()
        out["evaluator_acc_A"] = (cls("A", a) == ya).float().mean().item()
        out["evaluator_acc_B"] = (cls("B", b) == yb).float().mean().item()
    return out
