"""Exponential moving average of a module's weights (used for sampling when enabled)."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:  # counters such as BatchNorm's num_batches_tracked are copied
                self.shadow[k].copy_(v)

    @contextmanager
    def applied(self, module: nn.Module):
        """Temporarily load the averaged weights into `module`."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield module
        finally:
            module.load_state_dict(backup)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.to(device).clone() for k, v in state["shadow"].items()}
