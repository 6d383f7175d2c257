"""20 random kill -9 trials during training and during checkpoint writes (bench/kill_trials.py):
no corrupt checkpoint, every resume finishes bit-exact, no stray temp file. Slow: ~4 minutes."""
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_twenty_kill_trials_lose_nothing():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from kill_trials import run

    s = run(trials=20, steps=24, seed=0)
    assert s["kills"] == 20 and s["during_checkpoint_writes"] >= 5
    assert s["corrupt_checkpoints"] == 0 and s["stray_temp_files"] == 0
    assert s["resumes_finished"] == 20 and s["bit_exact_resumes"] == 20
