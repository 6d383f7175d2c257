"""The one call the trainer needs to get batches: an in-memory BatchSampler, or a StreamingSampler
that decodes folder images per batch (kept apart from base.py and folder.py, which it joins)."""
from __future__ import annotations

import torch

from ..config import DataConfig
from .base import BatchSampler, DataError, Dataset, Shard, load_dataset, split_name
from .folder import StreamingSampler


def make_sampler(cfg: DataConfig, data: Dataset | None, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", split: str = "train",
                 num_workers: int | None = None, shard: Shard = Shard()) -> BatchSampler:
    """The one call the trainer needs: a `BatchSampler` over `data` (loaded from cfg if None),
    or, for `folder:` data with `cfg.streaming`, a `StreamingSampler` that decodes per batch
    (`data` is then ignored; nothing is decoded up front). `batch_size` is the global batch."""
    if cfg.streaming:
        base, arg = split_name(cfg.name)
        if base != "folder":
            raise DataError(f"data.streaming is only supported for folder: datasets, not {cfg.name!r}")
        return StreamingSampler.from_config(cfg, split, batch_size, seed, device, num_workers, shard)
    if data is None:
        data = load_dataset(cfg, split)
    return BatchSampler(data, batch_size, seed, device, shard)
