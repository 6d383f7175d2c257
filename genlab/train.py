"""THE training loop, shared by every family.

It knows nothing about losses or architectures: it draws batches, calls family.train_step,
guards against divergence, keeps an EMA, logs, writes sample grids with fixed noise, runs
periodic hooks (evaluation, diagnostics), and writes checkpoints atomically. Resume restores
every RNG, the data sampler position, optimizer state, EMA and the step counter, so that a run
of 2N steps equals a run of N steps resumed for N more.

It keeps a GPU busy: losses stay device tensors, summed over the log window (`LossWindow`) and read
back only every `train.log_every` steps -- or before anything is saved, so a NaN at step s stops the
run at the first log or checkpoint step >= s and never reaches a checkpoint.

Under torchrun (see genlab.parallel) every rank runs this loop on its rows of each global batch;
rank 0 alone writes the run directory, the others wait at barriers; logged losses are means over
ranks, so they read the same at any world size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import checkpoint, parallel, rundir
from .config import RunConfig, build, dump, saved_layer
from .cores import RECHECK_SECONDS, CoreShare
from .cores import describe as describe_cores
from .data import Shard, load_dataset, make_sampler
from .ema import EMA
from .errors import ConfigError, RunError, TrainingDiverged
from .families.base import build_family
from .logger import RunLogger
from .parallel.modules import to_channels_last
from .report.hparams import log_hparams
from .report.plots import samples_to_tensorboard, save_samples
from .speed import autocast, draw, sampling_amp

GRID_SEED_OFFSET = 1_000_003  # fixed noise for grids, independent of the training RNG


def default_run_dir(cfg: RunConfig) -> Path:
    if cfg.name:
        return Path(cfg.out) / rundir.check_name(cfg.name)
    data = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.data.name)[:40]
    return Path(cfg.out) / f"{cfg.model}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def info_to_dict(info) -> dict:
    return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}


@dataclasses.dataclass
class Hook:
    """A periodic task during training: `fn(trainer, step) -> metrics` every `every` steps."""
    name: str
    every: int
    fn: Callable[["Trainer", int], dict]


class LossWindow:
    """Losses of the steps since the last log, summed on the device; read back only when asked."""

    def __init__(self, device: torch.device):
        self.device, self.sums, self.steps, self.first = device, {}, 0, None

    def add(self, step: int, losses: dict) -> None:
        for k, v in losses.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            v = v.to(self.device).reshape(())
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.steps += 1
        self.first = step if self.first is None else self.first

    def _global(self) -> dict[str, float]:
        """Sums over the window and over ranks, as floats: the one host read-back."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        stacked = parallel.all_reduce_sum(torch.stack([self.sums[k] for k in keys]))
        return dict(zip(keys, stacked.tolist()))

    def read(self, step: int, ckpt_dir: Path) -> dict[str, float]:
        """Means over the window's steps and over ranks (checked first); the window starts afresh."""
        means = self._means(self._global())
        self._check(step, ckpt_dir, means)
        self.sums, self.steps, self.first = {}, 0, None
        return means

    def check(self, step: int, ckpt_dir: Path) -> None:
        """Raise TrainingDiverged if any loss of the window so far is not finite (the window is kept)."""
        self._check(step, ckpt_dir, self._means(self._global()))

    def _means(self, sums: dict[str, float]) -> dict[str, float]:
        denom = max(self.steps, 1) * parallel.world().size
        return {k: v / denom for k, v in sums.items()}

    def _check(self, step: int, ckpt_dir: Path, means: dict[str, float]) -> None:
        bad = [(k, v) for k, v in means.items() if not math.isfinite(v)]
        if not bad:
            return
        first = self.first if self.first is not None else step
        kept = kept_checkpoint(ckpt_dir)
        where = f"at step {step}" if first == step else f"between steps {first} and {step}"
        name, value = bad[0]
        raise TrainingDiverged(f"training diverged {where}: loss {name} = {value}; stopped, {kept}. "
                               f"Try a lower learning rate or gradient clipping.")


def kept_checkpoint(ckpt_dir: Path) -> str:
    last = ckpt_dir / "last.pt"
    return f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"


class Trainer:
    """One training run. It owns its run directory for its lifetime (rundir.RunLock, taken here and
    released when `run` ends): a new run refuses a directory that holds files unless `overwrite`."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, resume: bool = False, show_progress: bool = True,
                 overwrite: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.device = parallel.setup(cfg.device)
        self.world = parallel.world()
        self.show_progress = show_progress and self.world.main
        self.lock = rundir.RunLock(self.run_dir)
        self._build(cfg)  # data and nets first: a bad config fails before the run directory is touched
        fresh = not self.run_dir.exists()
        parallel.on_main(self._own, resume, overwrite)
        try:
            if resume:
                self._resume()
        except BaseException:
            self.lock.release()
            if fresh and self.world.main:
                rundir.remove_if_unused(self.run_dir)
            raise

    def _own(self, resume: bool, overwrite: bool) -> None:
        """Rank 0: refuse a used run directory for a new run (before touching anything), lock it, then
        clear it (--overwrite) and drop stray temp files."""
        if not resume and not overwrite:
            rundir.check_new(self.run_dir)
        self.lock.acquire()
        try:
            if not resume:
                rundir.check_new(self.run_dir, overwrite)
            rundir.clean_strays(self.run_dir)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, cfg: RunConfig) -> None:
        self.cores = CoreShare(cfg.train.threads)
        self._share_cores(announce=True)
        _seed_everything(cfg.seed)
        self.data = None if cfg.data.streaming else load_dataset(cfg.data, split="train")
        self.info = self.data.info if self.data is not None else None
        if self.info is None:  # streaming: the sampler knows the shape without decoding everything
            self.info = make_sampler(cfg.data, None, 1, cfg.seed).info
        self.family = build_family(cfg, self.info, self.device)
        # grids and periodic evaluation sample as `genlab sample / eval` do by default
        self.sample_amp, self.sample_precision = sampling_amp(type(self.family), self.info.kind, self.device)
        per_step = self.family.batches_per_step
        shard = Shard(self.world.rank, self.world.size, per_step)
        self.sampler = make_sampler(cfg.data, self.data, cfg.train.batch_size * per_step, cfg.seed, self.device,
                                    shard=shard)
        self.ema = EMA(self.family.ema_modules, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.step, self.wall_time, self.best = 0, 0.0, {}
        self.hooks: list[Hook] = _build_hooks(cfg, self.info)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.logger = RunLogger(self.run_dir, enabled=self.world.main)
        self.window = LossWindow(self.device)

    def _resume(self) -> None:
        self._restore(parallel.on_main(checkpoint.load, self.ckpt_dir / "last.pt", self.cfg.model))
        if self.step >= self.cfg.train.steps:
            raise RunError(f"{self.run_dir} already finished {self.step} steps (train.steps = "
                           f"{self.cfg.train.steps}); pass a larger --steps to continue training")
        if self.world.main:
            rundir.truncate_log(self.run_dir, self.step)  # the lost steps' lines go
        # TensorBoard hides events after the checkpoint's step, as metrics.jsonl drops them
        self.logger = RunLogger(self.run_dir, enabled=self.world.main, purge_step=self.step + 1)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        """Train to train.steps; the run directory's lock is released however this ends."""
        try:
            return self._run()
        except parallel.DistributedError as e:  # SIGTERM from torchrun: another rank failed
            raise parallel.DistributedError(f"{e} at step {self.step}; {kept_checkpoint(self.ckpt_dir)}") from None
        except OSError as e:  # disk full, read-only file system, permissions: say what, where, and what is kept
            raise RunError(f"{rundir.fs_message(e)}; stopped at step {self.step}, {kept_checkpoint(self.ckpt_dir)}") from None
        except RuntimeError as e:
            if self.world.distributed and _is_comm_error(e):
                raise parallel.DistributedError(
                    f"lost contact with another rank at step {self.step} ({str(e).strip().splitlines()[0][:160]}); "
                    f"{kept_checkpoint(self.ckpt_dir)}") from None
            raise
        finally:
            self.logger.close()
            self.lock.release()
            self.cores.release()

    def _run(self) -> dict:
        cfg = self.cfg.train
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump(self.cfg))
            log_hparams(self.run_dir, self.cfg, writer=self.logger.tb)  # visible in HParams while training
        parallel.barrier()
        images_per_step = cfg.batch_size * self.family.batches_per_step  # global images
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.cfg.model or self.cfg.family, unit="step",
                   dynamic_ncols=True, disable=not self.show_progress, mininterval=0.5)
        last_log, t_log = self.step, time.perf_counter()
        t_start, self._wall_before = time.perf_counter(), self.wall_time
        losses: dict[str, float] = {}
        try:
            while self.step < cfg.steps:
                self._one_step(self.step + 1)
                self.step += 1
                bar.update(1)
                if time.perf_counter() - self._cores_checked > RECHECK_SECONDS:
                    self._share_cores()
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    losses = self._log(last_log, t_log, images_per_step, bar)
                    last_log, t_log = self.step, time.perf_counter()
                self._periodic(self.step, t_start)
        finally:
            bar.close()
        if self.world.main:
            log_hparams(self.run_dir, self.cfg, {**losses, "wall_time": self.wall_time}, step=self.step,
                        writer=self.logger.tb)
        parallel.barrier()
        return {"step": self.step, "run_dir": str(self.run_dir), "wall_time": self.wall_time, **losses}

    def _one_step(self, step: int) -> None:
        x, y = self.sampler.next()
        if self.cfg.train.channels_last == "on":
            x = to_channels_last(x)
        with autocast(self.device, self.cfg.train.amp):
            losses = self.family.train_step((x, y), step)
        self.window.add(step, losses)
        if self.ema is not None:
            self.ema.update()

    def _log(self, last_log: int, t_log: float, images_per_step: int, bar) -> dict[str, float]:
        losses = self.window.read(self.step, self.ckpt_dir)
        ips = (self.step - last_log) * images_per_step / max(time.perf_counter() - t_log, 1e-9)
        self.logger.scalars(self.step, {**losses, "images_per_sec": ips}, prefix="train/")
        shown = {k: f"{v:.3g}" for k, v in list(losses.items())[:4]}
        self._best_ips = max(getattr(self, "_best_ips", 0.0), ips)
        if ips < 0.5 * self._best_ips:  # something else took the cores (another run, a test suite ...)
            shown["slow"] = f"{ips:.0f} img/s, {100 * ips / self._best_ips:.0f}% of best"
        bar.set_postfix(shown, refresh=False)
        return losses

    def _share_cores(self, announce: bool = False) -> None:
        """Use this trainer's share of the cores (see genlab/cores.py); say so when it changes."""
        threads = self.cores.threads()
        self._cores_checked = time.perf_counter()
        if threads != torch.get_num_threads() or announce:
            torch.set_num_threads(threads)
            others = self.cores.others() if not self.cores.fixed else 0
            if others and self.world.main:
                tqdm.write(f"note: {describe_cores(threads, others)}", file=sys.stderr)

    def _periodic(self, step: int, t_start: float) -> None:
        cfg = self.cfg.train
        final = step == cfg.steps
        if self.world.main and (_due(step, cfg.sample_every) or final):
            self.write_grid(step)
        for hook in self.hooks:
            if _due(step, hook.every) or (final and hook.every > 0):
                metrics = parallel.broadcast_object(hook.fn(self, step))
                self.logger.scalars(step, metrics, prefix=f"{hook.name}/")
                self._maybe_best(metrics)
        if _due(step, cfg.checkpoint_every) or final:
            self.window.check(step, self.ckpt_dir)  # never save a diverged state
            self.wall_time = self._wall_before + time.perf_counter() - t_start
            self.save("last")
            if _due(step, cfg.checkpoint_every):
                self.save(f"step-{step}")
                if self.world.main:
                    checkpoint.prune(self.ckpt_dir, cfg.keep_checkpoints)

    def _maybe_best(self, metrics: dict) -> None:
        """Keep best.pt by FID (lower is better) when a hook reports one."""
        fid = metrics.get("fid")
        if fid is not None and math.isfinite(fid) and fid < self.best.get("fid", math.inf):
            self.best = {"fid": fid, "step": self.step}
            self.save("best")

    # ------------------------------------------------------------------ sampling
    def sampling_context(self):
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def write_grid(self, step: int) -> Path:
        gen = torch.Generator().manual_seed(self.cfg.seed + GRID_SEED_OFFSET)
        with self.sampling_context():
            samples = draw(self.family, self.sample_amp, self.cfg.train.grid_size if self.info.kind == "image" else 2500,
                           gen)
        path = save_samples(samples, self.info, self.run_dir / "samples" / f"step-{step}.png", title=f"step {step}")
        samples_to_tensorboard(self.logger, samples, self.info, step)
        return path

    # ------------------------------------------------------------------ checkpoints
    def save(self, tag: str) -> None:
        """Every rank takes part (per-rank state is gathered); rank 0 writes, the others wait."""
        family_state = self.family.state_dict()
        local = {k: family_state[k] for k in self.family.rank_local_state}
        rank_states = parallel.all_gather_objects(_to_cpu(local)) if local else None
        if self.world.main:
            state = {
                "format": checkpoint.FORMAT, "version": checkpoint.VERSION,
                "model": self.cfg.model, "family": self.cfg.family, "step": self.step,
                "config": self.cfg.to_dict(), "data_info": info_to_dict(self.info),
                "family_state": family_state,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": _rng_state(), "sampler": self.sampler.state_dict(),
                "wall_time": self.wall_time, "best": self.best,
                "world_size": self.world.size, "rank_states": rank_states,
            }
            checkpoint.save_atomic(state, self.ckpt_dir / f"{tag}.pt")
        parallel.barrier()

    def _restore(self, ckpt: dict) -> None:
        saved = build([saved_layer(ckpt["config"])]).to_dict()
        differs = rundir.resume_differences(saved, self.cfg.to_dict())
        if differs:
            raise ConfigError(f"cannot resume {self.run_dir} with a different {', '.join(differs)}; "
                              f"train a new run instead")
        state = dict(ckpt["family_state"])
        saved_world = int(ckpt.get("world_size", 1))
        rank_states = ckpt.get("rank_states")
        if saved_world != self.world.size:
            if self.world.main:
                differs = (f"; per-rank state ({', '.join(self.family.rank_local_state)}) restarts from rank 0's"
                           if self.family.rank_local_state else "")
                tqdm.write(f"warning: {self.run_dir} was trained on {saved_world} rank(s), resuming on "
                           f"{self.world.size}: the global batches are the same, but the resume is not "
                           f"bit-exact (gradient sums in another order{differs})", file=sys.stderr)
        elif rank_states:
            state.update(rank_states[self.world.rank])
        self.family.load_state_dict(state)
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"], self.device)
        self.sampler.load_state_dict(ckpt["sampler"])
        _set_rng_state(ckpt["rng"])
        self.step, self.wall_time, self.best = ckpt["step"], ckpt.get("wall_time", 0.0), ckpt.get("best", {})


def _due(step: int, every: int) -> bool:
    """A periodic action at this step (every = 0: never periodically; see the config's declarations)."""
    return every > 0 and step % every == 0


def _is_comm_error(e: Exception) -> bool:
    """A collective failed because a peer died (gloo/nccl), not a bug in this rank's own code."""
    names = {t.__name__ for t in type(e).__mro__}
    text = str(e)
    return bool(names & {"DistBackendError", "DistNetworkError", "DistError"}) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL error"))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _build_hooks(cfg: RunConfig, info) -> list[Hook]:
    hooks = []
    # 2-D mixtures: the mode diagnostics cost milliseconds, so every run has them at its last step
    # (in metrics.jsonl, and so in `genlab compare`) unless diagnose.final is off
    diagnose_every = cfg.diagnose.every or (cfg.train.steps if cfg.diagnose.final and info.kind == "points" else 0)
    if cfg.eval.every > 0:
        from .eval.periodic import eval_hook

        hooks.append(Hook("eval", cfg.eval.every, eval_hook(cfg)))
    if diagnose_every > 0:
        from .eval.diagnose import diagnose_hook

        hooks.append(Hook("diagnose", diagnose_every, diagnose_hook(cfg)))
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
