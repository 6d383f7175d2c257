"""`genlab translate`: image-to-image translation with a trained run (CycleGAN); registered on genlab.cli.app."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from .cli_common import single_process, user_errors
from .errors import GenlabError


def _inputs(run, direction: str, source: Optional[str], n: int) -> tuple[torch.Tensor, str]:
    """Up to n float [0, 1] images of the source domain, and a description of where they came from."""
    from .config import DataConfig
    from .data import load_dataset, load_image_dir
    from .data.base import split_name
    from .data.pairs import TWO_DOMAIN, load_domains

    c, h, w = run.family.domain_shape
    domain = direction[0]  # "AtoB" reads domain A
    if source is not None and Path(source).expanduser().is_dir():
        if h != w:
            raise GenlabError(f"images from a folder are loaded square; this run translates {h}x{w} images")
        x = load_image_dir(Path(source).expanduser(), c, h)
        return x[:n].float().div(255), f"folder {source}"
    data = run.cfg.data if source is None else DataConfig(**{**run.cfg.data.__dict__, "name": source})
    if split_name(data.name)[0] in TWO_DOMAIN:
        x, where = load_domains(data, "test").images(domain), f"{data.name} test split, domain {domain}"
    else:  # a one-domain dataset, e.g. --input mnist: its test images are taken as the source domain
        x, where = load_dataset(data, "test").x, f"{data.name} test split"
    if tuple(x.shape[1:]) != (c, h, w):
        raise GenlabError(f"{where}: images are {tuple(x.shape[1:])}, the run translates {(c, h, w)}")
    return x[:n].float().div(255), where


def translate(
    run_dir: Path = typer.Argument(..., help="A run directory of a translation model (e.g. cyclegan)."),
    direction: str = typer.Option(..., "--direction", "-d", help="AtoB or BtoA."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="A folder of images of the source domain, or a "
                                        "two-domain dataset (mnist-pair, pair:DIR) [default: the run's dataset, test split]."),
    out: Optional[Path] = typer.Option(None, help="Output folder [default: RUN_DIR/translate-DIRECTION]."),
    n: int = typer.Option(64, "-n", "--n", min=1, help="Translate the first N images."),
    checkpoint: str = typer.Option("last", help="last | best | step-N."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
):
    """Translate images with a trained run: writes OUT/NNNNN.png (translations) and OUT/grid.png
    (input | output pairs side by side)."""
    from .report.plots import save_image_grid
    from .runs import load_run

    if direction not in ("AtoB", "BtoA"):
        raise GenlabError(f"--direction must be AtoB or BtoA, got {direction!r}")
    if n < 1:
        raise GenlabError(f"-n must be at least 1, got {n}")
    run = load_run(run_dir, checkpoint, device)
    if "translate" not in run.family.capabilities:
        raise GenlabError(f"{run.cfg.model} ({run.cfg.family}) does not translate images; train e.g. cyclegan")
    x, where = _inputs(run, direction, input, n)
    with run.sampling():
        y = run.family.translate(x, direction).cpu()
    out = out or run_dir / f"translate-{direction}"
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(y):
        save_image_grid(img[None], out / f"{i:05d}.png", nrow=1)
    pairs = torch.cat([x, y], dim=-1)  # each cell: input | translation
    grid = save_image_grid(pairs, out / "grid.png", nrow=max(1, int(len(pairs) ** 0.5)))
    typer.echo(f"translated {len(y)} images ({where}, {direction}) -> {out}/ (grid: {grid})")


def register(app: typer.Typer) -> None:
    app.command("translate")(user_errors(single_process(translate)))
