"""Learning-rate schedules, as factors of the configured rate; a pure function of the step number,
so they need no state in checkpoints (resume is exact)."""
from __future__ import annotations


def warmup(step: int, steps: int) -> float:
    """Linear warm-up: step/steps up to 1 at `steps` (steps <= 0: no warm-up)."""
    return min(1.0, step / steps) if steps > 0 else 1.0


def linear_decay(step: int, total: int, decay_start: float) -> float:
    """1 up to decay_start * total, then linear to 0 at step `total` (CycleGAN's schedule)."""
    start = int(decay_start * total)
    if step <= start or total <= start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / (total - start))
