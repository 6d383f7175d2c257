"""`genlab diagnose` and the training hook: run the diagnostic measures that apply, record, warn.

    record = diagnose(load_run("runs/x"), n=None, seed=0)  # -> dict; appended to RUN_DIR/diagnostics.json

What runs is whatever the measure registry says applies to the run's data and family (see
eval/diagnostics.py); each measure's plot is drawn by report/diagnostic_plots.py.

During training, `diagnose_hook(cfg)` runs the cheap measures that apply (mixture / stacked /
classes) on cfg.diagnose.n samples of fixed noise, keeps the best coverage seen, and prints a
collapse warning naming the step and the figure when coverage falls below 75% of its best. It draws
noise from its own generator, forks the global RNGs and restores module modes, so a resumed run
stays exact.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from .. import __version__, parallel, records
from ..errors import GenlabError
from .context import TrainerView, forked_rng, preserved_modes
from .diagnostics import DiagnoseContext, classifier_for  # noqa: F401  (classifier_for: public helper)
from .measures import Measure, measures

COLLAPSE_RATIO = 0.75  # warn when coverage < 75% of its best value
DIAG_SEED_OFFSET = 3_000_003  # hook noise, independent of training, grids and periodic eval
OUT_FILE = "diagnostics.json"
DEFAULT_CAPABILITIES = frozenset({"sample"})


def applicable(info, capabilities=DEFAULT_CAPABILITIES, cheap: bool = False) -> list[Measure]:
    if info.kind == "points" and info.modes is None:
        raise GenlabError(f"{info.name}: 2-D data without known mode centres cannot be diagnosed")
    return [m for m in measures("diagnose") if m.applies(info, capabilities) and (m.cheap or not cheap)]


def plan(info, capabilities=DEFAULT_CAPABILITIES) -> list[str]:
    """The names of the diagnostics that fit a run's data and family."""
    return [m.name for m in applicable(info, capabilities)]


# ----------------------------------------------------------------------------- the full diagnosis
def diagnose(run, n: int | None = None, seed: int = 0, out_dir: str | Path | None = None,
             log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Run every diagnostic that fits `run` (a genlab.runs.LoadedRun); append the record to
    diagnostics.json and write the PNGs into `out_dir` (default: the run directory); return it."""
    from ..report import diagnostic_plots

    info, t0 = run.info, time.perf_counter()
    chosen = applicable(info, run.family.capabilities)
    if not chosen:
        raise GenlabError(f"no diagnostic applies to {run.cfg.model} on {info.name}")
    n = n or max((m.default_n or 0) for m in chosen) or 10000
    if n < 2:
        raise GenlabError(f"--n must be at least 2, got {n}")
    out_dir = Path(out_dir or run.run_dir)
    ctx = DiagnoseContext(run, n, seed, log)
    results = {m.name: m.compute(ctx) for m in chosen}
    title = f"{run.cfg.model or run.cfg.family} on {info.name}, {run.checkpoint} (step {run.step})"
    plots = []
    for name, section in results.items():
        fig = diagnostic_plots.draw(name, section, ctx.artifacts.get(name, {}), info, title)
        if fig is not None:
            plots.append(diagnostic_plots.save(fig, out_dir, name))
    ext = ctx.extractor
    record = {"kind": "diagnostics", "model": run.cfg.model, "dataset": info.name, "checkpoint": run.checkpoint,
              "step": run.step, "n": n, "seed": seed, "diagnostics": results,
              "extractor": ext.name if ext is not None else None,
              "extractor_fingerprint": ext.fingerprint if ext is not None else None,
              "plots": [p.name for p in plots], "timestamp": records.now(),
              "genlab_version": __version__, "seconds": round(time.perf_counter() - t0, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    records.append_record(out_dir / OUT_FILE, record)
    return record


def format_table(record: dict) -> str:
    """The headline figures of a diagnostics record as an aligned two-column table."""
    rows = []
    for m in measures("diagnose"):
        if m.name in record["diagnostics"]:
            rows += m.table_rows(record["diagnostics"][m.name])
    width = max((len(r[0]) for r in rows), default=6)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ----------------------------------------------------------------------------- during training
def diagnose_hook(cfg):
    """fn(trainer, step) -> flat dict of floats (logged under diagnose/); see the module docstring."""
    state: dict = {"best": None, "best_step": None, "warned_at": None}

    def fn(trainer, step: int) -> dict:
        caps = trainer.family.capabilities
        chosen = [m for m in applicable(trainer.info, caps, cheap=True) if m.coverage]
        if not chosen:
            return {}
        with forked_rng(trainer.device), preserved_modes(trainer.family):
            ctx = DiagnoseContext(TrainerView(trainer), cfg.diagnose.n, cfg.seed + DIAG_SEED_OFFSET, log=lambda m: None,
                                  data=trainer.data)
            out = {}
            for m in chosen:
                section = m.compute(ctx)
                out.update({f.leaf: float(section[f.leaf]) for f in m.figures
                            if f.direction != "info" and f.leaf in section})
        m = chosen[0]
        key = m.coverage.rsplit(".", 1)[-1]
        if state["best"] is None:
            state["best"], state["best_step"] = _best_from_log(trainer, key, step)
        out.update(collapse_check(state, out[key], step, key))
        return out

    return fn


def collapse_check(state: dict, value: float, step: int, figure: str, ratio: float = COLLAPSE_RATIO) -> dict:
    """Track the best coverage; warn (once per new low) when `value` < ratio * best. -> {"collapse": 0|1}."""
    best = state.get("best")
    if best is None or value > best:
        state["best"], state["best_step"] = value, step
        best = value
    collapsed = best > 0 and value < ratio * best
    if not collapsed:
        state["warned_at"] = None
    elif state.get("warned_at") is None or value < state["warned_at"]:
        state["warned_at"] = value
        _warn(f"collapse warning: step {step}: {figure} fell to {value:g} (best {best:g} at step "
              f"{state['best_step']}; below {ratio:.0%} of best)")
    return {"collapse": float(collapsed), f"best_{figure}": float(best)}


def _warn(msg: str) -> None:
    from tqdm.auto import tqdm

    if parallel.is_main():
        tqdm.write(msg, file=sys.stderr)


def _best_from_log(trainer, key: str, step: int) -> tuple[float | None, int | None]:
    """On resume, recover the best coverage logged before `step` (the hook state is not checkpointed)."""
    from ..logger import read_metrics

    best, best_step = None, None
    for rec in read_metrics(trainer.run_dir):
        v = rec.get(f"diagnose/{key}")
        if isinstance(v, (int, float)) and rec.get("step", math.inf) < step and (best is None or v > best):
            best, best_step = float(v), rec["step"]
    return best, best_step
