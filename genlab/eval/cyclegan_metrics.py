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

Inputs are a seeded random subset of n test images per domain (n capped at the split's size). `genlab
eval` calls this for families that translate (they have no unconditional samples to score). The
record names the extractor, its weights fingerprint, the split and n, as every genlab metric does.
"""
from __future__ import annotations

import torch

from .. import __version__
from ..data.pairs import load_domains, plain_view
from .evaluate import _now
from .metrics import fid


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator):
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    return x[idx].float().div(255), y[idx]


def _extractor(features: str, domain_shape: tuple[int, ...], dataset: str):
    """(extractor or None, picked automatically). 'auto' picks as `genlab eval` does for one domain's
    images (genlab-mnist for 1x28x28, else inception); an auto pick whose weights are missing gives
    None (FID and label metrics are then skipped), an explicit name raises."""
    from ..data import DataInfo
    from ..errors import GenlabError
    from .features import get_extractor, resolve_extractor

    name, picked = resolve_extractor(features, DataInfo(dataset, "image", tuple(domain_shape)))
    try:
        return get_extractor(name), picked
    except GenlabError:
        if picked:
            return None, picked
        raise


@torch.no_grad()
def cyclegan_metrics(run, n: int = 2000, seed: int = 0, extractor=None, features: str = "auto") -> dict:
    """A self-describing record (as `genlab eval` writes) of a loaded cyclegan run
    (`genlab.runs.load_run`), measured on n held-out images per domain.

    `extractor` (optional) is a features.Extractor (anything with .features_and_probs(x) on float
    [0, 1] images); by default it is chosen from `features` as `genlab eval` does."""
    fam, data_name = run.family, run.cfg.data.name
    test = load_domains(run.cfg.data, "test")
    g = torch.Generator().manual_seed(seed)
    a, ya = _subset(test.a, test.ya, n, g)
    b, yb = _subset(test.b, test.yb, n, g)
    fake_b, fake_a = fam.translate(a, "AtoB").cpu(), fam.translate(b, "BtoA").cpu()
    m = {"cycle_l1_AtoB": (fam.translate(fake_b, "BtoA").cpu() - a).abs().mean().item(),
         "cycle_l1_BtoA": (fam.translate(fake_a, "AtoB").cpu() - b).abs().mean().item(),
         "identity_l1_A": (fam.translate(a, "BtoA").cpu() - a).abs().mean().item(),
         "identity_l1_B": (fam.translate(b, "AtoB").cpu() - b).abs().mean().item()}
    out: dict = {"kind": "translation", "model": run.cfg.model, "family": "cyclegan", "dataset": data_name,
                 "checkpoint": getattr(run, "checkpoint", None), "step": run.step, "metrics": m,
                 "split": "test", "n_A": len(a), "n_B": len(b), "n_fake": len(a) + len(b), "seed": seed,
                 "timestamp": _now(), "genlab_version": __version__}
    picked = extractor is None
    if extractor is None:
        extractor, picked = _extractor(features, fam.domain_shape, data_name)
    if extractor is None:
        out["note"] = "no feature extractor available for these images: FID and label preservation skipped"
        return out
    out.update(extractor=getattr(extractor, "name", type(extractor).__name__),
               extractor_fingerprint=getattr(extractor, "fingerprint", None), extractor_auto=picked)
    view = lambda domain, x: plain_view(data_name, domain, x)  # noqa: E731
    f_fb, p_fb = extractor.features_and_probs(view("B", fake_b))
    f_fa, p_fa = extractor.features_and_probs(view("A", fake_a))
    f_b, p_b = extractor.features_and_probs(view("B", b))
    f_a, p_a = extractor.features_and_probs(view("A", a))
    m["fid_AtoB"], m["fid_BtoA"] = fid(f_b, f_fb), fid(f_a, f_fa)
    labelled = len(ya) and len(yb) and bool((ya >= 0).all() and (yb >= 0).all())
    if labelled and p_a.shape[1] > int(max(ya.max(), yb.max())):
        m["label_preservation_AtoB"] = (p_fb.argmax(1) == ya).float().mean().item()
        m["label_preservation_BtoA"] = (p_fa.argmax(1) == yb).float().mean().item()
        m["evaluator_acc_A"] = (p_a.argmax(1) == ya).float().mean().item()
        m["evaluator_acc_B"] = (p_b.argmax(1) == yb).float().mean().item()
    return out
