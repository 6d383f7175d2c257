"""`genlab sample`: grids of samples, interpolations or reconstructions, and sample files for other
tools (--format npz | folder); `register(app)` adds the command."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import precision_option, single_process, user_errors, with_sample_options
from .errors import GenlabError

FORMATS = ("png", "npz", "folder")


def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genlab train`."),
    n: int = typer.Option(64, "-n", "--n", min=1, help="Number of samples (grid cells, or images in the file)."),
    fmt: str = typer.Option("png", "--format", help="png: a grid image; npz: uint8 arr_0 N x H x W x C (ADM's "
                                                    "evaluator layout); folder: one PNG per sample (clean-fid, "
                                                    "torch-fidelity)."),
    out: Optional[Path] = typer.Option(None, help="Output file / folder (default: RUN_DIR/samples/...)."),
    seed: int = typer.Option(0, min=0, help="Sampling seed (same seed -> same images)."),
    batch_size: int = typer.Option(500, min=1, help="With npz / folder: samples per batch (batch i has its own "
                                                    "seed; keep it equal to eval's --batch-size for identical samples)."),
    checkpoint: str = typer.Option("last", help="last | best | step-N."),
    interpolate: bool = typer.Option(False, "--interpolate", help="Write a grid of latent interpolations instead."),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Write input/reconstruction pairs of N test images instead."),
    steps: int = typer.Option(10, min=2, help="With --interpolate: images per row."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing npz / folder at --out."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = precision_option(),
    sample_options: Optional[dict] = None,
):
    """Write samples of a trained run: a PNG grid, or every sample to an .npz / a folder of PNGs
    (streamed: 50k samples never sit in memory). Sampling options (e.g. --temperature, --sampler) are
    those the run's family declares."""
    from . import sampling
    from .runs import load_run

    options = sample_options or {}
    if fmt not in FORMATS:
        raise GenlabError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if interpolate and reconstruct:
        raise GenlabError("choose one of --interpolate and --reconstruct")
    if (interpolate or reconstruct) and (options or fmt != "png"):
        what = f"sampling options ({', '.join(options)})" if options else f"--format {fmt}"
        raise GenlabError(f"{what} do not apply to {'--interpolate' if interpolate else '--reconstruct'}")
    run = load_run(run_dir, checkpoint, device, precision)
    suffix = "".join(f"-{k[0]}{v:g}" if isinstance(v, float) else f"-{v}" for k, v in options.items())
    stem = f"{checkpoint}-seed{seed}{suffix}"
    if fmt != "png":
        out = out or run_dir / "samples" / f"samples-{stem}-n{n}{'.npz' if fmt == 'npz' else ''}"
        path = sampling.export(run, n, out, fmt, seed, batch_size, options, overwrite)
        typer.echo(f"wrote {n} samples to {path}")
        return
    from .report.plots import save_image_grid, save_samples

    kind = "interp" if interpolate else "recon" if reconstruct else "sample"
    out = out or run_dir / "samples" / f"{kind}-{stem}.png"
    if interpolate or reconstruct:
        images, nrow = (sampling.interpolations(run, n, steps, seed) if interpolate
                        else sampling.reconstructions(run, n, seed))
        path = save_image_grid(images, out, nrow=nrow)
    else:
        path = save_samples(sampling.samples(run, n, seed, options), run.info, out,
                            title=f"{run.cfg.model} step {run.step}")
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("sample")(user_errors(single_process(with_sample_options(sample))))
