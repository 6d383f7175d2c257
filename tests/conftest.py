
import pytest
import torch

# One intra-op thread: test tensors are tiny, and on a busy 2-core machine OpenMP barriers across
# two threads cost more than they save (KID went from 0.05 s to 18 s in one measurement).
torch.set_num_threads(1)


@pytest.fixture
def tiny_sets():
    """--set overrides that make any GAN run tiny (for CLI / trainer tests on bundled MNIST)."""
    return ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8",
            "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "train.grid_size=4"]
