"""Samples as files other tools read, and files of samples from anywhere, streamed in batches.

Writing (`genlab sample --format npz|folder`):
- npz: one uint8 array `arr_0` of shape N x H x W x C (the layout the ADM / guided-diffusion
  evaluation suite reads), stored uncompressed so it can be memory-mapped back, plus `genlab.json`
  (where the samples came from). Written member by member through zipfile's streaming writer, so
  50k samples never sit in memory at once; points (2-D data) are stored as float32 N x 2.
- folder: 000000.png, 000001.png, ... (what clean-fid and `fidelity --input1 DIR` read) and
  genlab.json. Both are written under a temporary name and renamed when complete: a killed export
  leaves no half-written file under the final name.

Reading (`genlab eval --fake PATH`): `open_samples(path)` -> a SampleSource with `n`, `shape` (C, H, W)
and `read(start, size)` -> uint8 (size, C, H, W): .npz (uncompressed members are memory-mapped,
compressed ones read whole), .npy (memory-mapped), a folder of images (PNG / JPEG / BMP / WebP, read
in name order), or a .pt tensor (torch.load with weights_only=True). Arrays may be N x H x W x C
(ADM), N x C x H x W (torch) or N x H x W (grey), uint8 or float in [0, 1] (quantised to 8 bits
exactly as genlab quantises its own samples). `sha256` identifies the file (a folder: its image
files' names and bytes, in order) so records say exactly what was scored.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import GenlabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
META_NAME = "genlab.json"
ARRAY_KEY = "arr_0"


def to_uint8(x: Tensor) -> Tensor:
    """Images in [0, 1] (n, C, H, W) -> uint8, rounding exactly as the feature extractors quantise."""
    return x.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


# ----------------------------------------------------------------------------- writers
class NpzWriter:
    """Stream N arrays of one shape into PATH.npz as arr_0 (N x H x W x C uint8, or N x D float32)."""

    def __init__(self, path: Path, n: int, item_shape: tuple, dtype=np.uint8, meta: dict | None = None):
        self.path, self.n, self.item_shape, self.dtype, self.meta = path, n, tuple(item_shape), np.dtype(dtype), meta
        self.tmp = _temp(path)
        self.zf = zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.member = self.zf.open(f"{ARRAY_KEY}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (n, *self.item_shape)}
        np.lib.format.write_array_header_1_0(self.member, header)
        self.written = 0

    def write(self, batch: np.ndarray) -> None:
        if batch.shape[1:] != self.item_shape or batch.dtype != self.dtype:
            raise ValueError(f"batch {batch.shape} {batch.dtype} does not match {self.item_shape} {self.dtype}")
        self.member.write(np.ascontiguousarray(batch).tobytes())
        self.written += batch.shape[0]

    def close(self) -> Path:
        self.member.close()
        if self.meta is not None:
            self.zf.writestr(META_NAME, json.dumps(self.meta, indent=1))
        self.zf.close()
        if self.written != self.n:
            self.tmp.unlink(missing_ok=True)
            raise GenlabError(f"wrote {self.written} of {self.n} samples; nothing kept")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.member.closed:
            self.member.close()
        self.zf.close()
        self.tmp.unlink(missing_ok=True)


class FolderWriter:
    """PNG files 000000.png ... in a new folder (grey images as mode L, colour as RGB)."""

    def __init__(self, path: Path, n: int, item_shape: tuple, meta: dict | None = None):
        self.path, self.n, self.meta = path, n, meta
        if len(item_shape) != 3 or item_shape[-1] not in (1, 3):
            raise GenlabError(f"--format folder writes images; these samples have shape {tuple(item_shape)}")
        self.tmp = _temp(path)
        self.tmp.mkdir()
        self.digits, self.written = max(6, len(str(n - 1))), 0

    def write(self, batch: np.ndarray) -> None:
        from PIL import Image

        for img in batch:
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                self.tmp / f"{self.written:0{self.digits}d}.png")
            self.written += 1

    def close(self) -> Path:
        if self.meta is not None:
            (self.tmp / META_NAME).write_text(json.dumps(self.meta, indent=1))
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_target(path: Path, overwrite: bool) -> None:
    """The export target must be new (or replaced with --overwrite), in an existing directory."""
    if not path.parent.is_dir():
        raise GenlabError(f"{path.parent} does not exist; create it first")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise GenlabError(f"{path} exists; pass --overwrite to replace it")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# ----------------------------------------------------------------------------- readers
class SampleSource:
    """Images held by a file, read in batches as uint8 (n, C, H, W)."""

    format: str

    def __init__(self, path: Path):
        self.path = path
        self.meta: dict = {}

    n: int
    shape: tuple

    def read(self, start: int, size: int) -> Tensor:
        raise NotImplementedError

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def describe(self) -> dict:
        return {"path": str(self.path), "name": self.path.name, "format": self.format, "n_in_file": self.n,
                "sha256": self.sha256(), **({"made_by": self.meta} if self.meta else {})}


class ArraySource(SampleSource):
    """An array-like of images (numpy memmap / array, or a tensor): layout and dtype found once."""

    def __init__(self, path: Path, array, fmt: str):
        super().__init__(path)
        self.format, self.array = fmt, array
        shape = tuple(array.shape)
        if len(shape) == 3:
            self.layout, (n, h, w), c = "nhw", shape, 1
        elif len(shape) == 4 and shape[-1] in (1, 3):
            self.layout, (n, h, w, c) = "nhwc", shape  # ADM's layout wins when both could be channels
        elif len(shape) == 4 and shape[1] in (1, 3):
            self.layout, (n, c, h, w) = "nchw", shape
        else:
            raise GenlabError(f"{path}: an array of shape {shape} is not images (N x H x W x C, N x C x H x W "
                              f"or N x H x W, with 1 or 3 channels)")
        dtype = np.dtype(str(array.dtype).removeprefix("torch.")) if isinstance(array, Tensor) else array.dtype
        if dtype != np.uint8 and dtype.kind != "f":
            raise GenlabError(f"{path}: images must be uint8 or float in [0, 1], got {dtype}")
        self.n, self.shape, self.is_float = n, (c, h, w), dtype.kind == "f"

    def read(self, start: int, size: int) -> Tensor:
        part = self.array[start:start + size]
        x = part if isinstance(part, Tensor) else torch.from_numpy(np.array(part))
        if self.layout == "nhw":
            x = x[:, None]
        elif self.layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        if not self.is_float:
            return x.contiguous()
        if not torch.isfinite(x).all() or x.min() < -1e-4 or x.max() > 1 + 1e-4:
            raise GenlabError(f"{self.path}: float images must lie in [0, 1] (samples {start}..{start + size - 1} "
                              f"do not)")
        return to_uint8(x)


class FolderSource(SampleSource):
    format = "folder"

    def __init__(self, path: Path):
        super().__init__(path)
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise GenlabError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        first = self._load(self.files[0])
        self.n, self.shape = len(self.files), tuple(first.shape)
        self.mode = "L" if self.shape[0] == 1 else "RGB"
        meta = path / META_NAME
        self.meta = _read_meta(meta.read_bytes(), meta) if meta.is_file() else {}

    def _load(self, file: Path, mode: str | None = None) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(file) as img:
                mode = mode or ("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                a = np.array(img.convert(mode))
        except (UnidentifiedImageError, OSError) as e:
            raise GenlabError(f"{file}: not a readable image ({str(e).splitlines()[0][:100]})") from None
        return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())

    def read(self, start: int, size: int) -> Tensor:
        out = []
        for file in self.files[start:start + size]:
            img = self._load(file, self.mode)
            if tuple(img.shape) != self.shape:
                raise GenlabError(f"{file} is {'x'.join(map(str, img.shape))}, the first image "
                                  f"{'x'.join(map(str, self.shape))}: all images must have one size")
            out.append(img)
        return torch.stack(out)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for file in self.files:
            h.update(file.name.encode() + b"\0")
            h.update(file.read_bytes())
        return h.hexdigest()


def _read_meta(raw: bytes, where) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError:
        raise GenlabError(f"{where}: {META_NAME} is not JSON") from None
    return meta if isinstance(meta, dict) else {}


def _npz_array(path: Path):
    """arr_0 (or the only array) of an .npz: memory-mapped when stored uncompressed."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise GenlabError(f"{path}: not a readable .npz ({e})") from None
    with zf:
        names = [n for n in zf.namelist() if n.endswith(".npy")]
        name = f"{ARRAY_KEY}.npy" if f"{ARRAY_KEY}.npy" in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise GenlabError(f"{path}: no {ARRAY_KEY} array (found {', '.join(names) or 'no arrays'})")
        meta = _read_meta(zf.read(META_NAME), path) if META_NAME in zf.namelist() else {}
        info = zf.getinfo(name)
        with zf.open(name) as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(member)
            header_len = member.tell()
        if info.compress_type == zipfile.ZIP_STORED and not fortran and not dtype.hasobject:
            with open(path, "rb") as f:  # the member's data start: after its local header
                f.seek(info.header_offset + 26)
                name_len, extra_len = np.frombuffer(f.read(4), "<u2")
            offset = info.header_offset + 30 + int(name_len) + int(extra_len) + header_len
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), meta
    with np.load(path, allow_pickle=False) as data:  # compressed: read whole
        return data[name.removesuffix(".npy")], meta


def open_samples(path: str | Path) -> SampleSource:
    """The samples in `path` (see the module docstring), or a one-line GenlabError."""
    path = Path(path)
    if not path.exists():
        raise GenlabError(f"{path} does not exist")
    if path.is_dir():
        return FolderSource(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            array, meta = _npz_array(path)
            source = ArraySource(path, array, "npz")
            source.meta = meta
            return source
        if suffix == ".npy":
            return ArraySource(path, np.load(path, mmap_mode="r", allow_pickle=False), "npy")
        if suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            tensors = [obj] if isinstance(obj, Tensor) else [v for v in obj.values() if isinstance(v, Tensor)] \
                if isinstance(obj, dict) else []
            if len(tensors) != 1:
                raise GenlabError(f"{path}: expected one tensor of images, found {len(tensors)}")
            return ArraySource(path, tensors[0], "pt")
    except GenlabError:
        raise
    except Exception as e:  # a corrupt or foreign file: say what, never a traceback
        raise GenlabError(f"{path}: cannot read samples ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    raise GenlabError(f"{path}: unknown sample file type {suffix or '(none)'}; give an .npz, .npy, .pt or a "
                      f"folder of images")
