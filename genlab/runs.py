"""Reading run directories back: config + checkpoint -> a ready family (EMA applied for sampling)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint
from .config import RunConfig, build, saved_layer
from .data import DataInfo
from .ema import EMA
from .errors import RunError
from .families.base import build_family
from .parallel import setup
from .speed import sampling_amp


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    family: object
    info: DataInfo
    step: int
    checkpoint: str
    ema: EMA | None
    # what family.sample computes in here (speed.sampling_amp): autocast amp and the record's label
    sample_amp: str = "off"
    sample_precision: str = "float32"

    def sampling(self):
        """Context in which family.sample uses the EMA weights (when the run kept an EMA)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()


def _is_imported(run_dir: Path) -> bool:
    """An eval-only directory of `genlab eval --fake ... --run-dir` (eval/imported.py)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False  # the checkpoint decides what this is
    return isinstance(config, dict) and config.get("family") == "imported"


def load_run(run_dir: str | Path, which: str = "last", device: str | torch.device = "auto",
             precision: str = "auto") -> LoadedRun:
    """A run's family from its checkpoint, on `device` (a --device string: under torchrun each rank's
    own, see genlab.parallel; or a torch.device used as is), sampling in `precision` (--precision:
    auto | float32 | bf16, see speed.sampling_amp)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a genlab run directory (no config.yaml)")
    if _is_imported(run_dir):
        raise RunError(f"{run_dir} holds imported samples, not a model: score them again with "
                       f"`genlab eval --fake FILE --run-dir {run_dir}`")
    path = checkpoint.resolve(run_dir, which)
    ckpt = checkpoint.load(path)
    cfg = build([saved_layer(ckpt["config"])])
    dev = device if isinstance(device, torch.device) else setup(device)
    info = DataInfo(**ckpt["data_info"])
    family = build_family(cfg, info, dev)
    family.load_state_dict(ckpt["family_state"])
    amp, label = sampling_amp(type(family), info.kind, dev, precision)
    ema = None
    if ckpt.get("ema") is not None:
        ema = EMA(family.ema_modules, ckpt["ema"]["decay"])
        ema.load_state_dict(ckpt["ema"], dev)
    return LoadedRun(run_dir, cfg, family, info, ckpt["step"], which, ema, amp, label)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
