
import os

import pytest
import torch

# One thread for genlab trainers too (genlab/cores.py takes OMP_NUM_THREADS as given), also in the
# processes tests launch.
os.environ["OMP_NUM_THREADS"] = "1"
# One intra-op thread: test tensors are tiny, and on a busy 2-core machine OpenMP barriers across
# two threads cost more than they save (KID went from 0.05 s to 18 s in one measurement).
torch.set_num_threads(1)


@pytest.fixture
def tiny_sets():
    """--set overrides that make any GAN run tiny (for CLI / trainer tests on bundled MNIST)."""
    return ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8",
            "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "train.grid_size=4"]
