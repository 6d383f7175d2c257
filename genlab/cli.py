"""The genlab command line (Typer). Parse -> resolve config -> call the library; no logic here.

The commands of each subsystem live beside it (cli_sample, cli_eval, cli_diagnose, cli_compare,
cli_translate);
each module registers its commands on the app it is given (`register(app)`), so nothing imports this
module back."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import cli_compare, cli_diagnose, cli_eval, cli_sample, cli_translate, registry
from .cli_common import single_process, user_errors
from .errors import GenlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="genlab: train, sample, evaluate, diagnose and compare generative models.")

LIST_KINDS = {"models": "model", "datasets": "dataset", "families": "family", "losses": "loss",
              "regularizers": "regularizer", "nets": "net", "features": "features", "measures": "measure"}


def _overrides(dataset, steps, batch_size, out, name, device, seed, data_root) -> dict:
    """CLI flags as a config layer (only the flags that were given)."""
    layer: dict = {}
    for key, value in (("out", out), ("name", name), ("device", device), ("seed", seed)):
        if value is not None:
            layer[key] = value
    data = {k: v for k, v in (("name", dataset), ("root", data_root)) if v is not None}
    train = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    if data:
        layer["data"] = data
    if train:
        layer["train"] = train
    return layer


@app.command()
@user_errors
def train(
    model: str = typer.Argument(..., help="Registered model name (see `genlab list models`), e.g. wgan-gp."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of config deltas."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key: --set gan.n_critic=3 (repeatable)."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (see `genlab list datasets`), or folder:PATH."),
    steps: Optional[int] = typer.Option(None, min=1, help="Total training steps (generator updates for GANs)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per update."),
    out: Optional[Path] = typer.Option(None, help="Parent directory of run directories (default: runs)."),
    name: Optional[str] = typer.Option(None, help="Run directory name (default: MODEL-DATASET-TIMESTAMP)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    seed: Optional[int] = typer.Option(None, min=0, help="Seed for every RNG (model init, data order, noise)."),
    data_root: Optional[Path] = typer.Option(None, help="Where torchvision datasets live (default: $GENLAB_DATA or ~/.cache/genlab/data)."),
    resume: Optional[Path] = typer.Option(None, help="Continue RUN_DIR exactly where its last checkpoint left off."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out/--name if there is one (its files are deleted)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
):
    """Train MODEL; writes a run directory (config.yaml, checkpoints/, samples/, tb/, metrics.jsonl)."""
    from . import config as C

    if resume is not None and (out is not None or name is not None):
        typer.secho(f"warning: --out / --name are ignored with --resume (the run stays {resume})",
                    fg=typer.colors.YELLOW, err=True)
        out = name = None
    if resume is not None and overwrite:
        raise GenlabError("--overwrite replaces a run and --resume continues it: choose one")
    layer = _overrides(dataset, steps, batch_size, str(out) if out else None, name, device, seed,
                       str(data_root) if data_root else None)
    if resume is not None:
        cfg = _resume_config(model, resume, config, layer, set_)
    else:
        cfg = C.resolve(model, str(config) if config else None, layer, set_)
    if dry_run:
        typer.echo(C.dump(cfg), nl=False)
        return
    from . import parallel
    from .train import Trainer, default_run_dir

    parallel.setup(cfg.device)  # under torchrun: join the other ranks before naming the run
    run_dir = resume if resume is not None else parallel.broadcast_object(default_run_dir(cfg))
    result = Trainer(cfg, run_dir, resume=resume is not None, show_progress=progress, overwrite=overwrite).run()
    if parallel.is_main():
        typer.echo(f"finished step {result['step']} in {result['wall_time']:.0f}s -> {result['run_dir']}")


def _resume_config(model: str, run_dir: Path, config: Optional[Path], layer: dict, sets: List[str]):
    from . import config as C
    from .errors import RunError

    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"cannot resume {run_dir}: not a genlab run directory (no config.yaml)")
    saved = C.saved_layer(C.read_yaml(run_dir / "config.yaml"))
    if saved.get("model") != model:
        raise RunError(f"cannot resume {run_dir}: it is a run of {saved.get('model')!r}, not {model!r}")
    layers = [saved] + ([C.read_yaml(config)] if config else []) + [layer, C.parse_set(sets)]
    cfg = C.build(layers)
    cfg.out, cfg.name = str(run_dir.parent), run_dir.name  # where the run is, whatever its saved config says
    return cfg


@app.command("list")
@user_errors
@single_process
def list_(what: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(LIST_KINDS)} (default: all).")):
    """List registered models, datasets, losses, regularizers, nets, families, feature extractors."""
    kinds = LIST_KINDS if what is None else {what: LIST_KINDS.get(what)}
    if None in kinds.values():
        raise GenlabError(f"unknown list {what!r} (choose from: {', '.join(LIST_KINDS)})")
    for title, kind in kinds.items():
        names = registry.available(kind)
        if kind == "model":
            names = [_describe_model(m) for m in names]
        typer.echo(f"{title}:")
        for entry in names:
            typer.echo(f"  {entry}")


def _describe_model(name: str) -> str:
    from .config import read_yaml, configs_dir

    desc = read_yaml(configs_dir() / f"{name}.yaml").get("description", "")
    return f"{name:<16} {desc}".rstrip()


for _module in (cli_sample, cli_eval, cli_diagnose, cli_compare, cli_translate):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """The console script: the app, with command-line usage errors (a missing argument, an option
    of the wrong type) as one line, exit code 2, like every other user error."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="genlab")
    except Exception as e:
        if not any(c.__name__ == "UsageError" for c in type(e).__mro__):  # click's, vendored by Typer or not
            raise
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.secho(f"error: {e.format_message()}{where}", fg=typer.colors.RED, err=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    from .parallel import exit_process

    exit_process(code or 0)  # sys.exit, or os._exit in a torchrun rank (see parallel/world.py)


if __name__ == "__main__":
    main()
