"""THE training loop, shared by every family.

It knows nothing about losses or architectures: it draws batches, calls family.train_step,
guards against divergence, keeps an EMA, logs, writes sample grids with fixed noise, runs
periodic hooks (evaluation, diagnostics), and writes checkpoints atomically. Resume restores
every RNG, the data sampler position, optimizer state, EMA and the step counter, so that a run
of 2N steps equals a run of N steps resumed for N more.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import checkpoint
from .config import RunConfig, dump
from .data import load_dataset, make_sampler
from .ema import EMA
from .errors import RunError, TrainingDiverged
from .families.base import build_family
from .logger import RunLogger
from .report.hparams import log_hparams
from .report.plots import samples_to_tensorboard, save_samples

GRID_SEED_OFFSET = 1_000_003  # fixed noise for grids, independent of the training RNG


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but CUDA is not available on this machine")
    return torch.device(name)


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.name or f"{cfg.model}-{cfg.data.name.replace(':', '_').replace('/', '_')}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.out) / name


def info_to_dict(info) -> dict:
    return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}


@dataclasses.dataclass
class Hook:
    """A periodic task during training: `fn(trainer, step) -> metrics` every `every` steps."""
    name: str
    every: int
    fn: Callable[["Trainer", int], dict]


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True):
        self.cfg, self.run_dir, self.show_progress = cfg, Path(run_dir), show_progress
        self.device = select_device(cfg.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        _seed_everything(cfg.seed)
        self.data = None if cfg.data.streaming else load_dataset(cfg.data, split="train")
        self.info = self.data.info if self.data is not None else None
        if self.info is None:  # streaming: the sampler knows the shape without decoding everything
            self.info = make_sampler(cfg.data, None, 1, cfg.seed).info
        self.family = build_family(cfg, self.info, self.device)
        per_step = getattr(self.family, "batches_per_step", 1)
        self.sampler = make_sampler(cfg.data, self.data, cfg.train.batch_size * per_step, cfg.seed, self.device)
        self.ema = EMA(self.family.ema_module, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.step, self.wall_time, self.best = 0, 0.0, {}
        self.hooks: list[Hook] = _build_hooks(cfg)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if resume:
            self._restore(checkpoint.load(self.ckpt_dir / "last.pt", model=cfg.model))
        self.logger = RunLogger(self.run_dir)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg = self.cfg.train
        if self.step >= cfg.steps:
            raise RunError(f"{self.run_dir} already finished {self.step} steps (train.steps = {cfg.steps}); "
                           f"pass a larger --steps to continue training")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump(self.cfg))
        log_hparams(self.run_dir, self.cfg, writer=self.logger.tb)  # visible in HParams while training
        images_per_step = cfg.batch_size * getattr(self.family, "batches_per_step", 1)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.cfg.model or self.cfg.family, unit="step",
                   dynamic_ncols=True, disable=not self.show_progress, mininterval=0.5)
        last_log, t_log = self.step, time.perf_counter()
        t_start, self._wall_before = time.perf_counter(), self.wall_time
        losses: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                losses = self._one_step(self.step + 1)
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    ips = (self.step - last_log) * images_per_step / max(now - t_log, 1e-9)
                    self.logger.scalars(self.step, {**losses, "images_per_sec": ips}, prefix="train/")
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]}, refresh=False)
                    last_log, t_log = self.step, now
                self._periodic(self.step, t_start)
            log_hparams(self.run_dir, self.cfg, {**losses, "wall_time": self.wall_time}, step=self.step,
                        writer=self.logger.tb)
        finally:
            bar.close()
            self.logger.close()
        return {"step": self.step, "run_dir": str(self.run_dir), "wall_time": self.wall_time, **losses}

    def _one_step(self, step: int) -> dict[str, float]:
        batch = self.sampler.next()
        amp = self.cfg.train.amp and self.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with ctx:
            losses = self.family.train_step(batch, step)
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            last = self.ckpt_dir / "last.pt"
            kept = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"
            name, value = next(iter(bad.items()))
            raise TrainingDiverged(f"training diverged at step {step}: loss {name} = {value}; stopped, {kept}. "
                                   f"Try a lower learning rate or gradient clipping.")
        if self.ema is not None:
            self.ema.update(self.family.ema_module)
        return losses

    def _periodic(self, step: int, t_start: float) -> None:
        cfg = self.cfg.train
        final = step == cfg.steps
        if step % cfg.sample_every == 0 or final:
            self.write_grid(step)
        for hook in self.hooks:
            if step % hook.every == 0 or (final and hook.every > 0):
                metrics = hook.fn(self, step)
                self.logger.scalars(step, metrics, prefix=f"{hook.name}/")
                self._maybe_best(metrics)
        if step % cfg.checkpoint_every == 0 or final:
            self.wall_time = self._wall_before + time.perf_counter() - t_start
            self.save("last")
            if step % cfg.checkpoint_every == 0:
                self.save(f"step-{step}")
                checkpoint.prune(self.ckpt_dir, cfg.keep_checkpoints)

    def _maybe_best(self, metrics: dict) -> None:
        """Keep best.pt by FID (lower is better) when a hook reports one."""
        fid = metrics.get("fid")
        if fid is not None and math.isfinite(fid) and fid < self.best.get("fid", math.inf):
            self.best = {"fid": fid, "step": self.step}
            self.save("best")

    # ------------------------------------------------------------------ sampling
    def sampling_context(self):
        return self.ema.applied(self.family.ema_module) if self.ema is not None else contextlib.nullcontext()

    def write_grid(self, step: int) -> Path:
        gen = torch.Generator().manual_seed(self.cfg.seed + GRID_SEED_OFFSET)
        with self.sampling_context():
            samples = self.family.sample(self.cfg.train.grid_size if self.info.kind == "image" else 2500, gen)
        path = save_samples(samples, self.info, self.run_dir / "samples" / f"step-{step}.png", title=f"step {step}")
        samples_to_tensorboard(self.logger, samples, self.info, step)
        return path

    # ------------------------------------------------------------------ checkpoints
    def save(self, tag: str) -> None:
        state = {
            "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            "model": self.cfg.model, "family": self.cfg.family, "step": self.step,
            "config": self.cfg.to_dict(), "data_info": info_to_dict(self.info),
            "family_state": self.family.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _rng_state(), "sampler": self.sampler.state_dict(),
            "wall_time": self.wall_time, "best": self.best,
        }
        checkpoint.save_atomic(state, self.ckpt_dir / f"{tag}.pt")

    def _restore(self, ckpt: dict) -> None:
        self.family.load_state_dict(ckpt["family_state"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"], self.device)
        self.sampler.load_state_dict(ckpt["sampler"])
        _set_rng_state(ckpt["rng"])
        self.step, self.wall_time, self.best = ckpt["step"], ckpt.get("wall_time", 0.0), ckpt.get("best", {})


def _build_hooks(cfg: RunConfig) -> list[Hook]:
    hooks = []
    if cfg.eval.every > 0:
        from .eval.periodic import eval_hook

        hooks.append(Hook("eval", cfg.eval.every, eval_hook(cfg)))
    if cfg.diagnose.every > 0:
        from .eval.diagnose import diagnose_hook

        hooks.append(Hook("diagnose", cfg.diagnose.every, diagnose_hook(cfg)))
    return hooks


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
