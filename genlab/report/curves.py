"""Training curves of several runs on shared axes: one panel per logged quantity, one colour per run.

Panels come from metrics.jsonl: periodic evaluation (`eval/*`, e.g. FID) and diagnostics
(`diagnose/*`, e.g. coverage) first, then the training losses (`train/*`). Throughput
(`images_per_sec`) is left out. Long noisy loss curves are drawn faint with a moving average on top.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

MAX_PANELS = 12
_SKIP = {"train/images_per_sec"}


def curve_keys(histories: Sequence[list[dict]]) -> list[str]:
    """The numeric series worth a panel, in display order (eval, diagnose, train)."""
    seen: dict[str, None] = {}
    for hist in histories:
        for rec in hist:
            for k, v in rec.items():
                if k != "step" and k not in _SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                    seen.setdefault(k, None)
    rank = {"eval": 0, "diagnose": 1, "train": 2}
    return sorted(seen, key=lambda k: (rank.get(k.split("/", 1)[0], 3), k))[:MAX_PANELS]


def series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in history:
        v, s = rec.get(key), rec.get("step")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(s, (int, float)) \
                and math.isfinite(v):
            xs.append(float(s))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _plain_label(text: str) -> str:
    return text.replace("$", r"\$")  # matplotlib would read $...$ in a run name as mathtext


def curves_figure(runs: Sequence[tuple[str, list[dict]]]):
    """[(run name, metrics.jsonl records)] -> a matplotlib Figure, or None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = curve_keys([h for _, h in runs])
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.0 * nrows + 0.6), dpi=90,
                             sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    styles = ["-", "--", "-.", ":"]  # runs with equal curves stay visible, and not by colour alone
    for ax, key in zip(axes.flat, keys):
        for r, (name, hist) in enumerate(runs):
            xs, ys = series(hist, key)
            if not xs:
                continue
            c, ls = colours(r % colours.N), styles[r % len(styles)]
            if len(xs) > 200:
                ax.plot(xs, ys, color=c, alpha=0.2, lw=0.7)
                ax.plot(xs, _smooth(ys, max(5, len(xs) // 50)), color=c, lw=1.4, ls=ls)
            else:
                ax.plot(xs, ys, color=c, lw=1.4, ls=ls, marker="o" if len(xs) <= 30 else None, ms=3)
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=9)
    handles = [plt.Line2D([], [], color=colours(r % colours.N), ls=styles[r % len(styles)], lw=2)
               for r in range(len(runs))]
    fig.legend(handles, [_plain_label(n) for n, _ in runs], loc="upper center", ncol=min(len(runs), 4),
               fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.0 * nrows + 0.6) * (1 + (len(runs) - 1) // 4)))
    return fig


def curves_png(runs: Sequence[tuple[str, list[dict]]], path: str | Path | None = None) -> bytes | None:
    """The curves as PNG bytes (also written to `path` when given); None when nothing was logged."""
    import matplotlib.pyplot as plt

    fig = curves_figure(runs)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def fid_inf_png(runs: Sequence[tuple[str, list, float, float]]) -> bytes | None:
    """[(run name, [[n, FID(n)], ...], FID_inf, slope)] -> PNG bytes of FID against 1/n with each run's fitted
    line down to 1/n = 0 (FID-infinity, Chong & Forsyth 2020); None without such runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r[1]]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=90)
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for r, (name, points, fid_inf, slope) in enumerate(runs):
        inv = [1 / n for n, _ in points]
        values = [v for _, v in points]
        c = colours(r % colours.N)
        ax.plot(inv, values, "o", color=c, ms=3, label=_plain_label(f"{name}: FID-inf {fid_inf:.4g}"))
        ax.plot([0, max(inv)], [fid_inf, fid_inf + slope * max(inv)], "-", color=c, lw=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("1 / n (generated samples)", fontsize=9)
    ax.set_ylabel("FID", fontsize=9)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
