"""Run logging: one JSON line per logged step in metrics.jsonl, mirrored to TensorBoard."""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import Tensor


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._tb_dir = Path(run_dir) / "tb"
        self._purge_step = purge_step  # on resume: TensorBoard discards events logged after the checkpoint

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

            self._tb = SummaryWriter(str(self._tb_dir), purge_step=self._purge_step)
        return self._tb

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}{k}": _json_safe(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{prefix}{k}", v, step)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        if self.enabled:
            self.tb.add_image(tag, grid, step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.enabled:
            self.tb.add_figure(tag, fig, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a run killed mid-line leaves a partial last line
            continue
    return out
