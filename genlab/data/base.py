"""Datasets as in-memory tensors, and the samplers that feed the training loop.

Every dataset, whatever its source, becomes a `Dataset`: uint8 images (N, C, H, W) in 0..255 or
float32 2-D points (N, 2), int64 labels (-1 where unlabeled) and a `DataInfo` that tells families
and evaluators what they are looking at. Keeping images as uint8 until the batch is drawn holds
MNIST in 47 MB and CIFAR-10 in 150 MB, small enough to live on the GPU for the whole run.

`load_dataset(cfg, split)` resolves `cfg.name` through the registry ("folder:PATH" -> loader
"folder" with argument "PATH") and then applies the generic options (channels, resolution,
binarize) here, once, so no loader carries per-dataset copies of that code.

`BatchSampler` draws batches from a seeded permutation with its own torch.Generator, so the batch
sequence depends only on (data, batch_size, seed) and its `state_dict()` resumes it exactly. Under
torchrun every rank walks the same permutation of GLOBAL batches and keeps its own rows of each
(`Shard`), so the global batch sequence does not depend on the number of ranks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import registry
from ..config import DataConfig
from ..errors import GenlabError

SPLITS = ("train", "test")


class DataError(GenlabError, RuntimeError):
    """Missing, corrupt or unusable data; str() is a one-line message meant for the user."""


@dataclass
class DataInfo:
    name: str
    kind: str  # "image" or "points"
    shape: tuple[int, ...]  # (C, H, W) for images, (2,) for points
    num_classes: int = 0  # 0 if unlabeled
    binarized: bool = False  # images are {0,255} Bernoulli samples (dynamic binarisation)
    modes: torch.Tensor | None = None  # toy mixtures: (K, 2) mode centres
    mode_std: float = 0.0
    # what measures may rely on, declared by the dataset's registration (`traits=(...)`): e.g.
    # "mode-centres" (ring8, grid25), "stacked-digits" (stacked-mnist); () -> the dataset's own
    traits: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.traits:
            self.traits = dataset_traits(self.name)
        self.traits = tuple(self.traits)


def dataset_traits(name: str) -> tuple[str, ...]:
    """The traits the dataset `name` declares at registration (() for unknown names)."""
    base = split_name(name)[0]
    if base not in registry.available("dataset"):
        return ()
    return tuple(getattr(registry.get("dataset", base), "traits", ()))  # declared at registration, if any


@dataclass
class Dataset:
    """An in-memory dataset; construction checks the invariants every consumer relies on."""

    x: torch.Tensor  # uint8 (N,C,H,W) images in 0..255, or float32 (N,2) points
    y: torch.Tensor  # int64 (N,), -1 where unlabeled
    info: DataInfo

    def __post_init__(self) -> None:
        want = torch.uint8 if self.info.kind == "image" else torch.float32
        if self.x.dtype != want or tuple(self.x.shape[1:]) != tuple(self.info.shape):
            raise DataError(f"{self.info.name}: expected {want} data of shape (N, "
                            f"{', '.join(map(str, self.info.shape))}), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != (len(self.x),):
            raise DataError(f"{self.info.name}: labels must be int64 of shape ({len(self.x)},), "
                            f"got {self.y.dtype} {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.x.to(device), self.y.to(device), self.info)

    def subset(self, idx) -> "Dataset":
        """Rows `idx` (index tensor, list or slice), sharing the same info."""
        if isinstance(idx, list):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return Dataset(self.x[idx], self.y[idx], self.info)


# ---------------------------------------------------------------------------------- loading


def split_name(name: str) -> tuple[str, str]:
    """'folder:/a/b' -> ('folder', '/a/b'); 'mnist' -> ('mnist', ''). Only the first colon counts."""
    base, _, arg = name.partition(":")
    return base.strip(), arg.strip()


def available_datasets() -> list[str]:
    return registry.available("dataset")


def load_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """Load split "train" or "test" of `cfg.name`, then apply channels/resolution/binarize."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
    base, arg = split_name(cfg.name)
    try:
        loader = registry.get("dataset", base)
    except registry.RegistryError as e:  # an unknown dataset is reported as a data problem
        raise DataError(str(e)) from None
    data = loader(cfg, split, arg)
    info = data.info
    if info.kind != "image":
        # Image options on point data are a config mistake, not something to ignore quietly.
        for opt in ("resolution", "channels", "binarize"):
            if getattr(cfg, opt):
                raise DataError(f"data.{opt} applies to image datasets; {cfg.name!r} is {info.kind} data")
        return data
    x = data.x
    if cfg.channels and cfg.channels != x.shape[1]:
        x = convert_channels(x, cfg.channels)
    # Height only: loaders that size images themselves (two-domain pairs, laid side by side as
    # [A | B] rows of width 2 x resolution) already match it and must not be squared here.
    if cfg.resolution and x.shape[2] != cfg.resolution:
        x = resize_images(x, cfg.resolution)
    info = dataclasses.replace(info, shape=tuple(x.shape[1:]), binarized=bool(cfg.binarize))
    return Dataset(x, data.y, info)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images 1 <-> 3 channels (grey is replicated; RGB -> L uses PIL's ITU-R 601-2 weights)."""
    c = x.shape[1]
    if channels == 3 and c == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise DataError(f"cannot convert {c}-channel images to {channels} channels (supported: 1 and 3)")


def resize_images(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N,C,H,W) -> uint8 (N,C,size,size), antialiased bilinear.

    Chunked so that resizing 60k images never holds more than one chunk as float32.
    """
    if size <= 0:
        raise DataError(f"data.resolution must be positive, got {size}")
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(x), chunk):
        xf = x[i:i + chunk].float()
        r = F.interpolate(xf, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + chunk] = r.round().clamp_(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Shard:
    """This rank's rows of each global batch: `chunks` consecutive sub-batches (e.g. GAN n_critic), each
    split into `size` contiguous blocks, block `rank` kept -- so chunk k of the local batch is this
    rank's part of the global sub-batch k."""
    rank: int = 0
    size: int = 1
    chunks: int = 1

    def rows(self, batch_size: int) -> torch.Tensor | None:
        """Indices into a global batch of `batch_size` rows (None: keep them all)."""
        if self.size == 1:
            return None
        if batch_size % (self.size * self.chunks):
            raise DataError(f"a global batch of {batch_size} rows in {self.chunks} sub-batch(es) cannot be split "
                            f"evenly over {self.size} ranks (train.batch_size must be divisible by the world size)")
        return torch.arange(batch_size).view(self.chunks, self.size, -1)[:, self.rank].reshape(-1)


class BatchSampler:
    """Endless batches from an in-memory dataset held on `device`.

    Each epoch walks a fresh permutation drawn from the sampler's own CPU generator (so the batch
    order is the same on CPU and GPU and never touches the global RNG); the last partial batch is
    dropped so every batch has exactly `batch_size` rows. If the data is binarized, each call
    re-samples x as 255 * Bernoulli(x / 255) from the same generator (dynamic binarisation).
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, device: torch.device | str = "cpu",
                 shard: Shard = Shard()):
        self.info = data.info
        self.device = torch.device(device)
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)
        self._init_walk(len(data), batch_size, seed, shard)

    def _init_walk(self, n: int, batch_size: int, seed: int, shard: Shard = Shard()) -> None:
        if batch_size <= 0:
            raise DataError(f"batch size must be positive, got {batch_size}")
        if n < batch_size:
            raise DataError(f"{self.info.name}: batch size {batch_size} is larger than the dataset ({n} examples)")
        self.n, self.batch_size = n, batch_size  # batch_size: the GLOBAL batch
        self.rows = shard.rows(batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._new_epoch()  # draw the first permutation now: epoch 0, position 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next()

    def _new_epoch(self) -> None:
        self.perm = torch.randperm(self.n, generator=self.generator)
        self.pos = 0
        self.epoch += 1

    def _next_indices(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self._new_epoch()
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(self.device)
        return self.x[idx], self.y[idx]

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global-batch tensor."""
        return t if self.rows is None else t[self.rows]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch (x, y) on the sampler's device: this rank's rows of the next global batch."""
        x, y = self._fetch(self._local(self._next_indices()))
        if self.info.binarized:
            x = self._binarize(x)
        return x, y

    def _binarize(self, x: torch.Tensor) -> torch.Tensor:
        # Uniforms come from the sampler's CPU generator (for the global batch, then this rank's rows)
        # so resume and any world size reproduce them exactly; u < p gives 0 -> 0 and 255 -> 255.
        u = torch.rand((self.batch_size, *x.shape[1:]), generator=self.generator)
        u = self._local(u).to(x.device)
        return (u * 255 < x.float()).to(torch.uint8) * 255

    def state_dict(self) -> dict:
        # Tensors and ints only, so it round-trips through torch.load(weights_only=True).
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos,
                "epoch": self.epoch, "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise DataError(f"sampler state is for {state['n']} examples in batches of {state['batch_size']}, "
                            f"but this data has {self.n} in batches of {self.batch_size}")
        self.generator.set_state(state["generator"].cpu())
        self.perm = state["perm"].cpu().long()
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])
