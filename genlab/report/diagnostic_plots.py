"""Figures of the mode-collapse diagnostics: one plot per diagnostic measure, registered by its name
(kind "diagnostic-plot"), drawn from the measure's record section and the artifacts it left.

    draw("mixture", section, artifacts, info, title) -> matplotlib Figure | None
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import registry
from ..eval import modes as M


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(name: str, section: dict, artifacts: dict, info, title: str):
    """The plot of diagnostic `name`, or None when it has none."""
    if name not in registry.available("diagnostic-plot"):
        return None
    return registry.get("diagnostic-plot", name)(section, artifacts, info, title)


def save(fig, out_dir: Path, name: str) -> Path:
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"diagnostics-{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


@registry.register("diagnostic-plot", "mixture")
def mixture(m: dict, artifacts: dict, info, title: str):
    from .plots import scatter_figure

    return scatter_figure(artifacts["points"], info.modes, info.mode_std,
                          f"{title}: {m['modes']}/{m['num_modes']} modes, HQ {100 * m['hq_rate']:.1f}%")


@registry.register("diagnostic-plot", "classes")
def classes(cc: dict, artifacts: dict, info, title: str):
    plt = _plt()
    c = cc["num_classes"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    share = torch.tensor(cc["counts"], dtype=torch.float64) / cc["n"]
    train = M.histogram(artifacts["train_labels"], c).double()
    ax.bar(range(c), share.tolist(), color="tab:blue", label="generated")
    ax.plot(range(c), (train / train.sum()).tolist(), "o", color="tab:red", label="training labels")
    ax.axhline(1 / c, color="grey", ls="--", lw=0.8, label="uniform")
    ax.set_xticks(range(c))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("share of samples")
    ax.set_title(f"{title}: {cc['classes_covered']}/{c} classes", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@registry.register("diagnostic-plot", "stacked")
def stacked(s: dict, artifacts: dict, info, title: str):
    plt = _plt()
    counts = M.histogram(M.stacked_mode_ids(artifacts["labels"]), 1000).double()
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.bar(range(1000), counts.tolist(), width=1.0, color="tab:blue")
    ax.axhline(counts.sum().item() / 1000, color="tab:red", lw=0.8, label="uniform")
    ax.set_xlabel("mode 100 d_R + 10 d_G + d_B")
    ax.set_ylabel("samples")
    ax.set_title(f"{title}: {int((counts > 0).sum())}/1000 modes", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@registry.register("diagnostic-plot", "ndb")
def ndb(nd: dict, artifacts: dict, info, title: str):
    plt = _plt()
    real, fake = torch.tensor(nd["real_props"]), torch.tensor(nd["fake_props"])
    order = real.argsort(descending=True)
    diff = torch.zeros(nd["k"], dtype=torch.bool)
    diff[nd["different_bins"]] = True
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    pos = torch.arange(nd["k"]).float()
    ax.bar((pos - 0.2).tolist(), real[order].tolist(), width=0.4, color="tab:grey", label="real")
    colors = ["tab:red" if d else "tab:blue" for d in diff[order].tolist()]
    ax.bar((pos + 0.2).tolist(), fake[order].tolist(), width=0.4, color=colors, label="generated (red: different)")
    ax.set_xlabel("K-means bin (sorted by real proportion)")
    ax.set_ylabel("proportion")
    ax.set_title(f"{title}: NDB {nd['ndb']}/{nd['k']}, JSD {nd['jsd']:.4f}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@registry.register("diagnostic-plot", "memorisation")
def memorisation(mem: dict, artifacts: dict, info, title: str):
    plt = _plt()
    g, t = artifacts["gen_to_train"], artifacts["test_to_train"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    hi = float(torch.quantile(torch.cat([g, t]), 0.995))
    bins = torch.linspace(0, hi, 60).tolist()
    ax.hist(t.tolist(), bins=bins, alpha=0.5, density=True, color="tab:grey", label="test -> train")
    ax.hist(g.tolist(), bins=bins, alpha=0.5, density=True, color="tab:blue", label="generated -> train")
    ax.axvline(mem["threshold"], color="tab:red", lw=0.8, label=f"near-copy threshold ({mem['quantile']:g} quantile of test)")
    ax.set_xlabel(f"nearest-neighbour distance to the training set ({mem['space']})")
    ax.set_ylabel("density")
    ax.set_title(f"{title}: near-copies {100 * mem['near_copy_rate']:.2f}%", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
