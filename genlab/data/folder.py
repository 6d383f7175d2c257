"""`folder:PATH` - every image file under a directory, and a streaming sampler for large ones.

Images are found recursively and sorted by relative path (so the order, and therefore the seeded
train/test split, does not depend on the file system), decoded with PIL, converted to grey ("L")
or RGB, center-cropped to a square and resized to `cfg.resolution` (default 64). Folders have no
test split of their own, so a deterministic 10% of the files (seeded by `cfg.seed`) is held out.

`load_image_dir(path, channels, resolution)` is the reusable piece (two-domain `pair:` data reads
trainA/trainB/testA/testB with it).

`StreamingSampler` serves `folder:` data with `cfg.streaming` when the images do not fit in memory:
the same permutation walk as `BatchSampler`, but each batch is decoded by a torch DataLoader (worker
processes prefetch along the current epoch). Resume is exact as long as the directory is unchanged,
since the loader is restarted at the saved position of the saved permutation; if files were added or
removed the count check in `load_state_dict` refuses the state, but files edited in place are not
detected, so treat resume of a streaming run over a changing directory as approximate.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..registry import register
from .base import BatchSampler, DataError, DataInfo, Dataset, Shard, split_name

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_RESOLUTION = 64
TEST_FRACTION = 0.1


def list_images(path: str | Path) -> list[Path]:
    """Image files under `path`, recursively, sorted by relative path; DataError if there are none."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _check(channels: int, resolution: int) -> None:
    if channels not in (1, 3):
        raise DataError(f"image folders load 1 (grey) or 3 (RGB) channels, not {channels}")
    if resolution <= 0:
        raise DataError(f"resolution must be positive, got {resolution}")


def load_image(path: str | Path, channels: int, resolution: int) -> torch.Tensor:
    """One file -> uint8 (channels, resolution, resolution): convert, center-crop square, resize."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    if s != resolution:
        # PIL's bilinear filter widens its support when downscaling, i.e. it is antialiased.
        im = im.resize((resolution, resolution), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def decode_images(files: list[Path], channels: int, resolution: int) -> torch.Tensor:
    """Decode `files` into one preallocated uint8 (N, C, R, R) tensor."""
    _check(channels, resolution)
    out = torch.empty((len(files), channels, resolution, resolution), dtype=torch.uint8)
    for i, f in enumerate(files):
        out[i] = load_image(f, channels, resolution)
    return out


def load_image_dir(path: str | Path, channels: int, resolution: int) -> torch.Tensor:
    """Every image under `path` as uint8 (N, channels, resolution, resolution)."""
    return decode_images(list_images(path), channels, resolution)


def split_files(files: list[Path], split: str, seed: int) -> list[Path]:
    """Deterministic 90/10 train/test split of a sorted file list, seeded by `seed`."""
    n = len(files)
    n_test = min(max(round(n * TEST_FRACTION), 1), n - 1) if n >= 2 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chosen = perm[:n_test] if split == "test" else perm[n_test:]
    if len(chosen) == 0:
        raise DataError(f"only {n} image(s): too few to hold out a {split} split")
    return [files[i] for i in sorted(chosen.tolist())]


def _folder_spec(cfg: DataConfig, split: str, arg: str) -> tuple[list[Path], DataInfo]:
    """The split's files and the DataInfo they will produce, without decoding anything."""
    if not arg:
        raise DataError("folder: needs a directory, e.g. --dataset folder:~/images")
    channels, resolution = cfg.channels or 3, cfg.resolution or DEFAULT_RESOLUTION
    _check(channels, resolution)
    files = split_files(list_images(arg), split, cfg.seed)
    return files, DataInfo(f"folder:{arg}", "image", (channels, resolution, resolution))


@register("dataset", "folder")
def folder(cfg: DataConfig, split: str, arg: str) -> Dataset:
    files, info = _folder_spec(cfg, split, arg)
    x = decode_images(files, info.shape[0], info.shape[1])
    return Dataset(x, torch.full((len(x),), -1, dtype=torch.int64), info)


# ---------------------------------------------------------------------------------- streaming


class _ImageFiles(torch.utils.data.Dataset):
    """Map-style dataset over file paths; returns the index too so the sampler can verify order."""

    def __init__(self, files: list[Path], channels: int, resolution: int):
        self.files, self.channels, self.resolution = files, channels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.channels, self.resolution), i


class StreamingSampler(BatchSampler):
    """`BatchSampler` whose batches are decoded from files on demand (same interface and state)."""

    def __init__(self, files: list[Path], info: DataInfo, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", num_workers: int | None = None, shard: Shard = Shard()):
        self.info = info
        self.device = torch.device(device)
        self.files = list(files)
        self._images = _ImageFiles(self.files, info.shape[0], info.shape[1])
        # Leave one core for the training process itself.
        self.num_workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if num_workers is None else num_workers
        self._it = None
        self._init_walk(len(self.files), batch_size, seed, shard)

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, batch_size: int, seed: int,
                    device: torch.device | str = "cpu", num_workers: int | None = None,
                    shard: Shard = Shard()) -> "StreamingSampler":
        base, arg = split_name(cfg.name)
        files, info = _folder_spec(cfg, split, arg)
        info.binarized = bool(cfg.binarize)
        return cls(files, info, batch_size, seed, device, num_workers, shard)

    def _new_epoch(self) -> None:
        super()._new_epoch()
        self._it = None  # the prefetching loader follows one permutation; start a new one

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bs = self.batch_size
        if self._it is None:
            # Loader over the rest of this epoch, starting at the batch being fetched now.
            start = self.pos - bs
            batches = [self._local(self.perm[p:p + bs]).tolist() for p in range(start, self.n - bs + 1, bs)]
            loader = torch.utils.data.DataLoader(self._images, batch_sampler=batches, num_workers=self.num_workers,
                                                 pin_memory=self.device.type == "cuda")
            self._it = iter(loader)
        x, got = next(self._it)
        if not torch.equal(got, idx):  # an internal invariant, not a user error
            raise RuntimeError("StreamingSampler: loader is out of step with the permutation")
        y = torch.full((len(idx),), -1, dtype=torch.int64, device=self.device)
        return x.to(self.device, non_blocking=True), y

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._it = None
