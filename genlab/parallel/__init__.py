"""Data parallelism under torchrun (PyTorch DDP), and the few collectives the families need.

One process by default. Launched by `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set), `setup()` joins
the process group (nccl on CUDA, gloo on CPU) and every command keeps its meaning:

- `train.batch_size` is the GLOBAL batch. Every rank walks the same seeded permutation and takes its
  own rows of each global batch (`BatchSampler(shard=...)`), and every random draw inside a training
  step is made for the whole global batch and then sliced (`shared_randn` / `shared_rand`), so all
  ranks consume their RNGs identically and the optimisation is the one of a single process with the
  same global batch, whatever the world size.
- Gradients are averaged by DDP (`wrap`). State that must agree across ranks but is not a gradient is
  synchronised explicitly: EMA codebook statistics and dead-code restarts (nets/quantizer.py), ActNorm's
  data-dependent initialisation (`global_moments`), BatchNorm statistics with `train.sync_bn`
  (`convert_sync_batchnorm`).
- Rank 0 alone writes; the others wait at `barrier()`.
"""
from .collectives import (all_gather_cat, all_gather_objects, all_reduce_sum, barrier, broadcast_object,
                          global_moments, on_main, shared_rand, shared_randn, shard_rows)
from .modules import convert_sync_batchnorm, prepare_module
from .world import (DistributedError, World, device_for, exit_process, is_main, setup, shutdown as world_shutdown,
                    world)

__all__ = ["DistributedError", "World", "all_gather_cat", "all_gather_objects", "all_reduce_sum", "barrier",
           "broadcast_object", "convert_sync_batchnorm", "device_for", "exit_process", "global_moments", "is_main",
           "on_main", "prepare_module", "setup", "shard_rows", "shared_rand", "shared_randn", "world", "world_shutdown"]
