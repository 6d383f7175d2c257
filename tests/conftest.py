import os

import pytest
import torch

# Two cores: keep tests from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_sets():
    """--set overrides that make any GAN run tiny (for CLI / trainer tests on bundled MNIST)."""
    return ["gan.g_width=4", "gan.d_width=4", "gan.latent_dim=8", "train.batch_size=8",
            "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "train.grid_size=4"]
