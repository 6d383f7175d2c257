"""CLI commands of the evaluation subsystem (eval, ref, evaluator train); `register(app)` adds them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .cli_common import precision_option, single_process, user_errors, with_sample_options
from .errors import GenlabError


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _features_line(record: dict, requested: str) -> str:
    how = f"auto -> {record['extractor']}" if record.get("extractor_auto") else record["extractor"]
    return f"features: {how} (fingerprint {record['extractor_fingerprint']})" + (
        "" if requested in ("auto", record["extractor"]) else f" [asked: {requested}]")


def eval_(
    run_dir: Optional[Path] = typer.Argument(None, help="A run directory written by `genlab train` (omit with --fake or --real-vs-real)."),
    n: Optional[int] = typer.Option(None, "-n", "--n", min=2, help="Generated samples (default 10000; with --fake: every image in the file); the reference uses as many real images (at most the split size). Compare FID only at equal n."),
    metrics: str = typer.Option("auto", help="Sample metrics: auto (every one that applies), a comma-separated list (`genlab list measures`), or none (NLL / reconstruction only)."),
    n_test: Optional[int] = typer.Option(None, "--n-test", min=1, help="Real test images for NLL / bits/dim / reconstruction (default: --n, or the family's own default where its likelihood is expensive: vae 500)."),
    features: str = typer.Option("auto", help="Feature extractor: auto (genlab-mnist for 1x28x28, else inception), genlab-mnist, inception, dinov2-vit-b-14, dinov2-vit-l-14, clip-vit-l-14, genlab-DATASET (`genlab list features`)."),
    ref: str = typer.Option("test", help="Reference split of the run's dataset: train | test. With --fake: DATASET, DATASET:SPLIT or a split (default: the dataset a genlab export names, else mnist for 1x28x28)."),
    fake: Optional[Path] = typer.Option(None, "--fake", help="Score samples from a file instead of a run: .npz (arr_0), .npy, .pt or a folder of images."),
    save_run: Optional[Path] = typer.Option(None, "--run-dir", help="With --fake: also keep the record in this eval-only run directory, which `genlab compare` shows beside trained runs."),
    checkpoint: str = typer.Option("last", help="last | best | step-N."),
    batch_size: int = typer.Option(500, min=1, help="Images per sampling / feature batch."),
    seed: int = typer.Option(0, min=0, help="Sampling seed (also seeds KID subsets and the bootstrap)."),
    bootstrap: int = typer.Option(0, min=0, help="B > 0 adds a 95% bootstrap interval for FID from B resamples."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    precision: str = precision_option(),
    real_vs_real: Optional[str] = typer.Option(None, "--real-vs-real", help="DATASET: report the floor instead (a train subset vs the test split at equal n)."),
    data_root: Optional[Path] = typer.Option(None, help="With --real-vs-real / --fake: where torchvision datasets live."),
    save: bool = typer.Option(True, help="Append the record to RUN_DIR/eval.json and log it to RUN_DIR/tb."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON instead of a table."),
    sample_options: Optional[dict] = None,
):
    """Measure a run with every evaluation measure that applies: FID, KID, IS, precision/recall,
    density/coverage from one feature pass; NLL / bits/dim; reconstruction; translation figures."""
    from . import parallel
    from .eval.evaluate import append_record, evaluate, format_table, log_tensorboard
    from .eval.evaluate import real_vs_real as floor
    from .parallel import device_for

    if sum(x is not None for x in (run_dir, real_vs_real, fake)) != 1:
        raise GenlabError("give one of RUN_DIR, --fake PATH or --real-vs-real DATASET")
    if save_run is not None and fake is None:
        raise GenlabError("--run-dir keeps the record of --fake samples; a run's records go to RUN_DIR/eval.json")
    if precision != "auto" and run_dir is None:
        raise GenlabError("--precision is what sampling a run computes in; --fake and --real-vs-real sample nothing")
    if fake is not None:
        if sample_options:
            raise GenlabError(f"sampling options ({', '.join(sample_options)}) do not apply to --fake samples")
        return _eval_file(fake, n, metrics, features, ref, batch_size, seed, bootstrap, device, data_root,
                          save_run, as_json)
    n = 10000 if n is None else n
    if real_vs_real is not None:
        record = floor(real_vs_real, n, metrics, features, batch_size, seed, bootstrap,
                       str(data_root) if data_root else "", str(device_for(device)), log=_err)
        head = (f"real vs real: {real_vs_real} train subset vs test split, n = {record['n_fake']} / {record['n_real']} "
                f"(reference: {record['reference_cache']})")
    else:
        from .runs import load_run
        from .sampling import check_options

        run = load_run(run_dir, checkpoint, device, precision)
        options = check_options(run, sample_options or {})
        record = evaluate(run, n, metrics, features, ref, batch_size, seed, bootstrap, log=_err, n_test=n_test,
                          sample_options=options)
        head = _head(record, checkpoint, ref)
    if not parallel.is_main():  # under torchrun every rank holds the record; rank 0 reports it
        return
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        if "extractor" in record:
            typer.echo(_features_line(record, features))
        typer.echo(head + (f"\n{record['note']}" if "note" in record else ""))
        typer.echo(format_table(record))
    if run_dir is not None and save:
        from .rundir import fs_message

        try:
            path = append_record(run_dir, record)
            log_tensorboard(run_dir, record)
        except OSError as e:
            raise GenlabError(f"{fs_message(e)}; the figures above were measured but the record was not saved") from None
        if not as_json:
            typer.echo(f"wrote {path}")


def _eval_file(path, n, metrics, features, ref, batch_size, seed, bootstrap, device, data_root, save_run,
               as_json) -> None:
    from . import parallel
    from .eval.evaluate import format_table
    from .eval.imported import check_run_dir, evaluate_file, save_imported
    from .parallel import device_for

    if save_run is not None:
        check_run_dir(save_run)
    record, source = evaluate_file(path, n, metrics, features, ref, batch_size, seed, bootstrap,
                                   str(device_for(device)), str(data_root) if data_root else "", log=_err)
    if not parallel.is_main():
        return
    fake = record["fake"]
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo(_features_line(record, features))
        typer.echo(f"{fake['name']} ({fake['format']}, sha256 {fake['sha256'][:16]}): n_fake = {record['n_fake']} "
                   f"of {fake['n_in_file']} vs {record['ref_dataset']} {record['ref_split']}: n_real = "
                   f"{record['n_real']} (reference: {record['reference_cache']})")
        typer.echo(format_table(record))
    if save_run is not None:
        from .rundir import fs_message

        try:
            written = save_imported(save_run, record, source)
        except OSError as e:
            raise GenlabError(f"{fs_message(e)}; the figures above were measured but the record was not saved") from None
        if not as_json:
            typer.echo(f"wrote {written}")


def _head(record: dict, checkpoint: str, ref: str) -> str:
    """One line: what was measured on what (sample counts, held-out images)."""
    head = f"{record['model']} {checkpoint} (step {record['step']})"
    if "n_A" in record:
        return f"{head} on {record['dataset']} test: n = {record['n_A']} A + {record['n_B']} B held-out images"
    if "n_real" in record:
        head += (f" vs {record['ref_dataset']} {ref}: n_fake = {record['n_fake']}, n_real = "
                 f"{record['n_real']} (reference: {record['reference_cache']})")
    for key in ("n_nll", "n_recon"):
        if key in record["metrics"]:
            return head + f"; {record['metrics'][key]} {ref} images for NLL / reconstruction"
    return head


def ref(
    dataset: str = typer.Argument(..., help="Dataset name (see `genlab list datasets`), or folder:PATH."),
    split: str = typer.Option("test", help="train | test."),
    features: str = typer.Option("auto", help="Feature extractor (auto, genlab-mnist, inception, dinov2-vit-b-14, dinov2-vit-l-14, clip-vit-l-14, genlab-DATASET)."),
    n: Optional[int] = typer.Option(None, "-n", "--n", min=2, help="Real images (a seeded subset); default: the whole split."),
    seed: int = typer.Option(0, min=0, help="Seed of the subset when n is smaller than the split."),
    resolution: int = typer.Option(0, min=0, help="Resize images to this size first (0 keeps the native size), as data.resolution."),
    channels: int = typer.Option(0, help="Convert to 1 or 3 channels first (0 keeps them), as data.channels."),
    batch_size: int = typer.Option(500, min=1, help="Images per feature batch."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    data_root: Optional[Path] = typer.Option(None, help="Where torchvision datasets live."),
):
    """Compute (or validate) the cached reference features of real data for later evaluations."""
    from .config import DataConfig
    from .eval.features import get_extractor, resolve_extractor
    from .eval.reference import get_reference, load_real
    from .parallel import device_for as select_device

    from .fields import validate

    data_cfg = validate(DataConfig(name=dataset, root=str(data_root) if data_root else "", resolution=resolution,
                                   channels=channels), "data")
    _, info = load_real(data_cfg, split, 2)
    name, picked = resolve_extractor(features, info)
    ext = get_extractor(name, select_device(device))
    typer.echo(f"features: {'auto -> ' if picked else ''}{ext.name} (fingerprint {ext.fingerprint}, dim {ext.dim})")
    r = get_reference(data_cfg, split, n, ext, seed=seed, batch_size=batch_size, log=_err)
    typer.echo(f"{dataset} {split}: n = {r.n}, {r.status} -> {r.path}")


def evaluator_train(
    dataset: str = typer.Argument(..., help="A labelled image dataset, e.g. mnist, fashion-mnist, cifar10."),
    epochs: int = typer.Option(5, min=1, help="Passes over the training split."),
    seed: int = typer.Option(0, min=0, help="Seeds the weights, the data order and the augmentation."),
    out: Optional[Path] = typer.Option(None, help="Weights file (.pt; a .json is written beside it); "
                                                  "default: $GENLAB_CACHE/evaluators/genlab-DATASET.pt."),
    batch_size: int = typer.Option(128, min=1, help="Images per update."),
    lr: float = typer.Option(3e-3, min=1e-12, help="Peak learning rate of the one-cycle schedule (AdamW)."),
    width: int = typer.Option(24, min=1, help="Channels of the first conv block (then 2x and 4x)."),
    shift: int = typer.Option(2, min=0, help="Augmentation: random translations of up to this many pixels."),
    threads: int = typer.Option(1, min=0, help="CPU threads (results are bit-reproducible for a fixed count)."),
    data_root: Optional[Path] = typer.Option(None, help="Where torchvision datasets live."),
):
    """Train genlab's evaluator CNN on DATASET; it becomes feature extractor genlab-DATASET."""
    import torch

    from .eval.evaluator import EvaluatorTrainConfig, evaluator_name, train_evaluator, user_evaluator_dir

    if threads > 0:
        torch.set_num_threads(threads)
    out = out or user_evaluator_dir() / f"{evaluator_name(dataset)}.pt"
    if out.suffix != ".pt":
        raise GenlabError(f"--out must end in .pt, got {out}")
    cfg = EvaluatorTrainConfig(dataset=dataset, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                               width=width, shift=shift, data_root=str(data_root) if data_root else "")
    meta = train_evaluator(cfg, out, log=typer.echo)
    typer.echo(f"wrote {out} (sha256 {meta['sha256'][:16]}, test accuracy {meta['test_accuracy']:.4f}) "
               f"and {out.with_suffix('.json').name}")
    if out.resolve().parent == user_evaluator_dir().resolve():
        typer.echo(f"use it with --features {out.stem}")
    else:
        typer.echo(f"to use it as --features {out.stem}, copy both files to {user_evaluator_dir()}/")


def register(app: typer.Typer) -> None:
    app.command("eval")(user_errors(with_sample_options(eval_)))
    app.command("ref")(user_errors(single_process(ref)))
    evaluator_app = typer.Typer(no_args_is_help=True, help="genlab's own evaluator networks (feature extractors).")
    evaluator_app.command("train")(user_errors(single_process(evaluator_train)))
    app.add_typer(evaluator_app, name="evaluator")
