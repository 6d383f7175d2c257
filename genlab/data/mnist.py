"""MNIST from the bundled IDX files, and the torchvision image datasets.

MNIST (LeCun, Cortes & Burges) ships inside the package (files/mnist/, see its README), so the
default dataset works offline and needs no download. The IDX parser is strict: it checks the magic
number, that the header's dimensions account for every byte of the file, and that image and label
counts agree, because a silently truncated training set is worse than an error.

Fashion-MNIST, CIFAR-10 and SVHN come through torchvision. We first look for files already on disk
(no network), then let torchvision download; if both fail the error says which files to put where.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..config import DataConfig
from ..registry import register
from .base import DataError, DataInfo, Dataset

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049

# IDX type byte -> numpy dtype (IDX numbers are big-endian).
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_bytes(path) -> bytes:
    """File contents, gunzipped if they start with the gzip magic. `path`: str, Path or Traversable."""
    p = Path(path) if isinstance(path, str) else path
    try:
        with p.open("rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array shaped as its header says.

    `magic` (2051 images, 2049 labels) is checked when given. Any inconsistency raises DataError
    naming the file.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = int.from_bytes(raw[:4], "big")
    if magic is not None and found != magic:
        raise DataError(f"{path}: bad IDX magic number {found} (expected {magic}); wrong or corrupt file")
    zero, type_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\0\0" or type_code not in _IDX_TYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number {found})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says {'x'.join(map(str, dims))} ({expected} bytes) but the file "
                        f"has {len(raw)} bytes; truncated or corrupt")
    # frombuffer views the immutable bytes; copy so torch gets a writable, native-endian array.
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_pair(images_path, labels_path) -> tuple[torch.Tensor, torch.Tensor]:
    """An (images, labels) IDX pair -> uint8 (N,1,H,W) and int64 (N,), checked for agreement."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label array, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _no_arg(name: str, arg: str) -> None:
    if arg:
        raise DataError(f"dataset {name!r} takes no argument (got {name}:{arg})")


@register("dataset", "mnist")
def mnist(cfg: DataConfig, split: str, arg: str) -> Dataset:
    _no_arg("mnist", arg)
    folder = resources.files("genlab.data") / "files" / "mnist"
    images, labels = (folder / f for f in _MNIST_FILES[split])
    x, y = read_idx_pair(images, labels)
    if y.numel() and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{labels}: labels outside 0..9; corrupt file")
    return Dataset(x, y, DataInfo("mnist", "image", tuple(x.shape[1:]), num_classes=10))


# ---------------------------------------------------------------------------------- torchvision


def data_root(cfg: DataConfig) -> Path:
    """cfg.root, else $GENLAB_DATA, else ~/.cache/genlab/data."""
    return paths.data_root(cfg.root)


def _torchvision(name: str, build, root: Path, expected: str):
    """build(download) -> torchvision dataset; offline files first, then a download."""
    try:
        return build(download=False)
    except Exception:  # torchvision raises RuntimeError("Dataset not found or corrupted ...")
        pass
    try:
        return build(download=True)
    except Exception as e:  # URLError, OSError, checksum RuntimeError, ...: all mean "not available"
        why = (str(e).splitlines() or [""])[0][:160]
        raise DataError(f"{name} not found in {root} and could not be downloaded ({type(e).__name__}: {why}); "
                        f"put {expected}, or point --data-root / GENLAB_DATA at a directory that has the files"
                        ) from None


def _image_dataset(name: str, x: np.ndarray | torch.Tensor, y, nhwc: bool) -> Dataset:
    x = torch.as_tensor(np.asarray(x, dtype=np.uint8))
    x = x.permute(0, 3, 1, 2).contiguous() if nhwc else x
    y = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return Dataset(x, y, DataInfo(name, "image", tuple(x.shape[1:]), num_classes=10))


@register("dataset", "fashion-mnist")
def fashion_mnist(cfg: DataConfig, split: str, arg: str) -> Dataset:
    from torchvision.datasets import FashionMNIST

    _no_arg("fashion-mnist", arg)
    root = data_root(cfg)
    where = root / "FashionMNIST" / "raw"
    ds = _torchvision("fashion-mnist", lambda download: FashionMNIST(str(root), train=split == "train",
                                                                     download=download), root,
                      f"the four Fashion-MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                      f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in {where}/")
    return _image_dataset("fashion-mnist", ds.data.unsqueeze(1), ds.targets, nhwc=False)


@register("dataset", "cifar10")
def cifar10(cfg: DataConfig, split: str, arg: str) -> Dataset:
    from torchvision.datasets import CIFAR10

    _no_arg("cifar10", arg)
    root = data_root(cfg)
    ds = _torchvision("cifar10", lambda download: CIFAR10(str(root), train=split == "train", download=download),
                      root, f"cifar-10-python.tar.gz (or its extracted cifar-10-batches-py/) in {root}/")
    return _image_dataset("cifar10", ds.data, ds.targets, nhwc=True)


@register("dataset", "svhn")
def svhn(cfg: DataConfig, split: str, arg: str) -> Dataset:
    from torchvision.datasets import SVHN

    _no_arg("svhn", arg)
    root = data_root(cfg)
    ds = _torchvision("svhn", lambda download: SVHN(str(root), split=split, download=download),
                      root, f"{split}_32x32.mat (SVHN cropped digits, format 2) in {root}/")
    return _image_dataset("svhn", ds.data, ds.labels, nhwc=False)
