"""Mode-collapse diagnostics of a run: choose what fits its data, sample, measure, write.

    record = diagnose(load_run("runs/x"), n=None, seed=0)   # -> dict; also RUN_DIR/diagnostics.json + PNGs

What runs depends on the data (`plan(info)`):
    2-D mixtures (ring8, grid25)   mixture: modes captured, high-quality rate, reverse KL   (n = 2,500)
    stacked-mnist                  stacked: modes hit of 1,000, KL to uniform               (n = 26,000)
    images with a genlab evaluator classes: class coverage from the evaluator's probabilities,
      of their own (mnist)         ndb + memorisation in the evaluator's feature space      (n = 10,000)
    other images                   ndb + memorisation in pixel space                        (n = 10,000)
The sample counts are the published protocols' (REFERENCE.md); `n` overrides them all.
Memorisation compares at most 5,000 generated and 5,000 test samples with the whole training split;
NDB fits K-means (K = 100) on a seeded subset of 10,000 training samples.

During training, `diagnose_hook(cfg)` runs the cheap part (mixture / classes / stacked, on
cfg.diagnose.n samples of fixed noise), keeps the best coverage seen, and prints a collapse warning
naming the step and the figure when coverage falls below 75% of its best. It draws noise from its own
generator, forks the global RNGs and restores module modes, so a resumed run stays exact.
"""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from .. import __version__
from ..errors import GenlabError
from . import modes as M
from .evaluate import json_default as _json_default

DEFAULT_N = {"mixture": 2500, "stacked": 26000, "image": 10000}
MEM_N = 5000  # generated / test samples compared with the training set for memorisation
NDB_REAL = 10000  # training samples K-means is fitted on (and whose bin proportions are tested)
NDB_K = 100
COLLAPSE_RATIO = 0.75  # warn when coverage < 75% of its best value
DIAG_SEED_OFFSET = 3_000_003  # hook noise, independent of training, grids and periodic eval
OUT_FILE = "diagnostics.json"


# ----------------------------------------------------------------------------- what fits the data
def classifier_for(info) -> str | None:
    """A genlab evaluator trained on this very dataset (genlab-mnist for mnist), if it exists."""
    from .evaluator import evaluator_name, find_weights

    if info.kind != "image" or tuple(info.shape) != (1, 28, 28):
        return None
    name = evaluator_name(info.name)
    return name if find_weights(name) is not None else None


def plan(info) -> list[str]:
    """The diagnostics that fit a run's data (see the module docstring)."""
    if info.kind == "points":
        if info.modes is None:
            raise GenlabError(f"{info.name}: 2-D data without known mode centres cannot be diagnosed")
        return ["mixture"]
    if info.name == "stacked-mnist":
        return ["stacked"]
    return (["classes"] if classifier_for(info) else []) + ["ndb", "memorisation"]


def _sample(sample, n: int, gen: torch.Generator, chunk: int = 2000) -> Tensor:
    x = torch.cat([sample(min(chunk, n - i), gen).cpu() for i in range(0, n, chunk)])
    if not torch.isfinite(x).all():
        raise GenlabError("generated samples contain NaN/Inf (did the model diverge?); nothing to diagnose")
    return x


def stacked_labels(sample, n: int, ext, gen: torch.Generator, chunk: int = 1000) -> tuple[Tensor, Tensor]:
    """Digit labels (n, C) of each channel of n generated stacked images, and their max probs."""
    labels, conf = [], []
    for i in range(0, n, chunk):
        x = sample(min(chunk, n - i), gen)
        k, c = x.shape[0], x.shape[1]
        p = ext.probs(x.reshape(k * c, 1, *x.shape[2:]))
        top, arg = p.max(1)
        labels.append(arg.reshape(k, c))
        conf.append(top.reshape(k, c))
    return torch.cat(labels), torch.cat(conf)


# ----------------------------------------------------------------------------- the full diagnosis
def diagnose(run, n: int | None = None, seed: int = 0, out_dir: str | Path | None = None,
             log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Run every diagnostic that fits `run` (a genlab.runs.LoadedRun); write diagnostics.json and
    the PNGs into `out_dir` (default: the run directory); return the record."""
    from .features import get_extractor

    info, t0 = run.info, time.perf_counter()
    names = plan(info)
    kind = "mixture" if info.kind == "points" else "stacked" if "stacked" in names else "image"
    n = n or DEFAULT_N[kind]
    if n < 2:
        raise GenlabError(f"--n must be at least 2, got {n}")
    out_dir = Path(out_dir or run.run_dir)
    device = getattr(run.family, "device", "cpu")
    gen = torch.Generator().manual_seed(seed)
    results, plots, ext = {}, [], None
    with run.sampling():
        if kind == "mixture":
            x = _sample(run.family.sample, n, gen)
            results["mixture"] = {**M.mixture_metrics(x, info.modes, info.mode_std), "n": n,
                                  "mode_std": info.mode_std, "hq_sigmas": 3.0,
                                  "hq_rate_perfect": M.chi2_2d_within(3.0)}
            plots.append(_save(_scatter(x, info, results["mixture"], run), out_dir, "mixture"))
        elif kind == "stacked":
            ext = get_extractor("genlab-mnist", device)
            labels, conf = stacked_labels(run.family.sample, n, ext, gen)
            results["stacked"] = {**M.stacked_modes(labels), "confident_rate": float((conf >= M.CONFIDENT).double().mean()),
                                  "confident_threshold": M.CONFIDENT}
            plots.append(_save(_stacked_figure(labels, run), out_dir, "stacked"))
        else:
            x = _sample(run.family.sample, n, gen)
            results.update(_image_diagnostics(run, x, names, seed, device, log, plots, out_dir))
            ext = results.pop("_extractor", None)
        if hasattr(run.family, "codebook_stats"):  # VQ-VAE: health of the codebook on test images
            results["codebook"] = _codebook(run, n)
    record = {"kind": "diagnostics", "model": run.cfg.model, "dataset": info.name, "checkpoint": run.checkpoint,
              "step": run.step, "n": n, "seed": seed, "diagnostics": results,
              "extractor": ext.name if ext is not None else None,
              "extractor_fingerprint": ext.fingerprint if ext is not None else None,
              "plots": [p.name for p in plots], "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "genlab_version": __version__, "seconds": round(time.perf_counter() - t0, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / OUT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(record), indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return record


def _codebook(run, n: int) -> dict:
    """family.codebook_stats(x) on n seeded test images (perplexity, codes used / dead, MSE)."""
    from .reference import data_config_for, load_real

    x, _ = load_real(data_config_for(run.cfg.data), "test", n)
    return {**run.family.codebook_stats(x), "split": "test"}


def _image_diagnostics(run, x: Tensor, names: list[str], seed: int, device, log, plots, out_dir) -> dict:
    from ..data import load_dataset
    from .features import get_extractor
    from .reference import data_config_for, get_reference

    data_cfg = data_config_for(run.cfg.data)
    out: dict = {}
    clf = classifier_for(run.info)
    if clf:  # classes, and NDB / memorisation in the evaluator's feature space
        ext = get_extractor(clf, device)
        out["_extractor"] = ext
        fake, probs = ext.features_and_probs(x)
        train = get_reference(data_cfg, "train", None, ext, log=log)
        test = get_reference(data_cfg, "test", MEM_N, ext, log=log)
        real_train, real_test, space, unit = train.features, test.features, f"{ext.name} features", 1.0
        train_labels = load_dataset(data_cfg, "train").y
        cc = M.class_coverage(probs, train_labels, covered_share=M.COVERED_SHARE)
        out["classes"] = {**cc, "covered_share": M.COVERED_SHARE}
        plots.append(_save(_class_figure(cc, train_labels, run), out_dir, "classes"))
    else:  # pixel space
        from .reference import load_real

        # Compared in the 0..255 scale so the real images stay uint8 (a 50k x 3072 float copy is 600 MB);
        # distances are reported in [0, 1] pixel units.
        fake = (x.reshape(len(x), -1).float() * 255).round()
        real_train = load_real(data_cfg, "train", None)[0].reshape(-1, fake.shape[1])
        real_test = load_real(data_cfg, "test", MEM_N)[0].reshape(-1, fake.shape[1])
        space, unit = "pixels in [0, 1]", 1 / 255
    if "ndb" in names:
        idx = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(seed))[:NDB_REAL]
        nd = M.ndb_jsd(real_train[idx], fake, k=min(NDB_K, len(idx)), seed=seed)
        out["ndb"] = {**nd, "space": space}
        plots.append(_save(_ndb_figure(nd, run), out_dir, "ndb"))
    if "memorisation" in names:
        g = M.nn_distances(fake[:MEM_N], real_train) * unit
        t = M.nn_distances(real_test, real_train) * unit
        mem = {**M.memorisation(g, t), "space": space, "n_train": len(real_train)}
        out["memorisation"] = mem
        plots.append(_save(_memorisation_figure(g, t, mem, run), out_dir, "memorisation"))
    return out


# ----------------------------------------------------------------------------- table
def format_table(record: dict) -> str:
    """The headline figures of a diagnostics record as an aligned two-column table."""
    rows = []
    d = record["diagnostics"]
    if "mixture" in d:
        m = d["mixture"]
        rows += [("modes captured", f"{m['modes']} / {m['num_modes']}"),
                 ("high-quality (<= 3 std)", f"{100 * m['hq_rate']:.1f}%  (perfect sampler: {100 * m['hq_rate_perfect']:.1f}%)"),
                 ("reverse KL to uniform", f"{m['reverse_kl']:.4f} nats")]
    if "stacked" in d:
        s = d["stacked"]
        rows += [("modes hit", f"{s['modes']} / {s['num_modes']}"), ("KL to uniform", f"{s['kl_uniform']:.4f} nats"),
                 (f"confident digits (p >= {s['confident_threshold']})", f"{100 * s['confident_rate']:.1f}%")]
    if "classes" in d:
        c = d["classes"]
        rows += [("classes covered", f"{c['classes_covered']} / {c['num_classes']}  (>= {c['covered_share']:.0%} of uniform share)"),
                 ("KL(gen || uniform)", f"{c['kl_uniform']:.4f} nats"), ("KL(gen || train labels)", f"{c['kl_train']:.4f} nats"),
                 (f"confident (max p >= {c['confident_threshold']})", f"{100 * c['confident_rate']:.1f}%")]
    if "ndb" in d:
        b = d["ndb"]
        rows += [("NDB (different bins)", f"{b['ndb']} / {b['k']}  (alpha {b['alpha']}; ~{b['alpha'] * b['k']:.0f} expected by chance)"),
                 ("JSD of bin histograms", f"{b['jsd']:.5f} nats")]
    if "memorisation" in d:
        m = d["memorisation"]
        rows += [("near-copies", f"{100 * m['near_copy_rate']:.2f}%  (NN dist <= {m['threshold']:.4g}, the "
                                 f"{m['quantile']:g} quantile of test->train; test data scores ~{m['quantile']:.0%})"),
                 ("exact copies", f"{100 * m['exact_copy_rate']:.2f}%"),
                 ("median NN dist gen / test", f"{m['median_ratio']:.3f}")]
    if "codebook" in d:
        c = d["codebook"]
        rows += [("codebook perplexity", f"{c['perplexity']:.1f}  (of {c['n_codes']} codes)"),
                 ("codes used / dead", f"{c['codes_used']} / {c['dead_codes']}  ({100 * c['usage']:.1f}% used on "
                                       f"{c['n_images']} {c['split']} images)"),
                 ("reconstruction MSE", f"{c['recon_mse']:.5f}  (pixels in [0, 1])")]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


# ----------------------------------------------------------------------------- during training
def _coverage_key(kind: str) -> str:
    return {"mixture": "modes", "classes": "classes_covered", "stacked": "stacked_modes"}[kind]


def diagnose_hook(cfg):
    """fn(trainer, step) -> flat dict of floats (logged under diagnose/); see the module docstring."""
    state: dict = {"best": None, "best_step": None, "warned_at": None}

    def fn(trainer, step: int) -> dict:
        from .periodic import preserved_modes

        info = trainer.info
        kind = "mixture" if info.kind == "points" else "stacked" if info.name == "stacked-mnist" else \
            "classes" if classifier_for(info) else None
        if kind is None:
            return {}
        devices = [trainer.device] if torch.device(trainer.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices), preserved_modes(trainer.family):
            out = _cheap(trainer, kind, cfg, state)
        key = _coverage_key(kind)
        if state["best"] is None:
            state["best"], state["best_step"] = _best_from_log(trainer, key, step)
        out.update(collapse_check(state, out[key], step, key))
        return out

    return fn


def _cheap(trainer, kind: str, cfg, state: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg.seed + DIAG_SEED_OFFSET)
    n = cfg.diagnose.n
    with trainer.sampling_context():
        if kind == "mixture":
            m = M.mixture_metrics(_sample(trainer.family.sample, n, gen), trainer.info.modes, trainer.info.mode_std)
            return {"modes": float(m["modes"]), "hq_rate": m["hq_rate"], "reverse_kl": m["reverse_kl"]}
        if "ext" not in state:
            from .features import get_extractor

            state["ext"] = get_extractor("genlab-mnist" if kind == "stacked" else classifier_for(trainer.info),
                                         trainer.device)
            if kind == "classes":
                state["train_hist"] = M.histogram(trainer.data.y, trainer.info.num_classes).double() \
                    if trainer.data is not None else None
        if kind == "stacked":
            labels, _ = stacked_labels(trainer.family.sample, n, state["ext"], gen)
            s = M.stacked_modes(labels)
            return {"stacked_modes": float(s["modes"]), "kl_uniform": s["kl_uniform"]}
        c = M.class_coverage(state["ext"].probs(_sample(trainer.family.sample, n, gen)), state.get("train_hist"))
        out = {"classes_covered": float(c["classes_covered"]), "kl_uniform": c["kl_uniform"],
               "confident_rate": c["confident_rate"]}
        if "kl_train" in c:
            out["kl_train"] = c["kl_train"]
        return out


def collapse_check(state: dict, value: float, step: int, figure: str, ratio: float = COLLAPSE_RATIO) -> dict:
    """Track the best coverage; warn (once per new low) when `value` < ratio * best. -> {"collapse": 0|1}."""
    best = state.get("best")
    if best is None or value > best:
        state["best"], state["best_step"] = value, step
        best = value
    collapsed = best > 0 and value < ratio * best
    if not collapsed:
        state["warned_at"] = None
    elif state.get("warned_at") is None or value < state["warned_at"]:
        state["warned_at"] = value
        _warn(f"collapse warning: step {step}: {figure} fell to {value:g} (best {best:g} at step "
              f"{state['best_step']}; below {ratio:.0%} of best)")
    return {"collapse": float(collapsed), f"best_{figure}": float(best)}


def _warn(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def _best_from_log(trainer, key: str, step: int) -> tuple[float | None, int | None]:
    """On resume, recover the best coverage logged before `step` (the hook state is not checkpointed)."""
    from ..logger import read_metrics

    best, best_step = None, None
    for rec in read_metrics(trainer.run_dir):
        v = rec.get(f"diagnose/{key}")
        if isinstance(v, (int, float)) and rec.get("step", math.inf) < step and (best is None or v > best):
            best, best_step = float(v), rec["step"]
    return best, best_step


# ----------------------------------------------------------------------------- plots
def _title(run, what: str) -> str:
    return f"{run.cfg.model or run.cfg.family} on {run.info.name}, {run.checkpoint} (step {run.step}): {what}"


def _scatter(x: Tensor, info, m: dict, run):
    from ..report.plots import scatter_figure

    return scatter_figure(x, info.modes, info.mode_std, f"{run.cfg.model or run.cfg.family} step {run.step}: "
                          f"{m['modes']}/{m['num_modes']} modes, HQ {100 * m['hq_rate']:.1f}%")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _class_figure(cc: dict, train_labels: Tensor, run):
    plt = _plt()
    c = cc["num_classes"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    share = torch.tensor(cc["counts"], dtype=torch.float64) / cc["n"]
    train = M.histogram(train_labels, c).double()
    ax.bar(range(c), share.tolist(), color="tab:blue", label="generated")
    ax.plot(range(c), (train / train.sum()).tolist(), "o", color="tab:red", label="training labels")
    ax.axhline(1 / c, color="grey", ls="--", lw=0.8, label="uniform")
    ax.set_xticks(range(c))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("share of samples")
    ax.set_title(_title(run, f"{cc['classes_covered']}/{c} classes"), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _stacked_figure(labels: Tensor, run):
    plt = _plt()
    counts = M.histogram(M.stacked_mode_ids(labels), 1000).double()
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.bar(range(1000), counts.tolist(), width=1.0, color="tab:blue")
    ax.axhline(counts.sum().item() / 1000, color="tab:red", lw=0.8, label="uniform")
    ax.set_xlabel("mode 100 d_R + 10 d_G + d_B")
    ax.set_ylabel("samples")
    ax.set_title(_title(run, f"{int((counts > 0).sum())}/1000 modes"), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _ndb_figure(nd: dict, run):
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
    ax.set_title(_title(run, f"NDB {nd['ndb']}/{nd['k']}, JSD {nd['jsd']:.4f}"), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _memorisation_figure(g: Tensor, t: Tensor, mem: dict, run):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    hi = float(torch.quantile(torch.cat([g, t]), 0.995))
    bins = torch.linspace(0, hi, 60).tolist()
    ax.hist(t.tolist(), bins=bins, alpha=0.5, density=True, color="tab:grey", label="test -> train")
    ax.hist(g.tolist(), bins=bins, alpha=0.5, density=True, color="tab:blue", label="generated -> train")
    ax.axvline(mem["threshold"], color="tab:red", lw=0.8, label=f"near-copy threshold ({mem['quantile']:g} quantile of test)")
    ax.set_xlabel(f"nearest-neighbour distance to the training set ({mem['space']})")
    ax.set_ylabel("density")
    ax.set_title(_title(run, f"near-copies {100 * mem['near_copy_rate']:.2f}%"), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _save(fig, out_dir: Path, name: str) -> Path:
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"diagnostics-{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _finite(o):
    """Non-finite floats -> "inf" / "nan" strings (as metrics.jsonl does), so the file is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o
