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

import contextlib

import torch

from .. import parallel
from ..config import RunConfig
from .evaluate import _on, parse_metrics, sample_features
from .features import get_extractor, resolve_extractor
from .metrics import compute_all
from .reference import data_config_for, get_reference

EVAL_SEED_OFFSET = 2_000_003  # periodic-eval noise, independent of training and of the sample grids


@contextlib.contextmanager
def preserved_modes(family):
    """Restore the .training flag of every module reachable from the family's attributes."""
    modules = [m for v in vars(family).values() if isinstance(v, torch.nn.Module) for m in v.modules()]
    modes = [m.training for m in modules]
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def _forked_rng(device: torch.device):
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def eval_hook(cfg: RunConfig):
    """A periodic evaluation function for the trainer (see module docstring)."""
    metrics = parse_metrics(cfg.eval.metrics)
    data_cfg = data_config_for(cfg.data)
    state: dict = {}

    def fn(trainer, step: int) -> dict:
        with _forked_rng(torch.device(trainer.device)), preserved_modes(trainer.family):
            if not state:  # first call: pick the extractor and load the reference once per run
                name, _ = resolve_extractor(cfg.eval.features, trainer.info)
                state["ext"] = get_extractor(name, trainer.device)
                state["ref"] = parallel.on_main(get_reference, data_cfg, cfg.eval.ref, cfg.eval.n, state["ext"],
                                                batch_size=cfg.eval.batch_size)
            ext, ref = state["ext"], state["ref"]
            with trainer.sampling_context():
                fake, probs = sample_features(trainer.family.sample, cfg.eval.n, ext, cfg.eval.batch_size,
                                              cfg.seed + EVAL_SEED_OFFSET, trainer.info.shape,
                                              keep_probs="is" in metrics)
            # KID subsets of at most n (a smaller cfg.eval.n would otherwise warn at every evaluation)
            return parallel.on_main(lambda: compute_all(*_on(trainer.device, ref.features, fake, probs), metrics,
                                                        seed=cfg.seed, kid_subset_size=min(1000, ref.n, fake.shape[0])))

    return fn
