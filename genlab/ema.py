"""Exponential moving average of the weights sampling uses (a family's `ema_modules`).

One module keeps its own state_dict keys; several are keyed "0.<key>", "1.<key>", ... (as an
nn.ModuleList would be), so CycleGAN's two generators are both averaged and both applied.

Warm-up: update n (from 0) uses decay min(decay, (1 + n) / (10 + n)), the rule of TensorFlow's
ExponentialMovingAverage with num_updates. Without it the average at step k still holds decay^k
of the random initial weights (37% at step 1,000 with 0.999), so early sample grids and periodic
evaluations of diffusion runs showed noise; after ~10 / (1 - decay) updates the two agree."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from .errors import CheckpointError


def _joint_state(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    if len(modules) == 1:
        return modules[0].state_dict()
    return {f"{i}.{k}": v for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def _load_joint(modules: Sequence[nn.Module], state: dict[str, torch.Tensor]) -> None:
    if len(modules) == 1:
        modules[0].load_state_dict(state)
        return
    for i, m in enumerate(modules):
        prefix = f"{i}."
        m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


class EMA:
    def __init__(self, modules: Sequence[nn.Module], decay: float):
        self.modules = list(modules)
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in _joint_state(self.modules).items()}

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for k, v in _joint_state(self.modules).items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - decay)
            else:  # counters such as BatchNorm's num_batches_tracked are copied
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self):
        """Temporarily load the averaged weights into the modules."""
        backup = {k: v.detach().clone() for k, v in _joint_state(self.modules).items()}
        _load_joint(self.modules, self.shadow)
        try:
            yield self.modules
        finally:
            _load_joint(self.modules, backup)

    def copy_to(self, modules: Sequence[nn.Module] | None = None) -> None:
        """Load the averaged weights into the modules for good (e.g. a frozen first stage)."""
        _load_joint(list(modules) if modules is not None else self.modules, self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise CheckpointError("the checkpoint's EMA does not match this model's sampling weights "
                                  f"({len(state['shadow'])} saved tensors, {len(self.shadow)} expected)")
        self.decay = state["decay"]
        self.updates = int(state.get("updates", 10 ** 9))  # checkpoints from before the warm-up: warmed up
        self.shadow = {k: v.to(device).clone() for k, v in state["shadow"].items()}
