"""What every CLI module shares: the user-error wrapper, the single-process guard, and the command
class that turns the families' declared sampling options into command-line options."""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

from . import registry
from .errors import GenlabError


def user_errors(fn):
    """Turn the library's user-facing errors into a one-line message and exit code 2 (Ctrl-C: 130).
    Under torchrun the message names the rank, and the command leaves the process group at the end."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from . import parallel

        try:
            return fn(*args, **kwargs)
        except GenlabError as e:
            typer.secho(f"error: {parallel.world().tag()}{e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # permission, read-only file system, disk full, --out is a file, ...
            from .rundir import fs_message

            typer.secho(f"error: {parallel.world().tag()}{fs_message(e)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho(f"error: {parallel.world().tag()}interrupted; files already written are intact "
                        f"(checkpoints are replaced atomically)", fg=typer.colors.RED, err=True)
            raise typer.Exit(130) from None
        finally:
            parallel.world_shutdown()

    return wrapper


def single_process(fn):
    """For commands that are not data-parallel: launched under torchrun, rank 0 does the work and the
    other ranks return at once (instead of all writing the same files)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .parallel.world import from_env

        if from_env().rank != 0:
            return None
        return fn(*args, **kwargs)

    return wrapper


def precision_option():
    """--precision of the commands that sample a run (speed.sampling_amp)."""
    return typer.Option("auto", help="What sampling computes in: auto (the family's measured default: bf16 for "
                                     "GANs and flow matching where the CPU or GPU has native bf16, else "
                                     "float32), float32, bf16. Features and likelihoods are always float32.")


def declared_sample_options() -> dict:
    """{name: SampleOption} over every registered family (one meaning per name across families)."""
    out: dict = {}
    for name in registry.available("family"):
        for opt in registry.get("family", name).sample_options:
            if opt.name in out and out[opt.name].type is not opt.type:
                raise TypeError(f"sampling option {opt.name!r} is declared with two types")
            out.setdefault(opt.name, opt)
    return out


def with_sample_options(fn):
    """Give a command one `--option` per sampling option the registered families declare (e.g.
    --temperature); the command receives the ones given as `sample_options={name: value}`.

    Typer reads a command's parameters from its signature, so the declared options are appended to
    the command's own signature here -- built from the families' declarations, not read from them."""
    options = declared_sample_options()
    own = inspect.signature(fn)
    extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[o.type],
                               default=typer.Option(None, f"--{o.name.replace('_', '-')}",
                                                    help=f"{o.help} (families that declare it)"))
             for o in options.values()]
    kept = [p for p in own.parameters.values() if p.name != "sample_options"]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = {name: kwargs.pop(name) for name in options}
        return fn(*args, sample_options={k: v for k, v in given.items() if v is not None}, **kwargs)

    wrapper.__signature__ = own.replace(parameters=kept + extra)
    return wrapper
