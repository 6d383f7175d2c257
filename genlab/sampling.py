"""What `genlab sample` draws, as library calls: samples, latent interpolations, reconstructions.

Every entry point checks the family's declared capabilities and sampling options, so a request the
family cannot serve is a one-line error naming what it can do.

    images = samples(run, 64, seed=0, options={"temperature": 0.7})
    grid, nrow = interpolations(run, 64, steps=8, seed=0)
    grid, nrow = reconstructions(run, 16, seed=0)
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import GenlabError
from .runs import seeded


def check_options(run, options: dict) -> dict:
    """The sampling options a run's family declares, checked by name and type-converted."""
    declared = {o.name: o for o in run.family.sample_options}
    out = {}
    for name, value in options.items():
        if name not in declared:
            can = ", ".join(f"--{o.replace('_', '-')}" for o in declared) or "none"
            raise GenlabError(f"--{name.replace('_', '-')} is not a sampling option of {run.cfg.model} "
                              f"({run.cfg.family} family; its options: {can})")
        out[name] = declared[name].convert(value)
    return out


def _require(run, capability: str, flag: str) -> None:
    if capability not in run.family.capabilities or run.info.kind != "image":
        can = ", ".join(sorted(run.family.capabilities))
        raise GenlabError(f"{run.cfg.model} on {run.info.name} does not support {flag} (it can: {can})")


def samples(run, n: int, seed: int = 0, options: dict | None = None) -> Tensor:
    """n samples (images in [0, 1] or 2-D points) with the family's declared sampling options."""
    options = check_options(run, options or {})
    with run.sampling():
        return run.family.sample(n, seeded(seed), **options)


def interpolations(run, n: int, steps: int, seed: int = 0) -> tuple[Tensor, int]:
    """(n // steps rows of `steps` images interpolated in latent space, images per row)."""
    _require(run, "interpolate", "--interpolate")
    if steps < 2:
        raise GenlabError(f"--steps must be at least 2, got {steps}")
    with run.sampling():
        return run.family.interpolate(max(1, n // steps), steps, seeded(seed)), steps


def reconstructions(run, n: int, seed: int = 0) -> tuple[Tensor, int]:
    """(n seeded test images each beside its reconstruction, images per row)."""
    from .eval.reference import data_config_for, load_real

    _require(run, "reconstruct", "--reconstruct")
    x = load_real(data_config_for(run.cfg.data), "test", n, seed)[0]  # seeded; binarized if the run is
    with run.sampling():
        recon = run.family.reconstruct(x).cpu().float()
    pairs = torch.stack([x.float() / 255, recon], 1).flatten(0, 1)
    return pairs, 2 * max(1, int(n ** 0.5))
