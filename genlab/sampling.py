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
from .speed import autocast, draw


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
        return draw(run.family, run.sample_amp, n, seeded(seed), **options)


def interpolations(run, n: int, steps: int, seed: int = 0) -> tuple[Tensor, int]:
    """(n // steps rows of `steps` images interpolated in latent space, images per row)."""
    _require(run, "interpolate", "--interpolate")
    if steps < 2:
        raise GenlabError(f"--steps must be at least 2, got {steps}")
    with run.sampling(), autocast(torch.device(run.family.device), run.sample_amp):
        return run.family.interpolate(max(1, n // steps), steps, seeded(seed)).float(), steps


def reconstructions(run, n: int, seed: int = 0) -> tuple[Tensor, int]:
    """(n seeded test images each beside its reconstruction, images per row)."""
    from .eval.reference import data_config_for, load_real

    _require(run, "reconstruct", "--reconstruct")
    x = load_real(data_config_for(run.cfg.data), "test", n, seed)[0]  # seeded; binarized if the run is
    with run.sampling():
        recon = run.family.reconstruct(x).cpu().float()
    pairs = torch.stack([x.float() / 255, recon], 1).flatten(0, 1)
    return pairs, 2 * max(1, int(n ** 0.5))


def sample_batches(run, n: int, seed: int = 0, batch_size: int = 500, options: dict | None = None):
    """n samples in batches, batch i drawn with its own seed `batch_seed(seed, i)` with the evaluated
    weights in the run's sampling precision -- exactly the samples `genlab eval RUN -n n --seed seed
    --batch-size batch_size --precision P` scores, so an exported file re-imported with `eval --fake`
    gives the same figures."""
    from .eval.passes import batch_seed, progress

    options = check_options(run, options or {})
    with run.sampling():
        for start in progress(range(0, n, batch_size), n, batch_size, "sampling"):
            generator = torch.Generator().manual_seed(batch_seed(seed, start // batch_size))
            with torch.inference_mode():
                yield draw(run.family, run.sample_amp, min(batch_size, n - start), generator, **options).cpu()


def export(run, n: int, path, fmt: str, seed: int = 0, batch_size: int = 500, options: dict | None = None,
           overwrite: bool = False):
    """Write n samples to `path` as an .npz (arr_0, N x H x W x C uint8) or a folder of PNGs, streamed
    (see genlab.samplefiles); returns the path. Points (2-D data) go to .npz as float32 N x 2."""
    from pathlib import Path

    from . import __version__
    from .samplefiles import FolderWriter, NpzWriter, check_target, to_uint8

    path = Path(path)
    image = run.info.kind == "image"
    if fmt == "folder" and not image:
        raise GenlabError(f"{run.info.name} samples are points, not images: use --format npz")
    if fmt == "npz" and path.suffix != ".npz":
        raise GenlabError(f"--format npz writes an .npz file; --out {path} does not end in .npz")
    check_target(path, overwrite)
    shape = tuple(run.info.shape)
    item = (shape[1], shape[2], shape[0]) if image else shape
    meta = {"model": run.cfg.model, "run": str(run.run_dir), "checkpoint": run.checkpoint, "step": run.step,
            "dataset": run.cfg.data.name, "n": n, "seed": seed, "batch_size": batch_size,
            "precision": run.sample_precision, "sample_options": dict(options or {}), "genlab_version": __version__}
    writer = (FolderWriter(path, n, item, meta) if fmt == "folder" else
              NpzWriter(path, n, item, "uint8" if image else "float32", meta))
    try:
        for x in sample_batches(run, n, seed, batch_size, options):
            writer.write(to_uint8(x).permute(0, 2, 3, 1).numpy() if image else x.float().numpy())
    except BaseException:
        writer.abort()
        raise
    return writer.close()
