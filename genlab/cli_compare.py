"""CLI command of the comparison dashboard (compare); registered on genlab.cli.app."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import single_process, user_errors

_SUFFIX_FORMAT = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json"}


def compare(
    run_dirs: List[str] = typer.Argument(..., help="Run directories, glob patterns (quoted: 'runs/gan-*') "
                                                   "or parents of runs (e.g. runs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file, or - for stdout "
                                       "[default: report.html, report.md, ... by --format]."),
    format_: Optional[str] = typer.Option(None, "--format", "-f", help="html | md | csv | json "
                                          "[default: from --out's suffix, else html]."),
    sort: Optional[str] = typer.Option(None, help="Sort rows by a column (e.g. fid, kid, coverage); "
                                       "best first, within each comparability group."),
):
    """Put runs side by side: metrics table, training curves, samples and diagnostics in one file."""
    from .report.compare import compare as run_compare

    fmt = format_ or (_SUFFIX_FORMAT.get(out.suffix.lower(), "html") if out and str(out) != "-" else "html")
    to_stdout = out is not None and str(out) == "-"
    target = None if to_stdout else (out or Path(f"report.{fmt}"))
    text, table = run_compare(run_dirs, target, fmt, sort)
    for w in table.warnings:
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW, err=True)
    if to_stdout:
        typer.echo(text, nl=False)
    else:
        groups = f" in {len(table.groups)} comparability groups" if len(table.groups) > 1 else ""
        typer.echo(f"wrote {target} ({len(table.runs)} runs{groups})")


def register(app: typer.Typer) -> None:
    app.command("compare")(user_errors(single_process(compare)))
