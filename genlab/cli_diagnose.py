"""CLI command of the mode-collapse diagnostics (diagnose); registered on genlab.cli.app."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli_common import precision_option, single_process, user_errors


def diagnose(
    run_dir: Path = typer.Argument(..., help="A run directory written by `genlab train`."),
    n: Optional[int] = typer.Option(None, "-n", "--n", min=2, help="Generated samples (default: the published protocol's: "
                                    "2,500 for 2-D mixtures, 26,000 for stacked-mnist, 10,000 for images)."),
    checkpoint: str = typer.Option("last", help="last | best | step-N."),
    seed: int = typer.Option(0, min=0, help="Sampling seed (also seeds the NDB K-means)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = precision_option(),
    out: Optional[Path] = typer.Option(None, help="Directory for diagnostics.json and the PNGs (default: RUN_DIR)."),
):
    """Measure mode collapse: modes / classes covered, NDB, memorisation (whatever fits the run's data)."""
    from .eval.diagnose import OUT_FILE, diagnose as run_diagnostics, format_table
    from .runs import load_run

    run = load_run(run_dir, checkpoint, device, precision)
    record = run_diagnostics(run, n, seed, out, log=lambda msg: typer.echo(msg, err=True))
    where = out or run_dir
    ext = f", features {record['extractor']} ({record['extractor_fingerprint']})" if record["extractor"] else ""
    typer.echo(f"{record['model']} on {record['dataset']}, {checkpoint} (step {record['step']}), "
               f"n = {record['n']}, seed {seed}{ext}")
    typer.echo(format_table(record))
    typer.echo(f"wrote {where / OUT_FILE} and {', '.join(record['plots'])}")


def register(app: typer.Typer) -> None:
    app.command("diagnose")(user_errors(single_process(diagnose)))
