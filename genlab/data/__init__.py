"""Datasets as uint8 image tensors (N,C,H,W) or float32 2-D points, plus the batch samplers.

Importing this package registers every dataset loader (kind "dataset" in genlab.registry):
mnist (bundled), fashion-mnist, cifar10, svhn (torchvision), folder:PATH, ring8, grid25.

    data = load_dataset(cfg.data, "train")            # Dataset(x, y, info)
    sampler = make_sampler(cfg.data, data, 64, seed=0, device="cuda")
    x, y = sampler.next()                             # uint8 batch on the device
"""
from . import folder, mnist, pairs, stacked, toy  # noqa: F401  (imported for their registrations)
from .base import (BatchSampler, DataError, DataInfo, Dataset, Shard, available_datasets, load_dataset,
                   resize_images)
from .folder import StreamingSampler, load_image_dir
from .sampling import make_sampler
from .toy import MIXTURE_STD, mixture_centres

__all__ = ["BatchSampler", "DataError", "DataInfo", "Dataset", "MIXTURE_STD", "Shard", "StreamingSampler",
           "available_datasets", "load_dataset", "load_image_dir", "make_sampler", "mixture_centres",
           "resize_images"]
