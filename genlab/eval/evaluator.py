"""genlab's own evaluator networks: train a small classifier reproducibly, save and load its weights.

`genlab evaluator train DATASET` calls `train_evaluator`, which writes two files:
    <name>.pt    {"format": "genlab-evaluator", "net", "kwargs", "state_dict", "dataset", ...}
                 (tensors and primitives only: loads with torch.load(weights_only=True))
    <name>.json  dataset, epochs, seed, hyper-parameters, test accuracy, sha256 of the .pt
The shipped MNIST evaluator lives in genlab/eval/weights/genlab-mnist.{pt,json}; evaluators trained
by users go to $GENLAB_CACHE/evaluators/ (default ~/.cache/genlab/evaluators/) and are found there by
name (`--features genlab-DATASET`).

Reproducibility: the data order, the augmentation shifts and the initial weights all come from
`seed` (the caller's global RNG is forked, not consumed); on CPU with a fixed thread count the
same command gives bit-identical weights. The test split is only used once, after the last epoch,
to report accuracy (no early stopping on it).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..checkpoint import save_atomic
from ..errors import GenlabError
from ..paths import evaluators_dir

FORMAT = "genlab-evaluator"
VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass
class EvaluatorTrainConfig:
    dataset: str = "mnist"
    epochs: int = 5
    seed: int = 0
    batch_size: int = 128
    lr: float = 3e-3  # peak of a one-cycle schedule (AdamW)
    weight_decay: float = 5e-4
    width: int = 24
    feature_dim: int = 128
    shift: int = 2  # augmentation: random translation by up to this many pixels
    n_train: int = 0  # 0 = the whole train split; N = its first N images (quick checks)
    data_root: str = ""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluator_name(dataset: str) -> str:
    """'mnist' -> 'genlab-mnist' (the feature-extractor name of an evaluator trained on it)."""
    return "genlab-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)


def user_evaluator_dir() -> Path:
    return evaluators_dir()


def find_weights(name: str) -> Path | None:
    """The weights of evaluator `name`: shipped in the package first, then the user's cache."""
    for folder in (WEIGHTS_DIR, user_evaluator_dir()):
        path = folder / f"{name}.pt"
        if path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------- training
def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = (off[0][:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (off[1][:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    out = xp[torch.arange(n)[:, None, None], :, rows, cols]  # advanced dims first: (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.inference_mode()
def accuracy(net: torch.nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    was = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x_uint8), batch_size):
        logits = net(x_uint8[i:i + batch_size].float() / 255)
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    net.train(was)
    return correct / len(x_uint8)


def train_evaluator(cfg: EvaluatorTrainConfig, out: str | Path,
                    log: Callable[[str], None] = print) -> dict:
    """Train the evaluator CNN on cfg.dataset; write OUT (.pt) and OUT with .json; return the json dict."""
    from ..config import DataConfig
    from ..data import load_dataset
    from ..nets.classifier import EvaluatorCNN

    if cfg.epochs < 1:
        raise GenlabError(f"--epochs must be >= 1, got {cfg.epochs}")
    data_cfg = DataConfig(name=cfg.dataset, root=cfg.data_root)
    train, test = load_dataset(data_cfg, "train"), load_dataset(data_cfg, "test")
    info = train.info
    if cfg.n_train:
        train = train.subset(slice(0, cfg.n_train))
    if info.kind != "image" or info.num_classes < 2:
        raise GenlabError(f"an evaluator is a classifier: {cfg.dataset!r} must be a labelled image dataset "
                          f"(it is {info.kind} data with {info.num_classes} classes)")
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):  # weight init from the seed, caller's RNG untouched
        torch.manual_seed(cfg.seed)
        net = EvaluatorCNN(tuple(info.shape), info.num_classes, cfg.width, cfg.feature_dim)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise GenlabError(f"batch size {cfg.batch_size} is larger than the training set ({len(train)} images)")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    t0 = time.perf_counter()
    net.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(train), generator=gen)
        total, correct = 0.0, 0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = random_shift(train.x[idx].float() / 255, cfg.shift, gen)
            y = train.y[idx]
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / steps_per_epoch:.4f}, "
            f"train acc {correct / (steps_per_epoch * cfg.batch_size):.4f}, {time.perf_counter() - t0:.0f}s")
    test_acc = accuracy(net, test.x, test.y)
    log(f"test accuracy {test_acc:.4f}")
    out = Path(out)
    state = {"format": FORMAT, "version": VERSION, "net": "mnist-classifier",
             "kwargs": {"shape": list(info.shape), "num_classes": info.num_classes, "width": cfg.width,
                        "feature_dim": cfg.feature_dim},
             "dataset": cfg.dataset, "state_dict": net.state_dict()}
    save_atomic(state, out)
    digest = sha256_file(out)
    meta = {"name": out.stem, "dataset": cfg.dataset, "shape": list(info.shape), "num_classes": info.num_classes,
            "test_accuracy": test_acc, "n_test": len(test), "sha256": digest,
            "n_params": sum(p.numel() for p in net.parameters()), "train_seconds": round(time.perf_counter() - t0, 1),
            "torch": torch.__version__, "threads": torch.get_num_threads(), **asdict(cfg)}
    meta.pop("data_root")
    json_path = out.with_suffix(".json")
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(json_path)
    return meta


# ----------------------------------------------------------------------------- loading
def load_evaluator(path: str | Path, device: str | torch.device = "cpu"):
    """Load a saved evaluator -> (net in eval mode, sha256 of the file, metadata dict or {})."""
    from ..nets.classifier import EvaluatorCNN

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GenlabError(f"{path}: cannot load evaluator weights ({str(e).strip().splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GenlabError(f"{path} is not a genlab evaluator file (no '{FORMAT}' header)")
    kwargs = dict(state["kwargs"])
    kwargs["shape"] = tuple(kwargs["shape"])
    net = EvaluatorCNN(**kwargs)
    net.load_state_dict(state["state_dict"])
    net.requires_grad_(False).eval().to(device)
    json_path = path.with_suffix(".json")
    meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
    return net, sha256_file(path), meta

