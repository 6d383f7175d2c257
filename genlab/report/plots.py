"""Pictures of samples: image grids, and scatter plots for 2-D points."""
from __future__ import annotations

import math
from pathlib import Path


from torch import Tensor


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """(n, C, H, W) in [0, 1] -> a (3|1, H', W') grid tensor with a 2-pixel border."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    return make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)


def save_image_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow), str(path))
    return path


def scatter_figure(points: Tensor, modes: Tensor | None = None, mode_std: float = 0.0, title: str = ""):
    """Generated points over the mode centres, with each mode's 3-std circle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    p = points.detach().float().cpu()
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, color="tab:blue", label="generated")
    if modes is not None:
        m = modes.cpu()
        ax.scatter(m[:, 0], m[:, 1], s=25, marker="x", color="tab:red", label="mode centres")
        for cx, cy in m.tolist():
            ax.add_patch(plt.Circle((cx, cy), 3 * mode_std, fill=False, color="tab:red", lw=0.8))
        span = float(m.abs().max()) * 1.4 + 6 * mode_std
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def save_samples(samples: Tensor, info, path: str | Path, title: str = "") -> Path:
    """Write what a person should look at: an image grid, or a scatter for points."""
    path = Path(path)
    if info.kind == "image":
        return save_image_grid(samples, path)
    fig = scatter_figure(samples, getattr(info, "modes", None), getattr(info, "mode_std", 0.0), title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def samples_to_tensorboard(logger, samples: Tensor, info, step: int) -> None:
    if info.kind == "image":
        logger.image("samples", image_grid(samples), step)
    else:
        import matplotlib.pyplot as plt

        fig = scatter_figure(samples, getattr(info, "modes", None), getattr(info, "mode_std", 0.0))
        logger.figure("samples", fig, step)
        plt.close(fig)


