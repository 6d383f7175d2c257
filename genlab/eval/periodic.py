"""Evaluation during training: `eval_hook(cfg)` -> fn(trainer, step) -> {"fid": ..., ...}.

The trainer calls fn every cfg.eval.every steps, logs the dict under eval/ and keeps best.pt by the
lowest "fid". It is cheap by design: cfg.eval.n samples (2,000 by default; FID is biased upwards at
small n, so these values are only comparable with each other, not with `genlab eval` at n=10,000),
the same noise at every evaluation (a fixed seed, so the curve shows the model changing, not the
noise), and the reference features loaded once per run (from the on-disk cache when valid).

Under torchrun the sampling and feature pass are sharded over the ranks (see evaluate.py), so the
figures do not depend on the world size.

Exact resume requires that evaluation leaves no trace on training: samples come from a private CPU
generator, the global RNGs are forked and restored anyway (in case a family's sample() draws from
them), and every nn.Module of the family is put back in the train/eval mode it was found in.
"""
from __future__ import annotations

from ..config import RunConfig
from .context import EvalContext, TrainerView, forked_rng, preserved_modes
from .evaluate import parse_metrics
from .measures import select

EVAL_SEED_OFFSET = 2_000_003  # periodic-eval noise, independent of training and of the sample grids


def eval_hook(cfg: RunConfig):
    """A periodic evaluation function for the trainer (see module docstring): the sample metrics named
    in eval.metrics, on eval.n samples of fixed noise; the extractor and reference load once per run."""
    requested = parse_metrics(cfg.eval.metrics)
    state: dict = {}

    def fn(trainer, step: int) -> dict:
        chosen = [m for m in select("eval", trainer.info, trainer.family.capabilities, requested) if m.selectable]
        if not chosen:
            return {}
        with forked_rng(trainer.device), preserved_modes(trainer.family):
            # KID subsets of at most n (a smaller eval.n would otherwise warn at every evaluation)
            ctx = EvalContext(TrainerView(trainer), cfg.eval.n, cfg.seed + EVAL_SEED_OFFSET, cfg.eval.batch_size,
                              cfg.eval.features, cfg.eval.ref, extractor=state.get("ext"),
                              reference=state.get("ref"), log=lambda m: None)
            ctx.sample_metric_names = tuple(m.name for m in chosen)
            ctx.want_probs = any(m.uses_probs for m in chosen)
            values = {}
            for m in chosen:
                values.update(m.compute(ctx))
            state["ext"], state["ref"] = ctx.extractor, ctx.reference
        return values

    return fn
