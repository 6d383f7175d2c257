"""Where genlab keeps things outside run directories (one place, imported by everything that needs it).

    cache_root()      $GENLAB_CACHE, else ~/.cache/genlab
    data_root(root)   the given root, else $GENLAB_DATA, else ~/.cache/genlab/data (torchvision datasets)
    evaluators_dir()  user-trained evaluator networks (genlab evaluator train)
    reference_dir()   cached reference features of real data
    weights_dir()     pretrained extractor weights a user places by hand (Inception, DINOv2, CLIP)
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("GENLAB_CACHE") or Path.home() / ".cache" / "genlab")


def data_root(root: str = "") -> Path:
    return Path(root or os.environ.get("GENLAB_DATA") or "~/.cache/genlab/data").expanduser()


def evaluators_dir() -> Path:
    return cache_root() / "evaluators"


def reference_dir() -> Path:
    return cache_root() / "ref"


def weights_dir() -> Path:
    return cache_root() / "weights"
