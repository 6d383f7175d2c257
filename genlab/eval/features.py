"""Feature extractors: images in [0, 1] -> (features, class probabilities), one forward for both.

    ext = get_extractor("genlab-mnist", device="cpu")
    feats, probs = ext.features_and_probs(x)   # x float (n, C, H, W) in [0, 1]; batched internally
    ext.name, ext.fingerprint, ext.dim, ext.num_classes, ext.input_shape

Registered (kind "features"):
- `genlab-mnist`: genlab's evaluator CNN trained on MNIST (weights shipped in genlab/eval/weights);
  128-d penultimate features, 10-way softmax. Default for 1-channel 28x28 data.
- `inception`, `dinov2-vit-b-14`, `dinov2-vit-l-14`, `clip-vit-l-14`: pretrained nets whose weights
  file a user places by hand (eval/pretrained.py: where each file goes, how it is verified). Any image
  size, 1 or 3 channels; DINOv2 and CLIP have no classifier (num_classes 0, probabilities (n, 0)).
- `genlab-DATASET`: any evaluator trained by `genlab evaluator train DATASET` (found in
  $GENLAB_CACHE/evaluators/).

Preprocessing is part of the extractor (and of the reference-cache key): inputs are checked (finite,
within [0, 1]) and quantised to 8 bits, exactly as real uint8 data and PNG-saved samples are, so real
and generated images take the same path (clean-fid's argument about quantisation).
`fingerprint` is the first 16 hex digits of the sha256 of the weights file; every metric record
carries it, and records with different fingerprints are not comparable.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import registry
from ..errors import GenlabError
from ..nets.common import fold_batchnorm
from ..paths import evaluators_dir
from ..speed import inference_chunk
from .evaluator import evaluator_name, find_weights, load_evaluator

FINGERPRINT_CHARS = 16


class Extractor:
    """Base class: input checks, 8-bit quantisation, batching and inference mode.

    Subclasses set name, fingerprint, dim, num_classes, input_shape and implement `_forward(x)` on a
    prepared batch (float in [0, 1], quantised, on self.device) -> (features, probs)."""

    name: str
    fingerprint: str
    dim: int
    num_classes: int
    input_shape: tuple
    batch_size: int | None = None  # rows per forward; None: speed.inference_chunk of the device
    preprocessing: str = "[0,1] -> 8-bit quantised"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fingerprint={self.fingerprint}, dim={self.dim})"

    # -- input checks shared by every extractor
    def check_shape(self, shape: tuple) -> None:
        """Raise GenlabError if images of shape (C, H, W) cannot go through this extractor."""
        if tuple(shape) != tuple(self.input_shape):
            raise GenlabError(
                f"feature extractor {self.name} expects {'x'.join(map(str, self.input_shape))} images, got "
                f"{'x'.join(map(str, shape))}; use --features inception, or train an evaluator for this "
                f"dataset with `genlab evaluator train DATASET` and pass --features genlab-DATASET")

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            return x.to(self.device).float().div_(255)
        if not x.is_floating_point() or x.ndim != 4:
            raise GenlabError(f"{self.name}: expected float images (n, C, H, W) in [0, 1], "
                              f"got {x.dtype} {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise GenlabError(f"{self.name}: images contain NaN/Inf (did the model diverge?)")
        lo, hi = x.min().item(), x.max().item()
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise GenlabError(f"{self.name}: images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        return x.to(self.device, torch.float32).clamp(0, 1).mul(255).round_().div_(255)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    # -- the contract
    def features_and_probs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features (n, dim), probs (n, num_classes)), float32 on the CPU, from one forward pass."""
        if x.ndim != 4:
            raise GenlabError(f"{self.name}: expected images (n, C, H, W), got shape {tuple(x.shape)}")
        self.check_shape(tuple(x.shape[1:]))
        feats, probs = [], []
        size = self.batch_size or inference_chunk(self.device) or max(1, x.shape[0])
        with torch.inference_mode():
            for i in range(0, x.shape[0], size):
                f, p = self._forward(self._prepare(x[i:i + size]))
                feats.append(f.float().cpu())
                probs.append(p.float().cpu())
        if not feats:
            return torch.empty(0, self.dim), torch.empty(0, self.num_classes)
        return torch.cat(feats), torch.cat(probs)

    def features(self, x: Tensor) -> Tensor:
        return self.features_and_probs(x)[0]

    def probs(self, x: Tensor) -> Tensor:
        return self.features_and_probs(x)[1]

    def describe(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "dim": self.dim,
                "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "preprocessing": self.preprocessing}


class GenlabExtractor(Extractor):
    """A genlab evaluator CNN: penultimate-layer features and softmax probabilities."""

    preprocessing = "[0,1] -> 8-bit quantised, native resolution"

    def __init__(self, name: str, path: str | Path, device: str | torch.device = "cpu"):
        super().__init__(device)
        net, digest, meta = load_evaluator(path, self.device)
        if meta.get("sha256") and meta["sha256"] != digest:
            raise GenlabError(f"{path}: weights do not match {Path(path).with_suffix('.json').name} "
                              f"(sha256 {digest[:12]} vs {meta['sha256'][:12]}); reinstall or retrain the evaluator")
        # channels_last: 2.4x faster on this CPU, features equal to ~3e-6 (bench/bench_eval.py); batch
        # norms folded into the convs: 1.85x more, features equal to ~3e-7 (reference.VERSION 2)
        self.name, self.path, self.meta = name, Path(path), meta
        self.net = fold_batchnorm(net).to(memory_format=torch.channels_last)
        self.fingerprint = digest[:FINGERPRINT_CHARS]
        self.dim, self.num_classes, self.input_shape = net.feature_dim, net.num_classes, tuple(net.shape)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = self.net.features_and_logits(x.contiguous(memory_format=torch.channels_last))
        return feats, logits.softmax(1)


# ----------------------------------------------------------------------------- registry
def _genlab_factory(name: str):
    def make(device="cpu") -> GenlabExtractor:
        path = find_weights(name)
        if path is None:
            raise GenlabError(f"weights of the {name} evaluator are missing (expected {name}.pt in genlab/eval/weights "
                              f"or {evaluators_dir()}); reinstall genlab or run "
                              f"`genlab evaluator train {name.removeprefix('genlab-')}`")
        return GenlabExtractor(name, path, device)
    return make


registry.register("features", "genlab-mnist", _genlab_factory("genlab-mnist"))


def user_evaluators() -> list[str]:
    folder = evaluators_dir()
    return sorted(p.stem for p in folder.glob("genlab-*.pt")) if folder.is_dir() else []


def available_extractors() -> list[str]:
    return sorted(set(registry.available("features")) | set(user_evaluators()))


def get_extractor(name: str, device: str | torch.device = "cpu") -> Extractor:
    """The feature extractor `name` on `device` (registered names, or genlab-DATASET trained by the user)."""
    if name in registry.available("features"):
        return registry.get("features", name)(device)
    if name.startswith("genlab-") and find_weights(name) is not None:
        return _genlab_factory(name)(device)
    try:
        registry.get("features", name)  # raises with a did-you-mean
    except registry.RegistryError as e:
        raise GenlabError(f"{e}; user-trained evaluators: {', '.join(user_evaluators()) or 'none'}") from None
    raise AssertionError("unreachable")


def pick_extractor(info) -> str:
    """--features auto: a genlab evaluator trained on this very dataset (and shape) if there is one,
    else genlab-mnist for 1-channel 28x28 images, else inception."""
    if info.kind != "image":
        raise GenlabError(f"{info.name} is {info.kind} data: FID/KID/IS/PR/DC are image metrics; "
                          f"use `genlab diagnose RUN_DIR` for 2-D toy data")
    own = evaluator_name(info.name)
    path = find_weights(own)
    if own != "genlab-mnist" and path is not None:
        meta_path = path.with_suffix(".json")
        import json

        shape = json.loads(meta_path.read_text()).get("shape") if meta_path.is_file() else None
        if shape is not None and tuple(shape) == tuple(info.shape):
            return own
    if tuple(info.shape) == (1, 28, 28):
        return "genlab-mnist"
    return "inception"


def resolve_extractor(features: str, info) -> tuple[str, bool]:
    """'auto' | NAME -> (name, picked_automatically)."""
    if features == "auto":
        return pick_extractor(info), True
    if info.kind != "image":
        pick_extractor(info)  # raises the points-data error
    return features, False


from . import pretrained  # noqa: E402,F401  (registers inception, dinov2-*, clip-*: it needs Extractor above)
