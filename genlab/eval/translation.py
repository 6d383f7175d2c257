"""The translation measure: for families that translate between two domains (capability `translate`,
e.g. CycleGAN), measured on held-out (test split) images of both domains.

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
                             (through the same view): the ceiling the preservation figures compare to;
                             a property of the evaluator, so shown but never ranked.

Inputs are a seeded random subset of n test images per domain (n capped at the split's size). The
record names the extractor, its weights fingerprint, the split and n, as every genlab record does.
Not sharded under torchrun: rank 0 measures, the other ranks receive its figures.
"""
from __future__ import annotations

import torch

from .. import parallel
from ..data.pairs import load_domains, plain_view
from .measures import Figure, Measure, register_measure
from .metrics import fid

DIRECTIONS = ("AtoB", "BtoA")


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, g: torch.Generator):
    idx = torch.randperm(len(x), generator=g)[:n].sort().values
    return x[idx].float().div(255), y[idx]


def _extractor(features: str, domain_shape: tuple[int, ...], dataset: str, device):
    """(extractor or None, picked automatically). 'auto' picks as for one domain's images
    (genlab-mnist for 1x28x28, else inception); an auto pick whose weights are missing gives None
    (FID and label metrics are then skipped), an explicit name raises."""
    from ..data import DataInfo
    from ..errors import GenlabError
    from .features import get_extractor, resolve_extractor

    name, picked = resolve_extractor(features, DataInfo(dataset, "image", tuple(domain_shape)))
    try:
        return get_extractor(name, device), picked
    except GenlabError:
        if picked:
            return None, picked
        raise


@torch.no_grad()
def translation_metrics(run, n: int = 2000, seed: int = 0, extractor=None, features: str = "auto",
                        record: dict | None = None) -> dict:
    """The translation figures of a run whose family translates, on n held-out images per domain.
    Provenance (extractor, split, n per domain) goes into `record` when given."""
    record = {} if record is None else record
    fam, data_name = run.family, run.cfg.data.name
    test = load_domains(run.cfg.data, "test")
    g = torch.Generator().manual_seed(seed)
    a, ya = _subset(test.a, test.ya, n, g)
    b, yb = _subset(test.b, test.yb, n, g)
    with run.sampling():
        fake_b, fake_a = fam.translate(a, "AtoB").cpu(), fam.translate(b, "BtoA").cpu()
        m = {"cycle_l1_AtoB": (fam.translate(fake_b, "BtoA").cpu() - a).abs().mean().item(),
             "cycle_l1_BtoA": (fam.translate(fake_a, "AtoB").cpu() - b).abs().mean().item(),
             "identity_l1_A": (fam.translate(a, "BtoA").cpu() - a).abs().mean().item(),
             "identity_l1_B": (fam.translate(b, "AtoB").cpu() - b).abs().mean().item()}
    record.update(split="test", n_A=len(a), n_B=len(b), n_fake=len(a) + len(b))
    picked = extractor is None
    if extractor is None:
        extractor, picked = _extractor(features, fam.domain_shape, data_name, fam.device)
    if extractor is None:
        record["note"] = "no feature extractor available for these images: FID and label preservation skipped"
        return m
    record.update(extractor=getattr(extractor, "name", type(extractor).__name__),
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
    return m


def _compute(ctx) -> dict:
    def measure():
        rec: dict = {}
        values = translation_metrics(ctx.run, ctx.n, ctx.seed, ctx._extractor, ctx.features, rec)
        return values, rec

    values, rec = parallel.on_main(measure)
    ctx.record.update(rec)
    return values


_PIXELS = "pixels in [0, 1]"
register_measure(Measure(
    "translation", "eval",
    (*(Figure(f"cycle_l1_{d}", f"cycle l1 {d}", "lower", unit=_PIXELS) for d in DIRECTIONS),
     *(Figure(f"identity_l1_{x}", f"identity l1 {x}", "lower", unit=_PIXELS) for x in "AB"),
     *(Figure(f"fid_{d}", f"fid {d}", "lower") for d in DIRECTIONS),
     *(Figure(f"label_preservation_{d}", f"label preservation {d}", "higher") for d in DIRECTIONS),
     *(Figure(f"evaluator_acc_{x}", f"evaluator acc {x}", "info") for x in "AB")),
    _compute, needs={"translate"},
    doc="cycle / identity error, per-direction FID and label preservation on held-out images of both domains"))
