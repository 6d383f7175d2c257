"""TensorBoard HParams: every run's resolved config and final metrics, so `tensorboard --logdir runs`
shows one row per run in the HParams dashboard.

Only the per-run *session start* summary is written (tensorboard's own `hparams_pb`), never a
global experiment summary: TensorBoard then builds the experiment from all runs it finds, so runs of
different families (with different option sets) all appear, and its metric columns are every scalar
tag of the runs -- the live training curves (train/*, eval/fid, diagnose/*) plus the `final/*`
scalars written here. Final metrics get their own `final/` tags so that an end-of-run evaluation at
n = 10,000 never lands on the same curve as the cheap periodic `eval/fid`.

The summary goes into RUN_DIR/tb (the training writer's directory), so TensorBoard sees one run per
run directory. Calling again (at the start of training, at its end, after `genlab eval`) is safe:
TensorBoard keeps the first session start info of a run, the hparams are the same, and new final
metrics are added as scalars. `genlab eval` already logs `eval_n<N>/*` scalars into RUN_DIR/tb, and
those appear as HParams metric columns by themselves -- one column per n, as FID demands -- so after
an evaluation there is no need to pass its metrics here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

# Config keys that name where or how a run was launched rather than what was trained.
_NOT_HPARAMS = {"out", "name", "description", "device", "data.root", "train.threads", "train.log_every",
                "train.sample_every", "train.checkpoint_every", "train.keep_checkpoints", "train.grid_size"}
_NOT_METRICS = {"step", "run_dir", "seed", "n", "n_real", "n_fake"}


def hparam_dict(cfg: Any) -> dict[str, bool | int | float | str]:
    """A RunConfig (or its dict) -> flat {"gan.n_critic": 5, "train.steps": 6000, ...} of scalars."""
    d = dict(cfg) if isinstance(cfg, Mapping) else cfg.to_dict()
    out: dict[str, bool | int | float | str] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}.")
            return
        key = prefix[:-1]
        if key in _NOT_HPARAMS or obj is None:
            return
        if isinstance(obj, (bool, int, float, str)):
            out[key] = obj
        else:  # lists (betas, regularizers) become their JSON text: comparable, and shown as is
            out[key] = json.dumps(obj, sort_keys=True, default=str)

    walk(d, "")
    return out


def metric_dict(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Finite numbers only; nested records are flattened ({"kid": {"mean": x}} -> kid_mean)."""
    out: dict[str, float] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}_")
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
            key = prefix[:-1].replace("/", "_")
            if key not in _NOT_METRICS:
                out[key] = float(obj)

    walk(dict(metrics or {}), "")
    return out


def log_hparams(run_dir: str | Path, cfg: Any, final_metrics: Mapping[str, Any] | None = None,
                step: int | None = None, writer=None) -> Path:
    """Write the run's hparams (session start info) and `final/<metric>` scalars into RUN_DIR/tb.

    `cfg`: the RunConfig (or its dict); `final_metrics`: e.g. the dict returned by Trainer.run();
    `step`: x position of the final scalars (default: the "step" in final_metrics, else cfg
    train.steps); `writer`: an open SummaryWriter on RUN_DIR/tb to reuse (e.g. RunLogger.tb; it is
    flushed, not closed) -- otherwise one is opened and closed here. Returns the tb directory."""
    from tensorboard.plugins.hparams.summary_v2 import hparams_pb

    tb = Path(run_dir) / "tb"
    hp = hparam_dict(cfg)
    if step is None:
        raw = (final_metrics or {}).get("step")
        step = int(raw) if isinstance(raw, (int, float)) else int(hp.get("train.steps", 0))
    own = writer is None
    if own:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tb))
    try:
        writer.file_writer.add_summary(hparams_pb(hp))
        for key, value in metric_dict(final_metrics).items():
            writer.add_scalar(f"final/{key}", value, step)
        writer.flush()
    finally:
        if own:
            writer.close()
    return tb
